"""Temperature scaling on top of each training loss, and a curve over training length (CPU).

Two questions about the `tiny` U-Net on the bundled data, at the knobs section 1 of
`docs/results.md` chose on validation over seeds 1-3 (`docs/evidence/chosen.json`):

1. **Does a training loss add anything after temperature scaling?** CE, LS, ECP, MbLS and CALS
   at 1000 iterations on seeds 1-5 (the five-seed evidence), each with and without a
   temperature fitted on the validation volumes (``temperature_scaling=True`` on the loss's
   own config: ``load_or_train`` fits T on that loss's weights), paired per seed with CE + TS.
2. **How does it change with training length?** CE, LS, ECP and MbLS on the report seeds 4-6
   (not used to choose the knobs) as resumed ladders of 200, 500, 1000, 2000 and 4000
   iterations (``sweep.train_ladder``: each rung continues the previous one's checkpoint), each
   rung also with TS, and CE that keeps its best-validation-Dice weights
   (``select_metric="val_fg_dice"``) as the early-stopping baseline. The rungs are multiples
   of ``val_every`` = 100 (250 is not: a ladder rung must end on a validation pass), and the
   1000-iteration rung is the very run of question 1 (same config, same folder).

Work is queued by priority (``tasks``: question 1, the ladders to 1000, then 2000, 4000) on a pool of
``--workers`` processes; with ``--deadline HH:MM`` a rung that would not finish in time is not
started (what is missing is then listed by the report, never filled in). Every run lands in
``--root`` (default ``runs/length``); ``--report-only`` writes ``docs/evidence/length.{md,json,
csv}`` and the figures from the run folders.

    nice -n 10 python docs/length_study.py --workers 2 --deadline 09:30 > length.log 2>&1
    python docs/length_study.py --report-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence"
#: the losses of each question (families of docs/evidence/chosen.json)
TS_FAMILIES = ("ce", "ls", "ecp", "mbls", "cals")
LADDER_FAMILIES = ("ce", "ls", "ecp", "mbls")
TS_SEEDS = (1, 2, 3, 4, 5)
LADDER_SEEDS = (4, 5, 6)
LENGTHS = (200, 500, 1000, 2000, 4000)
#: the early-stopping baseline: CE keeping its best validation-Dice weights
BEST_VAL = {"select_metric": "val_fg_dice"}


def chosen_configs(path: Path = EVIDENCE / "chosen.json") -> dict[str, dict[str, Any]]:
    """Each family's chosen config (loss, loss_kwargs; no TS) from section 1's choice."""
    fams = json.loads(path.read_text())["families"]
    return {
        f["family"]: {k: f["config"][k] for k in ("loss", "loss_kwargs")}
        for f in fams
        if f["family"] in set(TS_FAMILIES) | set(LADDER_FAMILIES)
    }


def tasks(chosen: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The queue, highest priority first: (config, lengths) pairs; lengths None = one run.

    Question 1 for the ladder families first (seeds 4-5 as ladders to 1000: their 200 and
    500 rungs come free), then seed 6 to 1000, CE keeping its best-validation weights, CALS
    (question 1), and only then the longer rungs."""
    ladder = [f for f in TS_FAMILIES if f in LADDER_FAMILIES]
    out = []
    for seed in TS_SEEDS:
        for fam in ladder:
            lengths = LENGTHS[:3] if seed in LADDER_SEEDS else None
            out.append({"config": {**chosen[fam], "seed": seed}, "lengths": lengths})
    for seed in LADDER_SEEDS:
        if seed not in TS_SEEDS:
            out += [
                {"config": {**chosen[f], "seed": seed}, "lengths": LENGTHS[:3]}
                for f in LADDER_FAMILIES
            ]
    best = {**chosen["ce"], **BEST_VAL}
    out += [{"config": {**best, "seed": s}, "lengths": LENGTHS[:3]} for s in LADDER_SEEDS]
    for seed in TS_SEEDS:
        for fam in TS_FAMILIES:
            if fam not in LADDER_FAMILIES:
                out.append({"config": {**chosen[fam], "seed": seed}, "lengths": None})
    for top in (4, 5):  # every ladder to 2000, then to 4000
        for seed in LADDER_SEEDS:
            out += [
                {"config": {**chosen[f], "seed": seed}, "lengths": LENGTHS[:top]}
                for f in LADDER_FAMILIES
            ]
        out += [{"config": {**best, "seed": s}, "lengths": LENGTHS[:top]} for s in LADDER_SEEDS]
    return out


def run_task(task: dict[str, Any], root: str, deadline: float | None, rate: float) -> dict:
    """Train (or load) one task, then fit TS on each rung reached; what was reached."""
    import torch

    torch.set_num_threads(1)
    from mls_tutorial.runs import load_or_train
    from mls_tutorial.sweep import train_ladder

    def fits(n: int, start: int) -> bool:
        return deadline is None or time.time() + (n - start) * rate < deadline

    cfg, lengths = task["config"], task["lengths"]
    t0 = time.time()
    if lengths is None:
        if not fits(cfg.get("iterations", 1000), 0):
            return {"task": task, "reached": [], "seconds": 0.0}
        runs = [load_or_train(cfg, root, figures=False, log=None)]
    else:
        runs = train_ladder(cfg, lengths, root, before_rung=fits, log=None)
    if cfg.get("select_metric", "last") == "last":
        for run in runs:  # TS: validation fit + one test evaluation, seconds
            load_or_train(
                {**run.config, "temperature_scaling": True}, root, figures=False, log=None
            )
    return {
        "task": task,
        "reached": [r.config["iterations"] for r in runs],
        "seconds": time.time() - t0,
    }


def train(args) -> None:
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = dt.datetime.now()
        deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
    queue = tasks(chosen_configs())
    print(f"{dt.datetime.now():%H:%M:%S} {len(queue)} tasks, {args.workers} workers", flush=True)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_task, t, str(args.root), deadline, args.rate): t for t in queue}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                res = fut.result()
                print(
                    f"{dt.datetime.now():%H:%M:%S} done {t['config']['loss']} "
                    f"{t['config'].get('select_metric', '')} seed {t['config']['seed']} "
                    f"reached {res['reached']} in {res['seconds']:.0f} s",
                    flush=True,
                )
            except Exception as exc:  # noqa: BLE001 - listed, the others go on
                print(f"FAILED {t}: {exc!r}", flush=True)


# ----------------------------------------------------------------------------- report


def _planned() -> list[tuple[str, int, int]]:
    """Every (config label, length, seed) the study asks for: what the report calls missing."""
    from mls_tutorial.length_curve import series_label
    from mls_tutorial.runs import normalize_config, run_label

    out = []
    for t in tasks(chosen_configs()):
        for n in t["lengths"] or (1000,):
            cfg = normalize_config({**t["config"], "iterations": n})
            label = series_label({"method": run_label(cfg), "select_metric": cfg["select_metric"]})
            out.append((label, n, cfg["seed"]))
            if cfg["select_metric"] == "last":
                out.append((label + " + TS", n, cfg["seed"]))
    return list(dict.fromkeys(out))


def _csv(runs) -> str:
    import csv
    import io

    from mls_tutorial.length_curve import series_label

    cols = ("ece", "gap", "dice", "tce", "hd95", "temperature")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["method", "iterations", "seed", *cols, "val_dice", "val_ece", "seconds", "run"])
    for r in sorted(runs, key=lambda r: (r.label, r.config["iterations"], r.config["seed"])):
        label = series_label({"method": r.label, "select_metric": r.config["select_metric"]})
        val = r.metrics.get("val") or {}
        w.writerow(
            [label, r.config["iterations"], r.config["seed"]]
            + [r.metrics.get(k) for k in cols]
            + [val.get("dice"), val.get("ece"), r.history.get("seconds"), r.name]
        )
    return out.getvalue()


def _distance_figure(runs, path: Path, seed: int) -> list[int]:
    """Logit-distance histograms (test volumes) of CE and each penalty, shortest and longest
    length reached by all four on ``seed``; the lengths drawn."""
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    mine = [
        r
        for r in runs
        if r.config["seed"] == seed
        and not r.config["temperature_scaling"]
        and r.config["select_metric"] == "last"
        and r.config["loss"] in LADDER_FAMILIES
    ]
    have: dict[int, dict[str, Any]] = {}
    for r in mine:
        have.setdefault(r.config["iterations"], {})[r.label] = r.metrics["histogram"]
    full = sorted(n for n, h in have.items() if len(h) == len(LADDER_FAMILIES))
    if not full:
        return []
    drawn = sorted({full[0], full[-1]})
    fig = Figure(figsize=(5.6 * len(drawn), 4.0), layout="constrained")
    axes = fig.subplots(1, len(drawn), squeeze=False).ravel()
    for axis, n in zip(axes, drawn, strict=True):
        plots.logit_distance_histogram(have[n], margin=5.0, ax=axis)
        axis.set_title(f"{n} iterations, seed {seed} (test volumes, every distance)")
    fig.savefig(path, dpi=100)
    return drawn


def _complete(runs, seeds) -> tuple[list, list[str]]:
    """The runs of the configs (up to the seed) that ran on every seed of ``seeds``, and a line
    per config left out because it ran on some only: a point is complete or absent."""
    from mls_tutorial.length_curve import series_label
    from mls_tutorial.runs import run_key

    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(run_key({**r.config, "seed": 0}), []).append(r)
    keep, left_out = [], []
    for members in groups.values():
        have = sorted(r.config["seed"] for r in members)
        if set(have) >= set(seeds):
            keep += members
        else:
            r = members[0]
            label = series_label({"method": r.label, "select_metric": r.config["select_metric"]})
            left_out.append(
                f"{label} at {r.config['iterations']} it ran on seed(s) "
                f"{', '.join(map(str, have))} only: left out of the curve"
            )
    return keep, left_out


def _against_evidence(runs) -> str:
    """How far the retrained runs' test ECE is from the evidence's (``runs.csv``)."""
    import csv
    import statistics

    with open(EVIDENCE / "runs.csv", newline="") as f:
        ev = {(r["method"], int(r["seed"])): float(r["ece"]) for r in csv.DictReader(f)}
    diffs = [
        abs(r.metrics["ece"] - ev[(r.label, r.config["seed"])])
        for r in runs
        if (r.label, r.config["seed"]) in ev
    ]
    if not diffs:
        return "no run in common"
    return (
        f"foreground ECE differs by {statistics.median(diffs):.4f} (median) and at most "
        f"{max(diffs):.4f} over the {len(diffs)} runs in common"
    )


def _update_blocks(path: Path, blocks: dict[str, str]) -> None:
    """Replace the text between ``<!-- name: ... -->`` and ``<!-- /name -->`` in ``path``."""
    import re

    text = path.read_text()
    for name, table in blocks.items():
        pattern = re.compile(rf"(<!-- {name}:[^>]*-->\n)(.*?)(<!-- /{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{path} has no <!-- {name}: --> block")
        text = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(3), text)
    path.write_text(text)


def report(args) -> None:

    from mls_tutorial.after_ts import after_ts_markdown, after_ts_rows, after_ts_sentences
    from mls_tutorial.files import atomic_write, write_json
    from mls_tutorial.length_curve import length_markdown, length_sentences, length_series
    from mls_tutorial.plots.length import length_curves
    from mls_tutorial.results import results_table
    from mls_tutorial.runs import find_runs, normalize_config, run_label

    runs = find_runs(args.root)
    # question 1: 1000 iterations, last weights, seeds 1-5
    q1 = [
        r
        for r in runs
        if r.config["iterations"] == 1000
        and r.config["select_metric"] == "last"
        and r.config["seed"] in TS_SEEDS
    ]
    q1, partial1 = _complete(q1, TS_SEEDS)  # a loss is compared on all five seeds or not at all
    try:
        entries = after_ts_rows(results_table(q1))
    except ValueError:  # CE or CE + TS not on every seed yet: nothing to compare
        entries = []
    # question 2: the ladders on the report seeds
    q2, partial = _complete(
        [
            r
            for r in runs
            if r.config["seed"] in LADDER_SEEDS and r.config["loss"] in LADDER_FAMILIES
        ],
        LADDER_SEEDS,
    )
    rows2 = results_table(q2)
    series = {k: length_series(rows2, k) for k in ("ece", "gap", "dice")}
    # TS leaves the argmax, hence Dice, as it was: its Dice series would repeat the loss's
    series["dice"] = [s for s in series["dice"] if not s["temperature_scaling"]]
    fig = length_curves(series, n_seeds_text=f"seeds {', '.join(map(str, LADDER_SEEDS))}")
    fig.set_size_inches(14.5, 4.8)
    fig.savefig(args.figures / "length_curve.png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    drawn = _distance_figure(q2, args.figures / "length_distances.png", LADDER_SEEDS[0])
    from mls_tutorial.length_curve import series_label

    have = {
        (
            series_label({"method": r.label, "select_metric": r.config["select_metric"]}),
            r.config["iterations"],
            r.config["seed"],
        )
        for r in runs
    }
    missing = [p for p in _planned() if p not in have]
    by_run: dict[tuple[str, int], list[int]] = {}
    for label, n, seed in missing:
        by_run.setdefault((label, n), []).append(seed)
    grouped: dict[tuple[str, tuple], list[int]] = {}
    for (label, n), seeds in by_run.items():
        grouped.setdefault((label, tuple(seeds)), []).append(n)
    missing_text = (
        [
            f"{label} at {'/'.join(map(str, ns))} it (seeds {', '.join(map(str, seeds))})"
            for (label, seeds), ns in grouped.items()
        ]
        + partial1
        + partial
    )
    agree = _against_evidence(q1)
    seconds = sorted(
        r.history["seconds"]
        for r in runs
        if r.config["iterations"] == 1000
        and not r.config["temperature_scaling"]
        and r.history.get("seconds")
        and not (r.path / "shipped.json").is_file()
    )
    study = {
        "protocol": {
            "chosen": chosen_configs(),
            "ts_seeds": list(TS_SEEDS),
            "ladder_seeds": list(LADDER_SEEDS),
            "lengths": list(LENGTHS),
            "best_validation": BEST_VAL,
            "n_runs": len(runs),
        },
        "after_ts": entries,
        "length": series,
        "missing": missing_text,
        "distance_figure_lengths": drawn,
        "histograms": [  # test logit distances of the drawn runs (the figure's data)
            {
                "method": r.label,
                "iterations": r.config["iterations"],
                "seed": r.config["seed"],
                "histogram": r.metrics["histogram"],
            }
            for r in q2
            if r.config["seed"] == LADDER_SEEDS[0]
            and r.config["iterations"] in drawn
            and not r.config["temperature_scaling"]
            and r.config["select_metric"] == "last"
        ],
    }
    out = args.out
    write_json(study, out / "length.json")
    text = _csv(runs)
    atomic_write(out / "length.csv", lambda f: f.write(text.encode()))
    med = f"{seconds[len(seconds) // 2]:.0f} s" if seconds else "-"
    md = [
        "# Temperature scaling on top of each loss, and a curve over training length (CPU)",
        "",
        "Made by `docs/length_study.py` (its docstring has the protocol); the tables and",
        "figures again from the run folders:",
        "",
        "```bash",
        "nice -n 10 python docs/length_study.py --workers 2 --deadline 09:30",
        "python docs/length_study.py --report-only  # this file, length.json, length.csv, figures",
        "```",
        "",
        f"- **Runs**: {len(runs)} run folders (training runs and their temperature-scaled twins) "
        f"under `runs/length`; the 2-core development CPU (torch threads 1 per worker, 2 "
        f"workers, shared with other jobs), median training time of a 1000-iteration run {med}.",
        "- **Knobs**: each family at the config section 1 of `docs/results.md` chose on "
        "validation over seeds 1-3 (`docs/evidence/chosen.json`): "
        + ", ".join(run_label(normalize_config(c)) for c in chosen_configs().values())
        + ". TS: one temperature per run, fitted on the validation volumes.",
        "- **Against `docs/evidence/runs.csv`** (the same configs and seeds as sections 1-2 of "
        "`docs/results.md`, trained earlier with another torch build): "
        + agree
        + "; the paired comparisons here use only the runs of this study.",
        "- **Missing** (planned, not run): " + ("; ".join(missing_text) or "none") + ".",
        "",
        "## 1. Does a training loss add anything after temperature scaling? (1000 iterations)",
        "",
        "Paired per seed: Δ = the loss minus CE on the same seed (before TS), and the loss + TS "
        "minus CE + TS (after TS); `TS's own ΔECE` is the loss + TS minus the loss itself. "
        "TS does not change the argmax, so Dice is the loss's own.",
        "",
        after_ts_markdown(entries),
        "\n".join(f"- {x}." for x in after_ts_sentences(entries)),
        "",
        "## 2. The curve over training length (report seeds "
        + ", ".join(map(str, LADDER_SEEDS))
        + ")",
        "",
        "Each cell: mean ± sample sd over the seeds (n), then the paired difference to CE at the "
        "same length (a + TS row: to CE + TS; CE keeping its best-validation-Dice weights: to CE's "
        "last weights) and on how many seeds it is lower (ECE) or higher (DSC).",
        "",
        "### Foreground ECE (test)",
        "",
        length_markdown(series["ece"], "ece"),
        "\n".join(f"- {x}." for x in length_sentences(series["ece"])),
        "",
        "### conf - acc (fg, test)",
        "",
        length_markdown(series["gap"], "gap"),
        "### DSC (test)",
        "",
        length_markdown(series["dice"], "dice"),
        "![ECE, gap and DSC against training length](../figures/length_curve.png)",
        "",
    ]
    if drawn:
        md += [
            "![logit distances of CE and the penalties, short and long training]"
            "(../figures/length_distances.png)",
            "",
        ]
    atomic_write(out / "length.md", lambda f: f.write("\n".join(md).encode()))
    if out == EVIDENCE:  # the tables docs/results.md quotes, between their markers
        _update_blocks(
            ROOT / "docs" / "results.md",
            {
                "after-ts": after_ts_markdown(entries)
                + "\n"
                + "\n".join(f"- {x}." for x in after_ts_sentences(entries))
                + "\n",
                "length-ece": length_markdown(series["ece"])
                + "\n"
                + "\n".join(f"- {x}." for x in length_sentences(series["ece"]))
                + "\n",
            },
        )
    print(f"report: {len(runs)} runs -> {out / 'length.md'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "length", help="run folders")
    ap.add_argument("--workers", type=int, default=1, help="processes training at once")
    ap.add_argument("--deadline", default=None, help="HH:MM: start no rung that ends later")
    ap.add_argument("--rate", type=float, default=0.2, help="seconds per iteration (estimate)")
    ap.add_argument("--report-only", action="store_true", help="tables and figures, no training")
    ap.add_argument("--out", type=Path, default=EVIDENCE, help="where length.md/.json/.csv go")
    ap.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures", help="figures")
    args = ap.parse_args(argv)
    if not args.report_only:
        train(args)
    report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
