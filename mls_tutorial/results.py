"""Results: tables over seeds, the choose-on-validation rule, paired differences to CE.

- ``results_table(runs)``: one row per config (all seeds): mean, sample std and per-seed values
  of the test metrics, and of the validation metrics of the kept weights (``val_*``).
- ``choose_on_validation(rows)``: per method family (``sweep.family``), the config chosen by
  **validation** numbers only:

      eligible = configs whose mean validation foreground DSC >= CE's - dice_tolerance (1 point)
      chosen   = the eligible config with the lowest mean validation foreground ECE
      (no config eligible: the one with the highest validation DSC, flagged ``eligible=False``)

  Means are over the seeds that CE and every config of the family share, so the comparison
  is paired. The chosen config's **test** numbers are what gets reported.
- ``paired_difference(row, ce_row, key)``: per-seed ``method - CE`` on the same seeds, its mean
  and sample std, and on how many seeds the method is better.
- ``format_markdown`` / ``format_csv`` / ``write_results``; ``chosen_markdown`` / ``grid_markdown``;
  ``per_class_rows`` / ``per_class_markdown`` (one run per row, Dice and classwise ECE by class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mls_tutorial.files import write_json
from mls_tutorial.markdown import markdown_table
from mls_tutorial.metrics.results import LOWER_IS_BETTER, TABLE_COLUMNS
from mls_tutorial.registry import family_rank
from mls_tutorial.runs import Run, run_key

#: validation metrics kept per run (``metrics.json["val"]``), columns ``val_<key>``
VAL_COLUMNS = {"dice": "val DSC", "ece": "val ECE (fg)", "gap": "val conf - acc"}


def mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the finite values; None where undefined."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean = float(np.mean(finite)) if finite else None
    return mean, (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def results_table(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per config up to the seed: mean, spread (sample std) and values over seeds.

    Row keys: ``method`` (label), ``family``, ``loss``, ``loss_kwargs``, ``margin``,
    ``temperature_scaling``, ``iterations``, ``select_metric``, ``seeds``, ``n_seeds``, ``runs`` (folder names), ``key``; for each
    ``TABLE_COLUMNS`` key ``k``: ``k`` (mean over seeds, None if unavailable), ``k_std`` (None
    for one seed) and ``k_values``; the same as ``val_k`` for the validation metrics; and
    ``per_class_dice`` (mean test DSC per foreground class; ``per_class_dice_values`` per seed).
    """
    from mls_tutorial.sweep import family

    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run_key({**run.config, "seed": 0}), []).append(run)
    rows = []
    for key, members in groups.items():
        members = sorted(members, key=lambda r: r.config["seed"])
        cfg = members[0].config
        row: dict[str, Any] = {
            "method": members[0].label,
            "family": family(cfg),
            "loss": cfg["loss"],
            "loss_kwargs": dict(cfg["loss_kwargs"]),
            "margin": members[0].margin,
            "temperature_scaling": cfg["temperature_scaling"],
            "iterations": cfg["iterations"],
            "select_metric": cfg["select_metric"],
            "seeds": [r.config["seed"] for r in members],
            "n_seeds": len(members),
            "runs": [r.name for r in members],
            "key": key,
        }
        for k in TABLE_COLUMNS:
            row[f"{k}_values"] = [r.metrics.get(k) for r in members]
            row[k], row[f"{k}_std"] = mean_std(row[f"{k}_values"])
        for k in VAL_COLUMNS:
            row[f"val_{k}_values"] = [(r.metrics.get("val") or {}).get(k) for r in members]
            row[f"val_{k}"], row[f"val_{k}_std"] = mean_std(row[f"val_{k}_values"])
        names = list((members[0].metrics.get("per_class") or {}).keys())
        row["per_class_dice_values"] = {
            n: [r.metrics["per_class"][n]["dice"] for r in members] for n in names
        }
        row["per_class_dice"] = {n: mean_std(v)[0] for n, v in row["per_class_dice_values"].items()}
        rows.append(row)
    return sorted(
        rows,
        key=lambda r: (
            r["temperature_scaling"] and r["loss"] == "ce",
            family_rank(r["family"]),
            r["margin"] or 0.0,
            sorted(r["loss_kwargs"].items()),
            r["temperature_scaling"],
        ),
    )


# ------------------------------------------------------------------ choose on validation


def _on_seeds(row: dict[str, Any], key: str, seeds: Sequence[int]) -> list[float | None]:
    by_seed = dict(zip(row["seeds"], row[f"{key}_values"], strict=True))
    return [by_seed.get(s) for s in seeds]


def _mean_on(row, key, seeds) -> float:
    mean = mean_std(_on_seeds(row, key, seeds))[0]
    return float("nan") if mean is None else mean


def choose_on_validation(
    rows: list[dict[str, Any]], dice_tolerance: float = 0.01, reference: str = "ce"
) -> list[dict[str, Any]]:
    """Per family, the config chosen by the rule of the module docstring (validation only).

    Returns one record per family: ``family``, ``chosen`` (its row), ``seeds`` (the shared
    seeds the choice used), ``report_seeds`` (every seed the chosen config shares with the
    reference: more seeds may be trained for the chosen configs alone), ``eligible`` (whether the chosen config met the DSC condition), ``reference_dice``
    and ``candidates`` (each config's ``method``, ``val_dice``, ``val_ece``, ``eligible``).
    """
    if not dice_tolerance >= 0:
        raise ValueError(f"dice_tolerance must be >= 0, got {dice_tolerance!r}")
    refs = [r for r in rows if r["family"] == reference]
    if len(refs) != 1:
        raise ValueError(
            f"choosing on validation needs exactly one {reference!r} config (the reference), "
            f"found {len(refs)}"
        )
    ref = refs[0]
    families: dict[str, list[dict]] = {}
    for row in rows:
        families.setdefault(row["family"], []).append(row)
    chosen = []
    for fam, members in families.items():
        seeds = sorted(set(ref["seeds"]).intersection(*(m["seeds"] for m in members)))
        if not seeds:
            raise ValueError(f"family {fam!r} shares no seed with {reference!r}")
        missing = [m["method"] for m in members if math.isnan(_mean_on(m, "val_dice", seeds))]
        if missing:
            raise ValueError(
                f"no validation metrics (metrics.json['val']) for {missing}: re-train them "
                "with this version, or report without --choose-on val"
            )
        ref_dice = _mean_on(ref, "val_dice", seeds)
        cands = [
            {
                "method": m["method"],
                "val_dice": _mean_on(m, "val_dice", seeds),
                "val_ece": _mean_on(m, "val_ece", seeds),
                "row": m,
            }
            for m in members
        ]
        for c in cands:
            c["eligible"] = c["val_dice"] >= ref_dice - dice_tolerance - 1e-12
        pool = [c for c in cands if c["eligible"]]
        if pool:
            best = min(pool, key=lambda c: (c["val_ece"], -c["val_dice"]))
        else:
            best = max(cands, key=lambda c: c["val_dice"])
        chosen.append(
            {
                "family": fam,
                "chosen": best["row"],
                "seeds": seeds,
                "report_seeds": sorted(set(ref["seeds"]) & set(best["row"]["seeds"])),
                "eligible": best["eligible"],
                "reference_dice": ref_dice,
                "candidates": [{k: v for k, v in c.items() if k != "row"} for c in cands],
            }
        )
    return chosen


def paired_difference(
    row: dict[str, Any], ref_row: dict[str, Any], key: str, seeds: Sequence[int] | None = None
) -> dict[str, Any]:
    """``row - ref_row`` for metric ``key`` seed by seed (seeds both have, or ``seeds``).

    Returns ``diffs``, ``seeds``, ``mean``, ``std`` (sample), ``n`` and ``n_better`` (seeds where
    the row is better: lower for ``LOWER_IS_BETTER`` keys, else higher).
    """
    if seeds is None:
        seeds = sorted(set(row["seeds"]) & set(ref_row["seeds"]))
    a, b = _on_seeds(row, key, seeds), _on_seeds(ref_row, key, seeds)
    pairs = [
        (s, float(x) - float(y))
        for s, x, y in zip(seeds, a, b, strict=True)
        if x is not None and y is not None and math.isfinite(float(x) - float(y))
    ]
    diffs = [d for _, d in pairs]
    mean, std = mean_std(diffs)
    base = key[4:] if key.startswith("val_") else key
    better = sum(d < 0 if base in LOWER_IS_BETTER else d > 0 for d in diffs)
    return {
        "seeds": [s for s, _ in pairs],
        "diffs": diffs,
        "mean": mean,
        "std": std,
        "n": len(diffs),
        "n_better": better,
    }


# -------------------------------------------------------------------------------- formats


def _cell(mean: float | None, std: float | None, key: str, sign: bool = False) -> str:
    if mean is None:
        return "-"
    digits = 2 if key in ("hd95", "temperature") else 3
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


def format_markdown(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A Markdown table of ``results_table`` rows (mean ± sample std over seeds)."""
    columns = columns or tuple(k for k in TABLE_COLUMNS if any(r.get(k) is not None for r in rows))
    head = ["method", "seeds", *(TABLE_COLUMNS[k] for k in columns)]
    body = []
    for r in rows:
        cells = [r["method"], str(r["n_seeds"]), *(_cell(r[k], r[f"{k}_std"], k) for k in columns)]
        body.append(cells)
    return markdown_table(head, body)


def grid_markdown(rows: list[dict[str, Any]], chosen: list[dict[str, Any]] | None = None) -> str:
    """Every config: validation DSC / ECE (what the rule reads) next to the test numbers."""
    picked = {c["chosen"]["key"] for c in chosen or []}
    head = ["family", "config", "seeds", *VAL_COLUMNS.values(), "DSC", "ECE (fg)", "conf - acc"]
    body = []
    for r in rows:
        mark = " **(chosen)**" if r["key"] in picked else ""
        cells = [r["family"], r["method"] + mark, str(r["n_seeds"])]
        cells += [_cell(r[f"val_{k}"], r[f"val_{k}_std"], k) for k in VAL_COLUMNS]
        cells += [_cell(r[k], r[f"{k}_std"], k) for k in ("dice", "ece", "gap")]
        body.append(cells)
    return markdown_table(head, body)


def chosen_markdown(
    chosen: list[dict[str, Any]],
    reference: str = "ce",
    extra_rows: Sequence[dict[str, Any]] = (),
) -> str:
    """The chosen config of each family: test mean ± std over its ``report_seeds``, per-class
    DSC, and the paired difference to the reference (CE) with the seeds on which it holds."""
    ref = next(c["chosen"] for c in chosen if c["family"] == reference)
    classes = list(ref["per_class_dice"])
    cols = ("dice", "dice_bayes", "hd95", "ece", "ece_true", "tce", "gap")
    head = ["family", "chosen (on val)", "seeds", *(TABLE_COLUMNS[k] for k in cols)]
    head += [f"DSC {n.split()[0]}" for n in classes]
    head += ["ΔECE vs CE (lower on)", "ΔDSC vs CE (higher on)"]
    body = []
    for c in chosen:
        r, seeds = c["chosen"], c.get("report_seeds", c["seeds"])
        cells = [c["family"], r["method"] + ("" if c["eligible"] else " (none within 1 pt)")]
        cells.append(str(len(seeds)))
        cells += [_cell(*mean_std(_on_seeds(r, k, seeds)), k) for k in cols]
        cells += [_fmt(r["per_class_dice"].get(n)) for n in classes]
        for key in ("ece", "dice"):
            if c["family"] == reference:
                cells.append("-")
                continue
            d = paired_difference(r, ref, key, seeds)
            cells.append(f"{_cell(d['mean'], d['std'], key, sign=True)} ({d['n_better']}/{d['n']})")
        body.append(cells)
    for r in extra_rows:
        cells = [r["family"], r["method"], "-"]
        cells += [_fmt(r.get(k), 2 if k == "hd95" else 3) for k in cols]
        cells += [_fmt(r.get("per_class_dice", {}).get(n)) for n in classes]
        cells += ["-", "-"]
        body.append(cells)
    return markdown_table(head, body)


def per_class_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run (no averaging over seeds): ``label``, ``dice``, ``ece``, ``gap`` and, per
    class name, ``per_class_dice``, ``per_class_hd95`` and ``per_class_ece``: the classwise ECE
    of class k, ``s_k`` binned against ``1[y = k]`` over the foreground voxels (CECE is their
    mean over all K classes)."""
    rows = []
    for run in runs:
        m = run.metrics
        names = m.get("data", {}).get("class_names")
        ece_k = m["calibration"]["foreground"]["ece_per_class"]
        if not names or len(names) != len(ece_k):
            raise ValueError(
                f"{run.label}: metrics.json lacks class names for its {len(ece_k)} classes"
            )
        rows.append(
            {
                "label": run.label,
                **{k: m[k] for k in ("dice", "ece", "gap")},
                "per_class_dice": {k: v["dice"] for k, v in m["per_class"].items()},
                "per_class_hd95": {k: v["hd95"] for k, v in m["per_class"].items()},
                "per_class_ece": dict(zip(names, ece_k, strict=True)),
            }
        )
    return rows


def per_class_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of :func:`per_class_rows`: DSC, then classwise ECE, per foreground class."""
    if not rows:
        raise ValueError("per_class_markdown: no rows")
    fg = list(rows[0]["per_class_dice"])
    head = ["method", "DSC", "ECE (fg)", "conf - acc"]
    head += [f"DSC {n}" for n in fg] + [f"classwise ECE {n}" for n in fg]
    body = []
    for r in rows:
        cells = [r["label"], _fmt(r["dice"]), _fmt(r["ece"]), f"{r['gap']:+.3f}"]
        cells += [_fmt(r["per_class_dice"][n]) for n in fg]
        cells += [_fmt(r["per_class_ece"][n]) for n in fg]
        body.append(cells)
    return markdown_table(head, body)


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def format_csv(rows: list[dict[str, Any]]) -> str:
    """CSV of ``results_table`` rows, one line per run (config and seed): every value kept."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [*TABLE_COLUMNS, *(f"val_{k}" for k in VAL_COLUMNS)]
    classes = list(dict.fromkeys(n for r in rows for n in r.get("per_class_dice_values", {})))
    head = ["method", "family", "loss", "loss_kwargs", "seed", "run", *keys]
    writer.writerow(head + [f"dice {n}" for n in classes])
    for r in rows:
        per_class = r.get("per_class_dice_values", {})
        for i, seed in enumerate(r["seeds"]):
            fixed = [r["method"], r["family"], r["loss"], _kwargs_text(r), seed, r["runs"][i]]
            dice_k = [per_class[n][i] if n in per_class else None for n in classes]
            writer.writerow(fixed + [r[f"{k}_values"][i] for k in keys] + dice_k)
    return out.getvalue()


def _kwargs_text(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(row["loss_kwargs"].items()) if k != "validate")


def write_results(rows: list[dict[str, Any]], out_dir: str | Path, name: str = "results") -> dict:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.json`` atomically; returns their paths."""
    from mls_tutorial.files import atomic_write

    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("md", "csv", "json")}
    atomic_write(paths["md"], lambda f: f.write(format_markdown(rows).encode()))
    atomic_write(paths["csv"], lambda f: f.write(format_csv(rows).encode()))
    write_json(rows, paths["json"])
    return paths
