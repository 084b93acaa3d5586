"""The regime study: when does the margin help? U-Net capacity x training length.

    python docs/regime_study.py --root runs/regime --device cuda --workers 12 --deadline 420
    python docs/regime_study.py --root runs/regime --report-only   # tables and figures again
    python docs/regime_study.py --from-json   # the same from docs/evidence/regime.json alone
    python docs/regime_study.py --fast --root /tmp/regime --out /tmp/regime-out   # a CI check

For every preset (``tiny``, ``small``, ``paper``) and loss family (CE, LS, ECP, MbLS, CALS; CE +
temperature scaling beside them) one **ladder** per config and seed trains 1000, 2000 and 4000
iterations: each longer run resumes from the shorter one's last checkpoint (constant learning
rate, so it is the run that training it alone gives; ``sweep.train_ladder``). Seeds 1-2 choose
each family's knob on validation in every cell, from a small grid around the knob chosen in the
default regime (``docs/evidence/chosen.json``, chosen on seeds 1-3); seeds 4-6 are reported
(seed 3 is left out: it chose the default knobs). CE and every family's default knob run on
all five seeds; the other grid points on the choosing seeds; a re-chosen knob that is not the
default is trained on the report seeds as soon as its preset's choosing runs are done.

Runs are scheduled cheap presets first, by priority; ``--deadline`` (seconds from the start)
stops starting rungs whose measured duration would overrun it, ``--hard-deadline`` terminates
the workers. Whatever finished is written: ``regime.md``, ``regime.csv`` (one line per run),
``regime.json`` in ``--out``, two figures in ``--figures``, and with ``--tar DIR`` an xz tarball
per preset of the run folders without weights (``--report-only`` rebuilds everything from
those). ``--fast``: tiny only on the test suite's synthetic shapes, 4 and 8 iterations, seeds 1
(choose) and 2 (report), a one-point grid but for MbLS: the whole pipeline in seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("tiny", "small", "paper")
EXPENSIVE = {"paper"}  # scheduled after every cheaper preset's choosing runs
LENGTHS = (1000, 2000, 4000)
CHOOSE_SEEDS, REPORT_SEEDS = (1, 2), (4, 5, 6)
FAMILIES = ("ls", "ecp", "mbls", "cals")
GRID = {  # family -> (knob, values): a small grid around the default regime's choice
    "ls": ("alpha", (0.03, 0.1, 0.3)),
    "ecp": ("beta", (0.1, 0.3, 1.0)),
    "mbls": ("margin", (3.0, 5.0, 10.0)),
    "cals": ("margin", (3.0, 5.0, 10.0)),
}
FAST_GRID = {"mbls": ("margin", (3.0, 5.0))}
FAST_CONFIG = {  # the synthetic shapes of the test suite: seconds, not minutes
    "data": "synthetic",
    "data_params": {"n_train": 8, "size": 16, "slices": 2, "n_val": 1, "n_test": 1, "seed": 3},
    "batch_size": 4,
    "val_every": 4,
}
MARGIN = 5.0  # distances are counted above the default regime's MbLS margin
DISTANCE_MARGINS = (3.0, 5.0, 10.0)  # the MbLS / CALS grid: each run's own margin too
FIRST_GUESS_S_PER_IT = {"tiny": 0.02, "small": 0.025, "paper": 0.06}
EVAL_SECONDS = 8.0  # evaluation, distances and TS after a rung (measured ones replace it)
RUN_INFO = "regime_run_{stamp}.json"  # one per training session
FULL_COMMAND = (
    "python docs/regime_study.py --root runs/regime --device cuda --workers 12 "
    "--tar runs/regime-tar"
)


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------- plan


def default_knobs(chosen_json: Path) -> dict[str, dict[str, float]]:
    """Each family's knob as chosen on validation in the default regime."""
    from mls_tutorial.runs import KNOBS

    data = json.loads(chosen_json.read_text())
    out = {}
    for rec in data["families"]:
        if rec["family"] in FAMILIES:
            cfg = rec["config"]
            out[rec["family"]] = {
                k: float(cfg["loss_kwargs"][k])
                for k in KNOBS[cfg["loss"]]
                if k in cfg["loss_kwargs"]
            }
    missing = set(FAMILIES) - set(out)
    if missing:
        raise SystemExit(f"{chosen_json} has no chosen config for {sorted(missing)}")
    return out


def family_configs(fam: str, defaults: dict, grid: dict) -> list[dict[str, float]]:
    """The loss_kwargs of a family's grid (the default first)."""
    base = defaults[fam]
    if fam not in grid:
        return [dict(base)]
    knob, values = grid[fam]
    if base[knob] not in values:
        raise SystemExit(f"the {fam} grid {values} lacks the default {knob}={base[knob]}")
    return [dict(base)] + [{**base, knob: v} for v in values if v != base[knob]]


def make_task(preset, loss, kwargs, seed, tier, common, lengths) -> dict[str, Any]:
    cfg = {**common, "preset": preset, "loss": loss, "loss_kwargs": dict(kwargs), "seed": seed}
    return {"config": cfg, "lengths": list(lengths), "tier": tier, "preset": preset, "seed": seed}


CHOICE_ORDER = ("mbls", "ecp", "ls", "cals")  # whose knob is re-chosen first


def plan(presets, lengths, defaults, grid, common, choose, report) -> list[dict]:
    """Every ladder of tiers 1 (CE and the default knobs on the report seeds) and 2 (CE and
    every grid point on the choosing seeds), in priority order: per preset (cheap ones first),
    CE and MbLS's grid on the choosing seeds, then tier 1, then the other families' grids.
    Tier 3 (a re-chosen knob on the report seeds) is added while running."""
    tasks = []
    for preset in presets:
        first, rest = [], []
        for seed in choose:
            first.append(make_task(preset, "ce", {}, seed, 2, common, lengths))
        for fam in CHOICE_ORDER:
            for seed in choose:
                for kw in family_configs(fam, defaults, grid):
                    (first if fam == CHOICE_ORDER[0] else rest).append(
                        make_task(preset, fam, kw, seed, 2, common, lengths)
                    )
        report_tasks = []
        for seed in report:
            report_tasks.append(make_task(preset, "ce", {}, seed, 1, common, lengths))
            for fam in FAMILIES:
                report_tasks.append(make_task(preset, fam, defaults[fam], seed, 1, common, lengths))
        tasks.append(first + report_tasks + rest)
    cheap = [
        t for p, group in zip(presets, tasks, strict=True) if p not in EXPENSIVE for t in group
    ]
    late = [t for p, group in zip(presets, tasks, strict=True) if p in EXPENSIVE for t in group]
    return cheap + late


def rechosen_tasks(root, preset, fam, lengths, defaults, common, choose, report, done_keys):
    """Tier 3: the knobs of ``fam`` the rule re-chose in this preset's cells (on the choosing
    seeds' validation numbers) that are not the default: ladders on the report seeds."""
    from mls_tutorial.regime import choose_per_family
    from mls_tutorial.results import results_table
    from mls_tutorial.runs import find_runs
    from mls_tutorial.sweep import family

    runs = [
        r
        for r in find_runs(root, preset=preset)
        if r.config["seed"] in choose and family(r.config) in ("ce", fam)
    ]
    tasks = []
    for n in lengths:
        cell = [r for r in runs if r.config["iterations"] == n]
        picked, problems = choose_per_family(results_table(cell) if cell else [])
        for text in problems:
            log(f"[choice] {preset} {n} it: {text}")
        if fam not in picked:
            continue
        kw = {k: float(picked[fam]["chosen"]["loss_kwargs"][k]) for k in defaults[fam]}
        ident = (preset, fam, tuple(sorted(kw.items())))
        log(f"[choice] {preset} {n} it: {fam} {kw} (default {defaults[fam]})")
        if kw == defaults[fam] or ident in done_keys:
            continue
        done_keys.add(ident)
        for seed in report:
            tasks.append(make_task(preset, fam, kw, seed, 3, common, lengths))
    return tasks


# -------------------------------------------------------------------------------- workers


def init_worker(threads: int) -> None:
    import warnings

    import torch

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
    warnings.filterwarnings("ignore", category=UserWarning)


def run_chain(task: dict, root: str, device: str, deadline: float | None, rate: float) -> dict:
    """Train one ladder, rung by rung; after each rung its exact distances and (CE) its
    temperature-scaled run. Stops before a rung that would not end before ``deadline``."""
    from mls_tutorial.regime import DISTANCES_FILE, measure_distances
    from mls_tutorial.runs import get_data, load_or_train
    from mls_tutorial.sweep import train_ladder

    cfg, lengths = task["config"], task["lengths"]
    data = get_data(cfg)
    done, rungs = [], []
    speed = {"s_per_it": rate}

    def fits(n: int, start: int) -> bool:
        need = speed["s_per_it"] * (n - start) * 1.15 + EVAL_SECONDS
        return deadline is None or time.time() + need < deadline

    for i, n in enumerate(lengths):
        start = lengths[i - 1] if i else 0
        t0 = time.time()
        runs = train_ladder(cfg, lengths[: i + 1], root, device=device, log=None, before_rung=fits)
        if len(runs) <= i:
            break  # the deadline: this rung and longer ones are not started
        run = runs[-1]
        trained = time.time() - t0
        if not (run.path / DISTANCES_FILE).is_file():
            measure_distances(run, data, device=device, margins=DISTANCE_MARGINS)
        if cfg["loss"] == "ce":
            load_or_train(
                {**run.config, "temperature_scaling": True},
                root,
                device=device,
                data=data,
                progress=False,
                figures=False,
                use_shipped=False,  # the base run is this study's, so is its TS
                log=None,
            )
        wall = time.time() - t0
        if not run.cached and n > start:  # this worker's own speed
            speed["s_per_it"] = 0.5 * speed["s_per_it"] + 0.5 * trained / (n - start)
        rungs.append(
            {
                "run": run.name,
                "iterations": n,
                "start": start,
                "train_s": trained,
                "wall_s": wall,
                "cached": run.cached,
            }
        )
        done.append(n)
    return {"task": task, "rungs": rungs, "done": done, "pid": os.getpid()}


# ------------------------------------------------------------------------------ scheduler


class Scheduler:
    """Keeps ``workers`` ladders in flight, highest priority first; adds tier 3 per preset
    once its choosing ladders are done; stops at the deadlines."""

    def __init__(self, args, tasks, lengths, defaults, grid, common, choose, report):
        self.args, self.pending = args, list(tasks)
        self.lengths, self.defaults, self.grid, self.common = lengths, defaults, grid, common
        self.choose, self.report = choose, report
        self.t0 = time.time()
        self.deadline = None if args.deadline is None else self.t0 + args.deadline
        hard = args.hard_deadline or (args.deadline + 90 if args.deadline else None)
        self.hard = None if hard is None else self.t0 + hard
        self.rates: dict[str, list[float]] = {}
        self.finished: list[dict] = []
        self.skipped: list[dict] = []  # never started
        self.terminated: list[dict] = []  # in flight at the hard deadline
        self.rechosen_done: set = set()
        self.tier3_added: set = set()

    def rate(self, preset: str) -> float:
        seen = self.rates.get(preset)
        return statistics.median(seen[-20:]) if seen else FIRST_GUESS_S_PER_IT.get(preset, 0.05)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def record(self, result: dict) -> None:
        self.finished.append(result)
        task = result["task"]
        for r in result["rungs"]:
            if not r["cached"] and r["iterations"] > r["start"]:
                # the scheduler's estimate includes the rung's evaluation
                self.rates.setdefault(task["preset"], []).append(
                    r["wall_s"] / (r["iterations"] - r["start"])
                )
        cfg = task["config"]
        rungs = ", ".join(f"{r['iterations']}:{r['wall_s']:.0f}s" for r in result["rungs"])
        log(
            f"[{self.elapsed():5.0f}s] {task['preset']} {cfg['loss']} {cfg['loss_kwargs']} "
            f"s{task['seed']} t{task['tier']} -> {rungs or 'nothing (deadline)'}"
        )

    def choosing_done(self, preset: str, fam: str, inflight_tasks) -> bool:
        """Every choosing ladder of CE and ``fam`` in ``preset`` has finished."""

        def mine(t):
            return (
                t["preset"] == preset
                and t["seed"] in self.choose
                and t["tier"] < 3
                and t["config"]["loss"] in ("ce", fam)
            )

        return not any(mine(t) for t in self.pending) and not any(mine(t) for t in inflight_tasks)

    def add_tier3(self, inflight_tasks) -> None:
        for preset in dict.fromkeys(r["task"]["preset"] for r in self.finished):
            for fam in CHOICE_ORDER:
                if (preset, fam) in self.tier3_added:
                    continue
                if not self.choosing_done(preset, fam, inflight_tasks):
                    continue
                self.tier3_added.add((preset, fam))
                try:
                    new = rechosen_tasks(
                        self.args.root,
                        preset,
                        fam,
                        self.lengths,
                        self.defaults,
                        self.common,
                        self.choose,
                        self.report,
                        self.rechosen_done,
                    )
                except Exception as exc:  # noqa: BLE001 - the study goes on without it
                    log(f"[choice] {preset} {fam}: tier 3 not planned: {type(exc).__name__}: {exc}")
                    continue
                self.pending[:0] = new  # ahead of everything not yet started

    def next_task(self):
        """The first pending ladder whose first rung would end before the deadline."""
        for i, task in enumerate(self.pending):
            first = task["lengths"][0]
            need = self.rate(task["preset"]) * first * 1.15 + EVAL_SECONDS
            if self.deadline is None or time.time() + need < self.deadline:
                return self.pending.pop(i)
        return None

    def run_serial(self) -> None:
        init_worker(1 if self.args.fast else max(1, torch_threads()))  # busy CI cores thrash
        while True:
            self.add_tier3([])
            task = self.next_task()
            if task is None:
                break
            self.record(
                run_chain(
                    task,
                    str(self.args.root),
                    self.args.device,
                    self.deadline,
                    self.rate(task["preset"]),
                )
            )
        self.skipped = list(self.pending)

    def run_parallel(self) -> None:
        workers = self.args.workers
        threads = max(1, torch_threads() // workers)
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(
            workers, initializer=init_worker, initargs=(threads,), maxtasksperchild=None
        )
        inflight: dict[Any, dict] = {}
        last_status = 0.0
        try:
            while True:
                for ar in [a for a in inflight if a.ready()]:
                    task = inflight.pop(ar)
                    try:
                        self.record(ar.get())
                    except Exception as exc:  # noqa: BLE001 - one ladder's failure is reported
                        log(
                            f"[failed] {task['preset']} {task['config']['loss']} "
                            f"{task['config']['loss_kwargs']} s{task['seed']}: "
                            f"{type(exc).__name__}: {exc}"
                        )
                        self.finished.append(
                            {
                                "task": task,
                                "rungs": [],
                                "done": [],
                                "error": f"{type(exc).__name__}: {exc}",
                            }
                        )
                self.add_tier3(list(inflight.values()))
                while len(inflight) < workers:
                    task = self.next_task()
                    if task is None:
                        break
                    ar = pool.apply_async(
                        run_chain,
                        (
                            task,
                            str(self.args.root),
                            self.args.device,
                            self.deadline,
                            self.rate(task["preset"]),
                        ),
                    )
                    inflight[ar] = task
                if not inflight:  # nothing left, or nothing may start any more
                    break
                if self.hard is not None and time.time() > self.hard:
                    log(f"[hard deadline] terminating {len(inflight)} ladders in flight")
                    self.terminated.extend(inflight.values())
                    break
                if time.time() - last_status > 30:
                    last_status = time.time()
                    rates = {p: f"{self.rate(p):.4f}" for p in self.rates}
                    log(
                        f"[{self.elapsed():5.0f}s] done {len(self.finished)}, in flight "
                        f"{len(inflight)}, pending {len(self.pending)}; s/it {rates}"
                    )
                time.sleep(0.5)
        finally:
            pool.terminate()
            pool.join()
        self.skipped.extend(self.pending)


TIERS = {1: "CE and default knobs, report seeds", 2: "choosing seeds", 3: "re-chosen knobs"}


def summarize(tasks: list[dict], what: str) -> list[str]:
    """``tiny: 3 ladders of tier 2 (other grid points) not started``, per preset and tier."""
    count: dict[tuple, int] = {}
    for t in tasks:
        count[(t["preset"], t["tier"])] = count.get((t["preset"], t["tier"]), 0) + 1
    return [f"{p}: {n} ladders of tier {k} ({TIERS[k]}) {what}" for (p, k), n in count.items()]


def torch_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------- report


def tar_runs(root: Path, out: Path, presets) -> list[Path]:
    """One ``runs_<preset>.tar.xz`` per preset: run folders without weights, examples, figures."""
    from concurrent.futures import ThreadPoolExecutor

    skip_suffix = (".pt", ".png", ".npz", ".lock", ".copy")

    def keep(info: tarfile.TarInfo):
        parts = Path(info.name).parts
        if any(p.startswith(".") for p in parts[1:]) or info.name.endswith(skip_suffix):
            return None
        return info

    def one(preset: str) -> Path | None:
        folders = [
            p.parent
            for p in root.glob("*/config.json")
            if json.loads(p.read_text()).get("preset") == preset
        ]
        if not folders:
            return None
        path = out / f"runs_{preset}.tar.xz"
        with tarfile.open(path, "w:xz", preset=4) as tar:
            for info in sorted(root.glob("regime_run*.json")):
                tar.add(info, arcname=f"regime/{info.name}")
            for folder in sorted(folders):
                tar.add(folder, arcname=f"regime/{folder.name}", filter=keep)
        return path

    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(presets)) as pool:
        return [p for p in pool.map(one, presets) if p is not None]


def _session_line(info: dict) -> str:
    rungs: dict[int, int] = {}
    for lad in info.get("ladders", []):
        for r in lad["rungs"]:
            if not r.get("cached"):  # trained in this session
                rungs[r["iterations"]] = rungs.get(r["iterations"], 0) + 1
    errors = info.get("errors") or []
    text = (
        f"`{info.get('command', '?')}`: {info.get('machine', '?')}, "
        f"{info.get('workers', '?')} workers, {info.get('elapsed_s', 0):.0f} s; rungs trained "
        + (", ".join(f"{k} x {n} it" for n, k in sorted(rungs.items())) or "none")
    )
    if errors:
        kinds = sorted(set(errors))
        text += (
            f"; {len(errors)} ladders failed ({'; '.join(kinds)}), keeping the rungs they "
            "had finished (not counted here; they are in the cells)"
        )
    # a failed ladder "stopped after 0 iterations" is one of the failures counted above
    cut = [c for c in info.get("cut") or [] if not (errors and c.endswith("after 0 iterations"))]
    if cut:
        text += "; not run: " + "; ".join(cut)
    return text


def _timing_lines(records: list[dict]) -> list[str]:
    """Median training seconds per run (``history.json``), per preset and length."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r["family"] != "ce_ts" and r.get("seconds"):
            groups.setdefault((r["preset"], r["iterations"]), []).append(float(r["seconds"]))
    return [
        f"{p} {n} it: {statistics.median(v):.0f} s ({min(v):.0f}-{max(v):.0f}, {len(v)} runs)"
        for (p, n), v in sorted(
            groups.items(),
            key=lambda kv: (PRESETS.index(kv[0][0]) if kv[0][0] in PRESETS else 9, kv[0][1]),
        )
    ]


def _preset_text(parameters: dict[str, int]) -> str:
    from mls_tutorial.models import PRESETS

    parts = []
    for name, params in parameters.items():
        spec = PRESETS[name]
        parts.append(
            f"`{name}` {params:,} parameters, channels {list(spec['channels'])}, "
            f"{spec['num_res_units']} residual units, normalisation {spec['norm']}"
        )
    return "; ".join(parts)


def header(study: dict, infos: list[dict], records: list[dict], command: str) -> str:
    from mls_tutorial.regime import finding_paragraph

    p = study["protocol"]
    grid = "; ".join(f"{f} {k} {list(v)}" for f, (k, v) in p["grid"].items())
    cells = ", ".join(
        f"{c['preset']} {c['iterations']} ({c['n_runs']} runs)" for c in study["cells"]
    )
    lines = [
        "# The regime study: when does the margin help?",
        "",
        (
            "The fast check of the pipeline, and its tables and figures again from its run folders:"
            if p.get("fast")
            else "The study (every cell; not run as one piece: at the per-run times below it "
            "needs about 25 minutes of one H200, and the sessions listed below ran it in parts "
            "under a 15-minute budget), and the tables and figures again from its run folders:"
        ),
        "",
        "```bash",
        command,
        "python docs/regime_study.py --root runs/regime --report-only  # this file, regime.csv,"
        " regime.json, docs/figures/regime_*.png",
        "```",
        "",
        f"- **Cells here**: {cells}. "
        + (
            "`--fast`: the test suite's synthetic shapes, batch 4. "
            if p.get("fast")
            else "Adam, constant lr 1e-3, batch 16, last weights, bf16 AMP on CUDA, the "
            "bundled MNI data with sampled labels (the default regime of `docs/results.md`). "
        )
        + "A run of N iterations is the same whether trained alone or resumed from a shorter "
        "one (`sweep.train_ladder`).",
        f"- **Losses**: CE, LS, ECP, MbLS, CALS, and CE + temperature scaling (T fitted on the "
        f"validation volumes). Default knobs, chosen on validation in the default regime "
        f"(`docs/evidence/chosen.json`, seeds 1-3): {p['defaults']}. Grid from which each "
        f"cell re-chooses: {grid}.",
        f"- **Seeds**: knobs re-chosen on the validation numbers of seeds {p['choose_seeds']} "
        f"(the rule of `report --choose-on val`: lowest validation foreground ECE among the "
        f"configs within {p['dice_tolerance']:g} of CE's validation DSC); test numbers reported "
        f"on seeds {p['report_seeds']} only, which chose nothing (seed 3 helped choose the "
        "default knobs and is left out).",
        f"- **Distances**: `mean d` is the exact mean of the non-winning logit distances "
        f"`max_j z_j - z_k` of the last weights, on the test volumes and on the training "
        f"images (every voxel); `share d > m` the share above m = {p['margin']:g} (MbLS's "
        "default margin). `val NLL rise`: the last validation foreground NLL minus its minimum "
        "during training (how far training went past its best validation fit; "
        "`mls_tutorial.regime.history_divergence`).",
        "- **Presets** (`mls_tutorial.models.PRESETS`; capacity is not the only thing that "
        "changes along that axis: read it as three architectures, not a size scale): "
        + _preset_text(p.get("parameters") or {})
        + ".",
        "- **Training time per run** (seconds in `history.json`, median (range), with the "
        "other workers sharing the GPU): " + "; ".join(_timing_lines(records)) + ".",
    ]
    sessions = [_session_line(info) for info in infos] or p.get("sessions") or []
    if sessions:
        lines.append(
            "- **Sessions that made these runs** (one H200 each time; `--tar` "
            "tarballs of the run folders without weights came back):"
        )
        lines += [f"  {i}. " + line for i, line in enumerate(sessions, 1)]
    missing = [
        f"{c['preset']} {c['iterations']}: {m}" for c in study["cells"] for m in c["missing"]
    ]
    if missing:
        lines.append("- **Missing in the tables**: " + "; ".join(missing) + ".")
    lines += [
        "",
        "**Finding (MbLS).** " + finding_paragraph(study),
        "",
        "![ECE, gap and DSC against training length](../figures/regime_ece.png)",
        "",
        "![ECE, gap and DSC against capacity](../figures/regime_capacity.png)",
        "",
        "![CE's logit distances after short and long training](../figures/regime_distances.png)",
        "",
    ]
    return "\n".join(lines) + "\n"


def write_figures(study: dict, figs: Path) -> None:
    """``regime_ece.png`` (length panels of the presets with two lengths or more),
    ``regime_capacity.png`` (with several presets) and ``regime_distances.png``."""
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    figs.mkdir(parents=True, exist_ok=True)
    lengths: dict[str, set] = {}
    for c in study["cells"]:
        lengths.setdefault(c["preset"], set()).add(c["iterations"])
    presets = list(lengths)
    keys = ("ece", "gap", "dice")
    if any(len(v) > 1 for v in lengths.values()):
        fig = Figure(figsize=(14.5, 4.6), layout="constrained")
        plots.regime_curves(study, keys=keys, ax=list(fig.subplots(1, len(keys)).ravel()))
        fig.savefig(figs / "regime_ece.png", dpi=100)
    if len(presets) > 1:
        fig = Figure(figsize=(14.5, 4.6), layout="constrained")
        plots.regime_capacity(study, keys=keys, ax=list(fig.subplots(1, len(keys))))
        fig.savefig(figs / "regime_capacity.png", dpi=100)
    fig = Figure(figsize=(5.2 * len(presets), 3.8), layout="constrained")
    plots.regime_histograms(study, ax=fig.add_subplot())  # split into one panel per preset
    fig.savefig(figs / "regime_distances.png", dpi=100)


def preset_parameters(presets) -> dict[str, int]:
    """Trainable parameters of each U-Net preset on the bundled data (1 channel, 4 classes)."""
    from mls_tutorial.models import build_unet, count_parameters

    return {p: count_parameters(build_unet(1, 4, p)) for p in dict.fromkeys(presets)}


def refresh(args) -> None:
    """``regime.md``, ``regime.json`` and the figures again from ``regime.json`` and
    ``regime.csv`` alone (no run folders): holes, findings and rankings recomputed by the
    current library from the cells."""
    import csv

    from mls_tutorial.files import atomic_write, write_json
    from mls_tutorial.regime import cell_holes, regime_findings, regime_markdown

    study = json.loads((args.out / "regime.json").read_text())
    with open(args.out / "regime.csv", newline="") as f:
        records = list(csv.DictReader(f))
    for r in records:
        r["iterations"] = int(r["iterations"])
        r["seconds"] = float(r["seconds"]) if r["seconds"] else None
    defaults = study["protocol"]["defaults"]
    for cell in study["cells"]:
        cell["defaults"] = {k: dict(v) for k, v in defaults.items()}
        kept = [m for m in cell["missing"] if not m.endswith("no run on the report seeds")]
        cell["missing"] = list(dict.fromkeys(kept + cell_holes(cell)))
    study["findings"] = {w: regime_findings(study["cells"], w) for w in ("chosen", "default")}
    study["protocol"]["parameters"] = preset_parameters(c["preset"] for c in study["cells"])
    write_json(study, args.out / "regime.json")
    md = header(study, [], records, FULL_COMMAND) + regime_markdown(study)
    atomic_write(args.out / "regime.md", lambda f: f.write(md.encode()))
    write_figures(study, Path(args.figures))
    log(f"refreshed {args.out / 'regime.md'} from regime.json ({len(study['cells'])} cells)")


def report(args, protocol: dict) -> None:
    from mls_tutorial.regime import regime_study, write_study
    from mls_tutorial.runs import find_runs

    t = time.time()
    runs = find_runs(args.root)
    if not runs:
        raise SystemExit(f"no finished runs under {args.root}")
    infos = [json.loads(f.read_text()) for f in sorted(Path(args.root).glob("regime_run*.json"))]
    infos.sort(key=lambda i: i.get("started", 0))
    protocol = {
        **protocol,
        "sessions": [_session_line(info) for info in infos],
        "parameters": preset_parameters(protocol["presets"]),
    }
    study, records = regime_study(
        runs,
        choose_seeds=protocol["choose_seeds"],
        report_seeds=protocol["report_seeds"],
        defaults=protocol["defaults"],
        margin=MARGIN,
        protocol=protocol,
    )
    command = FULL_COMMAND
    if protocol["fast"]:
        command = infos[-1]["command"] if infos else "python docs/regime_study.py --fast"
    paths = write_study(study, records, args.out, header=header(study, infos, records, command))
    write_figures(study, Path(args.figures))
    log(
        f"report: {len(runs)} runs, {len(study['cells'])} cells in {time.time() - t:.0f} s -> "
        + ", ".join(str(p) for p in paths.values())
    )


# ----------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "regime", help="run folders")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "evidence", help="where regime.md/.csv/.json go"
    )
    ap.add_argument(
        "--figures",
        type=Path,
        default=ROOT / "docs" / "figures",
        help="where regime_ece.png and regime_distances.png go",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--workers", type=int, default=1, help="ladders trained at once")
    ap.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds from the start after which no rung starts that would not end",
    )
    ap.add_argument(
        "--hard-deadline",
        type=float,
        default=None,
        help="seconds from the start at which workers are terminated (default: deadline + 90)",
    )
    ap.add_argument("--presets", nargs="+", default=None, help=f"default {list(PRESETS)}")
    ap.add_argument(
        "--fast",
        action="store_true",
        help="tiny only, synthetic shapes, 4 and 8 iterations, 2 seeds",
    )
    ap.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=None,
        help=f"training lengths (default {list(LENGTHS)}; --fast: 4 8)",
    )
    ap.add_argument("--report-only", action="store_true", help="no training: tables and figures")
    ap.add_argument(
        "--from-json",
        action="store_true",
        help="tables, findings and figures again from --out's regime.json and regime.csv "
        "(no run folders needed)",
    )
    ap.add_argument("--tar", type=Path, default=None, help="write runs_<preset>.tar.xz here")
    ap.add_argument(
        "--chosen",
        type=Path,
        default=ROOT / "docs" / "evidence" / "chosen.json",
        help="the default regime's choice (report --choose-on val)",
    )
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.from_json:
        refresh(args)
        return 0
    from mls_tutorial.device import pick_device

    args.device = str(pick_device(args.device))
    presets = tuple(args.presets or (("tiny",) if args.fast else PRESETS))
    lengths = tuple(args.lengths or ((4, 8) if args.fast else LENGTHS))
    choose, report_seeds = ((1,), (2,)) if args.fast else (CHOOSE_SEEDS, REPORT_SEEDS)
    grid = FAST_GRID if args.fast else GRID
    common = FAST_CONFIG if args.fast else {}
    defaults = default_knobs(args.chosen)
    protocol = {
        "presets": list(presets),
        "lengths": list(lengths),
        "choose_seeds": list(choose),
        "report_seeds": list(report_seeds),
        "defaults": defaults,
        "grid": {f: [k, list(v)] for f, (k, v) in grid.items()},
        "config": common,
        "fast": args.fast,
    }
    args.root.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        import torch

        tasks = plan(presets, lengths, defaults, grid, common, choose, report_seeds)
        log(
            f"[plan] {len(tasks)} ladders (tiers 1-2) of {list(lengths)} iterations on "
            f"{args.device} with {args.workers} workers; deadline {args.deadline} s"
        )
        sched = Scheduler(args, tasks, lengths, defaults, grid, common, choose, report_seeds)
        try:
            sched.run_serial() if args.workers == 1 else sched.run_parallel()
        except BaseException as exc:  # noqa: BLE001 - whatever finished is still written
            log(f"[scheduler] stopped early: {type(exc).__name__}: {exc}")
        machine = f"{torch_threads()} CPU cores"
        if args.device.startswith("cuda"):
            machine = f"one {torch.cuda.get_device_name()} (torch {torch.__version__}), " + machine
        else:
            machine += f" (torch {torch.__version__})"
        cut = summarize(sched.skipped, "not started")
        cut += summarize(sched.terminated, "terminated in flight (their finished rungs are kept)")
        stops: dict[tuple, int] = {}
        for r in sched.finished:
            if len(r["done"]) < len(lengths) and not r.get("error"):
                at = (r["task"]["preset"], max(r["done"], default=0))
                stops[at] = stops.get(at, 0) + 1
        short = [f"{p}: {k} ladders stopped after {n} iterations" for (p, n), k in stops.items()]
        info = {
            "command": "python docs/regime_study.py "
            + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
            "machine": machine,
            "workers": args.workers,
            "elapsed_s": sched.elapsed(),
            "seconds_per_iteration": {p: sched.rate(p) for p in sched.rates},
            "cut": cut + short,
            "errors": [r["error"] for r in sched.finished if r.get("error")],
            "ladders": [
                {"task": r["task"], "rungs": r["rungs"], "error": r.get("error")}
                for r in sched.finished
            ],
        }
        from mls_tutorial.files import write_json

        info["started"] = sched.t0
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(sched.t0))
        write_json(info, args.root / RUN_INFO.format(stamp=stamp))
        log(
            f"[trained] {len(sched.finished)} ladders in {sched.elapsed():.0f} s; "
            f"{len(sched.skipped)} not started, {len(sched.terminated)} terminated, "
            f"{len(short)} stopped early"
        )
    if args.tar is not None:
        t = time.time()
        for p in tar_runs(args.root, args.tar, presets):
            log(f"[tar] {p} {p.stat().st_size / 2**20:.1f} MiB ({time.time() - t:.0f} s)")
    report(args, protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
