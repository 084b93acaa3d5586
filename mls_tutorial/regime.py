"""The regime study: when does the margin help? Model capacity x training length.

A **cell** is one (U-Net preset, training iterations). In each cell every loss family is
trained on two disjoint sets of seeds:

- ``choose_seeds``: the family's knob is chosen on **validation** numbers of these seeds only,
  by the rule of ``mls-tutorial report --choose-on val`` (``results.choose_on_validation``);
- ``report_seeds``: the **test** numbers reported, for the knob chosen in the default regime
  (``default``) and the knob re-chosen in this cell (``chosen``), each with its paired
  difference to CE seed by seed and the number of seeds on which it beats CE.

Per run (``run_record``): the test metrics, the validation metrics the rule reads, how far the
run went into memorisation (``history_divergence``) and its logit distances at the end of
training (``measure_distances``: exact mean and share above the margin, on the test volumes and
on the training images, kept in the run folder's ``distances.json``).

Every cell is complete or has holes, never a substitute: a knob re-chosen in a cell but not
trained on the report seeds, or a family never re-chosen there, is listed by ``cell_holes``
and left out of ``cell_ranking`` (which ranks at the re-chosen or at the default knobs).

``regime_study(runs, ...)`` -> the dict written as ``regime.json`` (protocol, cells, findings,
CE's distance histograms); ``regime_markdown`` / ``records_csv`` its tables;
``finding_paragraph`` the finding in one paragraph, every number read from the dict and every
trend with the number of seeds that show it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mls_tutorial.results import (
    LOWER_IS_BETTER,
    choose_on_validation,
    paired_difference,
    results_table,
)
from mls_tutorial.runs import Run, run_key

DISTANCES_FILE = "distances.json"
#: the families of the study, in the order of the tables (CE first, CE + TS last)
FAMILIES = ("ce", "ls", "ecp", "mbls", "cals", "ce_ts")
LABELS = {"ce": "CE", "ls": "LS", "ecp": "ECP", "mbls": "MbLS", "cals": "CALS", "ce_ts": "CE + TS"}
#: per-run numbers averaged over seeds in each cell (the paired ones first)
PAIRED = ("ece", "gap", "dice", "tce", "dice_bayes")
CELL_METRICS = (
    *PAIRED,
    "hd95",
    "val_dice",
    "val_ece",
    "val_nll_rise",
    "train_loss_fall",
    "test_mean_distance",
    "test_share_above_margin",
    "train_mean_distance",
    "train_share_above_margin",
    "seconds",
)


# ------------------------------------------------------------------------------ one run


def history_divergence(history: Mapping[str, Any]) -> dict[str, float | None]:
    """How far training went past its best validation NLL (memorisation), from ``history``.

    With ``nll`` the foreground NLL of the validation volumes (``val_fg_nll``) and ``loss`` the
    training loss, each read as the mean over the ``w`` iterations up to a validation
    (``w`` = the gap between validations)::

        val_nll_rise    = nll(last) - min nll          (>= 0: how far validation got worse)
        train_loss_fall = loss(at min nll) - loss(last) (> 0: training kept improving)

    Both positive: the train and validation losses diverged. None without validations.
    """
    its, nll = list(history.get("val_iteration") or []), list(history.get("val_fg_nll") or [])
    out = dict.fromkeys(
        ("val_nll_min", "val_nll_min_iteration", "val_nll_last", "val_nll_rise"), None
    )
    out.update(train_loss_at_min=None, train_loss_last=None, train_loss_fall=None)
    pairs = [(i, v) for i, v in zip(its, nll, strict=False) if v is not None and math.isfinite(v)]
    if not pairs:
        return out
    best_it, best = min(pairs, key=lambda p: (p[1], p[0]))
    last_it, last = pairs[-1]
    out.update(
        val_nll_min=best, val_nll_min_iteration=best_it, val_nll_last=last, val_nll_rise=last - best
    )
    loss = dict(zip(history.get("iteration") or [], history.get("loss") or [], strict=False))
    w = its[1] - its[0] if len(its) > 1 else max(1, its[0])

    def window(it: int) -> float | None:
        values = [loss[i] for i in range(it - w + 1, it + 1) if i in loss]
        return float(np.mean(values)) if values else None

    at_min, at_last = window(best_it), window(last_it)
    out.update(train_loss_at_min=at_min, train_loss_last=at_last)
    if at_min is not None and at_last is not None:
        out["train_loss_fall"] = at_min - at_last
    return out


def measure_distances(
    run: Run, data, *, device=None, margins: Sequence[float] = (5.0,), batch_size: int = 32
) -> dict[str, Any]:
    """Exact logit-distance summary of ``run``'s last weights on the test volumes and on the
    training images (``metrics.distance_summary``); written to ``<run>/distances.json``."""
    import torch

    from mls_tutorial.device import pick_device
    from mls_tutorial.metrics import distance_summary
    from mls_tutorial.train.checkpoint import write_json
    from mls_tutorial.train.evaluation import predict_logits

    if run.config.get("temperature_scaling"):
        raise ValueError("measure_distances: a temperature-scaled run has its base run's logits")
    dev = pick_device(device)
    model = run.load_model(dev, which="last")
    amp = run.config["amp"]

    def logits(images: torch.Tensor):
        return predict_logits(model, images, device=dev, batch_size=batch_size, amp=amp)

    train_images = data.train.images
    out = {
        "margins": [float(m) for m in margins],
        "test": distance_summary((logits(v.image) for v in data.test), margins),
        "train": distance_summary(logits(train_images), margins),
    }
    for part in ("test", "train"):  # JSON keys are strings
        out[part]["share_above"] = {f"{m:g}": v for m, v in out[part]["share_above"].items()}
    write_json(out, run.path / DISTANCES_FILE)
    return out


def read_distances(run: Run) -> dict[str, Any] | None:
    """``<run>/distances.json`` (``measure_distances``), or None when absent."""
    from mls_tutorial.train.checkpoint import read_json

    path = run.path / DISTANCES_FILE
    return read_json(path) if path.is_file() else None


def knob_text(config: Mapping[str, Any]) -> str:
    """The knobs of a run's loss, e.g. ``alpha=0.03`` or ``margin=5``; ``-`` for none."""
    from mls_tutorial.runs import KNOBS

    kw = config.get("loss_kwargs", {})
    knobs = [f"{k}={float(kw[k]):g}" for k in KNOBS.get(config["loss"], ()) if k in kw]
    return " ".join(knobs) or "-"


def run_record(run: Run, margin: float = 5.0) -> dict[str, Any]:
    """One flat row per run: cell, family, knobs, seed, test and validation metrics,
    ``history_divergence`` and the distances of ``distances.json`` at ``margin``."""
    from mls_tutorial.sweep import family

    cfg, m = run.config, run.metrics
    val = m.get("val") or {}
    rec: dict[str, Any] = {
        "preset": cfg["preset"],
        "iterations": cfg["iterations"],
        "family": family(cfg),
        "method": run.label,
        "knobs": knob_text(cfg),
        "seed": cfg["seed"],
        "run": run.name,
        "key": run_key({**cfg, "seed": 0}),
    }
    for key in (*PAIRED, "hd95", "ece_true", "temperature"):
        rec[key] = m.get(key)
    for key in ("dice", "ece", "gap"):
        rec[f"val_{key}"] = val.get(key)
    div = history_divergence(run.history)
    rec.update({k: div[k] for k in ("val_nll_rise", "train_loss_fall", "val_nll_min_iteration")})
    rec["seconds"] = run.history.get("seconds")
    dist = None if cfg.get("temperature_scaling") else read_distances(run)
    for part in ("test", "train"):
        summary = (dist or {}).get(part) or {}
        rec[f"{part}_mean_distance"] = summary.get("mean")
        rec[f"{part}_share_above_margin"] = (summary.get("share_above") or {}).get(f"{margin:g}")
    return rec


# ------------------------------------------------------------------------------- cells


def _stats(values: Sequence[Any]) -> tuple[float | None, float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean = float(np.mean(finite)) if finite else None
    return mean, (float(np.std(finite, ddof=1)) if len(finite) > 1 else None)


def _matches(loss_kwargs: Mapping[str, Any], knobs: Mapping[str, Any]) -> bool:
    return all(
        k in loss_kwargs and math.isclose(float(loss_kwargs[k]), float(v)) for k, v in knobs.items()
    )


def _row(records: Sequence[dict], family: str, loss_kwargs: dict) -> dict[str, Any]:
    """Mean, std and per-seed values of ``CELL_METRICS`` over one config's records."""
    records = sorted(records, key=lambda r: r["seed"])
    first = records[0]
    row: dict[str, Any] = {
        "family": family,
        "method": first["method"],
        "knobs": first["knobs"],
        "key": first["key"],
        "loss_kwargs": loss_kwargs,
        "seeds": [r["seed"] for r in records],
        "which": [],
    }
    for k in CELL_METRICS:
        row[f"{k}_values"] = [r.get(k) for r in records]
        row[k], row[f"{k}_std"] = _stats(row[f"{k}_values"])
    return row


def regime_cells(
    runs: Sequence[Run],
    records: Sequence[dict],
    *,
    choose_seeds: Sequence[int],
    report_seeds: Sequence[int],
    defaults: Mapping[str, Mapping[str, Any]],
    dice_tolerance: float = 0.01,
) -> list[dict[str, Any]]:
    """One dict per (preset, iterations) cell present in ``runs`` (see the module docstring).

    ``defaults``: ``{family: {knob: value}}``, the configs chosen in the default regime.
    ``records``: ``run_record`` of each run (same order). A cell lists what it lacks in
    ``missing`` (no CE on the choosing seeds: nothing re-chosen; a config without report seeds).
    """
    if set(choose_seeds) & set(report_seeds):
        raise ValueError(
            f"choose_seeds {sorted(choose_seeds)} and report_seeds {sorted(report_seeds)} "
            "overlap: the reported seeds must never have been used for choosing"
        )
    if len(runs) != len(records):
        raise ValueError(f"{len(runs)} runs but {len(records)} records")
    by_cell: dict[tuple, list[int]] = {}
    for i, rec in enumerate(records):
        by_cell.setdefault((rec["preset"], rec["iterations"]), []).append(i)
    cells = []
    for (preset, iterations), idx in sorted(by_cell.items(), key=lambda kv: _cell_order(kv[0])):
        cell_runs = [runs[i] for i in idx]
        cell_recs = [records[i] for i in idx]
        cells.append(
            _cell(
                preset,
                iterations,
                cell_runs,
                cell_recs,
                choose_seeds,
                report_seeds,
                defaults,
                dice_tolerance,
            )
        )
    return cells


def _cell_order(cell: tuple[str, int]) -> tuple:
    from mls_tutorial.models import PRESETS

    order = list(PRESETS)
    return (order.index(cell[0]) if cell[0] in order else len(order), cell[0], cell[1])


def choose_per_family(
    rows: Sequence[dict], dice_tolerance: float = 0.01
) -> tuple[dict[str, dict], list[str]]:
    """``results.choose_on_validation`` family by family (each against CE alone), so that one
    family's gap (e.g. no seed shared with CE) leaves the others' choice intact.

    Returns ``({family: choice record}, [problems])``.
    """
    ce = [r for r in rows if r["family"] == "ce"]
    if len(ce) != 1:
        return {}, [f"{len(ce)} CE configs on the choosing seeds: no knob re-chosen"]
    picked, problems = {}, []
    for fam in dict.fromkeys(r["family"] for r in rows):
        members = [r for r in rows if r["family"] == fam]
        try:
            (rec,) = [
                c
                for c in choose_on_validation(
                    ce + (members if fam != "ce" else []), dice_tolerance=dice_tolerance
                )
                if c["family"] == fam
            ]
        except ValueError as exc:
            problems.append(f"{LABELS.get(fam, fam)} not re-chosen: {exc}")
            continue
        picked[fam] = rec
    return picked, problems


def _cell(preset, iterations, runs, records, choose_seeds, report_seeds, defaults, tol) -> dict:
    missing: list[str] = []
    choice: dict[str, dict] = {}
    choosing = [r for r in runs if r.config["seed"] in choose_seeds]
    picked, problems = choose_per_family(results_table(choosing) if choosing else [], tol)
    missing += problems
    for fam, c in picked.items():
        best = c["chosen"]
        choice[fam] = {
            "chosen": best["method"],
            "key": best["key"],
            "loss_kwargs": {k: v for k, v in best["loss_kwargs"].items() if k != "validate"},
            "eligible": c["eligible"],
            "seeds": c["seeds"],
            "candidates": c["candidates"],
        }
    reported = [r for r in records if r["seed"] in report_seeds]
    groups: dict[str, list[dict]] = {}
    for rec in reported:
        groups.setdefault(rec["key"], []).append(rec)
    kwargs_of = {run_key({**r.config, "seed": 0}): r.config["loss_kwargs"] for r in runs}
    out_rows: list[dict] = []

    def add(fam: str, key: str | None, which: str) -> None:
        if key is None or key not in groups:
            return  # a hole: cell_holes names it
        for row in out_rows:
            if row["key"] == key:
                row["which"].append(which)
                return
        kw = {k: v for k, v in kwargs_of[key].items() if k != "validate"}
        row = _row(groups[key], fam, kw)
        row["which"].append(which)
        out_rows.append(row)

    def key_where(fam: str, knobs: Mapping) -> str | None:
        keys = {r["key"] for r in records if r["family"] == fam}
        hits = [k for k in keys if _matches(kwargs_of[k], knobs)]
        return hits[0] if len(hits) == 1 else None

    for fam in FAMILIES:
        if fam in ("ce", "ce_ts"):
            add(fam, key_where(fam, {}), "reference" if fam == "ce" else "default")
            if fam in choice:
                add(fam, choice[fam]["key"], "chosen")
            continue
        knobs = defaults.get(fam)
        if knobs is not None:
            add(fam, key_where(fam, knobs), "default")
        if fam in choice:
            add(fam, choice[fam]["key"], "chosen")
    ce = next((r for r in out_rows if r["family"] == "ce"), None)
    for row in out_rows:
        row["vs_ce"] = {}
        if ce is None or row is ce:
            continue
        for k in PAIRED:
            d = paired_difference(row, ce, k)
            row["vs_ce"][k] = {key: d[key] for key in ("mean", "std", "n", "n_better", "diffs")}
            row["vs_ce"][k]["seeds"] = d["seeds"]
    cell = {
        "preset": preset,
        "iterations": iterations,
        "n_runs": len(runs),
        "choice": choice,
        "rows": out_rows,
        "defaults": {f: dict(k) for f, k in defaults.items()},
    }
    cell["missing"] = list(dict.fromkeys(missing + cell_holes(cell)))
    return cell


def cell_holes(cell: Mapping) -> list[str]:
    """Every hole of ``cell``: CE or CE + TS without report runs; per training-loss family, a
    knob never re-chosen (no run on the choosing seeds) or a chosen or default knob without
    runs on the report seeds. A hole is listed, never filled with another knob."""
    holes = []
    for fam, which in (("ce", "reference"), ("ce_ts", "default")):
        if cell_row(cell, fam, which) is None:
            holes.append(f"{LABELS[fam]}: no run on the report seeds")
    defaults = cell.get("defaults") or {}
    for fam in FAMILIES[1:-1]:
        if fam in defaults and cell_row(cell, fam, "default") is None:
            holes.append(
                f"default {LABELS[fam]} {_knob_str(defaults[fam])}: no run on the report seeds"
            )
        choice = cell["choice"].get(fam)
        if choice is None:
            holes.append(
                f"{LABELS[fam]}: no knob re-chosen (no runs of its grid on the choosing seeds)"
            )
        elif cell_row(cell, fam, "chosen") is None:
            holes.append(
                f"chosen {LABELS[fam]} {_knob_str(choice['loss_kwargs'])}: no run on the report seeds"
            )
    return holes


def _knob_str(knobs: Mapping) -> str:
    """``margin=3 alpha=0.1``: the sweepable knobs (``runs.KNOBS``) among ``knobs``."""
    from mls_tutorial.runs import KNOBS

    names = {k for ks in KNOBS.values() for k in ks}
    return " ".join(f"{k}={float(v):g}" for k, v in knobs.items() if k in names)


# ------------------------------------------------------------------------------ findings


def cell_row(cell: Mapping, family: str, which: str = "chosen") -> dict | None:
    """The row of ``family`` in ``cell`` that is ``which`` (``chosen``, ``default``,
    ``reference``), or None."""
    for row in cell["rows"]:
        if row["family"] == family and which in row["which"]:
            return row
    return None


def regime_findings(cells: Sequence[Mapping], which: str = "chosen") -> dict[str, Any]:
    """Per preset and length, CE's regime and each family's advantage over CE.

    ``{preset: {"lengths": [...], "ce": {"<iterations>": {ece, gap, dice, val_nll_rise,
    test_mean_distance, train_mean_distance, train_share_above_margin}}, "advantage": {family:
    {"<iterations>": {delta_ece, delta_ece_std, relative (delta / CE's mean ECE on the same seeds),
    n_better, n, delta_dice, dice_n_better, method}}}}}``, for the ``which`` config of each
    family (``chosen``: re-chosen in the cell). Lengths are string keys, as in JSON.
    """
    out: dict[str, Any] = {}
    for cell in cells:
        p, n = cell["preset"], cell["iterations"]
        entry = out.setdefault(p, {"lengths": [], "ce": {}, "advantage": {}})
        ce = cell_row(cell, "ce", "reference")
        if ce is None:
            continue
        entry["lengths"].append(n)
        entry["ce"][str(n)] = {
            k: ce.get(k)
            for k in (
                "ece",
                "gap",
                "dice",
                "val_nll_rise",
                "train_loss_fall",
                "test_mean_distance",
                "train_mean_distance",
                "test_share_above_margin",
                "train_share_above_margin",
            )
        }
        entry["ce"][str(n)]["seeds"] = ce["seeds"]
        for fam in FAMILIES[1:]:
            row = cell_row(cell, fam, which) or (
                cell_row(cell, fam, "default") if fam == "ce_ts" else None
            )
            if row is None or "ece" not in row["vs_ce"]:
                continue
            d, dd = row["vs_ce"]["ece"], row["vs_ce"]["dice"]
            base = _stats(
                [v for s, v in zip(ce["seeds"], ce["ece_values"], strict=True) if s in d["seeds"]]
            )[0]
            entry["advantage"].setdefault(fam, {})[str(n)] = {
                "method": row["method"],
                "delta_ece": d["mean"],
                "delta_ece_std": d["std"],
                "relative": None if d["mean"] is None or not base else d["mean"] / base,
                "n_better": d["n_better"],
                "n": d["n"],
                "delta_gap": row["vs_ce"]["gap"]["mean"],
                "delta_dice": dd["mean"],
                "dice_n_better": dd["n_better"],
                "by_seed": dict(zip(map(str, d["seeds"]), d["diffs"], strict=True)),
                "ce_by_seed": {
                    str(s): v for s, v in zip(ce["seeds"], ce["ece_values"], strict=True)
                },
            }
    for entry in out.values():
        entry["lengths"] = sorted(entry["lengths"])
        entry["trend"] = _trends(entry)
    return out


def _trends(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Shortest vs longest length, seed by seed: how each family's ΔECE vs CE changed
    (``change`` < 0: its advantage grew on that seed), and how CE's own ECE changed."""
    out: dict[str, Any] = {}
    for fam, per in entry["advantage"].items():
        lengths = [n for n in entry["lengths"] if str(n) in per]
        if len(lengths) < 2:
            continue
        a, b = per[str(lengths[0])], per[str(lengths[-1])]
        seeds = sorted(set(a["by_seed"]) & set(b["by_seed"]), key=int)
        change = [b["by_seed"][s] - a["by_seed"][s] for s in seeds]
        ce_change = [b["ce_by_seed"][s] - a["ce_by_seed"][s] for s in seeds]
        out[fam] = {
            "short": lengths[0],
            "long": lengths[-1],
            "seeds": [int(s) for s in seeds],
            "change": change,
            "mean_change": _stats(change)[0],
            "n_grew": sum(c < 0 for c in change),
            "n_shrank": sum(c > 0 for c in change),
            "ce_change": ce_change,
            "ce_n_up": sum(c > 0 for c in ce_change),
        }
    return out


def paired_by_seed(cells: Sequence[Mapping], family: str, key: str = "ece") -> list[dict]:
    """The per-seed paired differences to CE behind every claim: one entry per cell and
    reported config of ``family`` (``preset``, ``iterations``, ``method``, ``which``,
    ``seeds``, ``diffs``, ``ce`` (CE's values on those seeds), ``mean``, ``n_better``)."""
    out = []
    for cell in cells:
        ce = cell_row(cell, "ce", "reference")
        for row in cell["rows"]:
            if row["family"] != family or key not in row["vs_ce"]:
                continue
            d = row["vs_ce"][key]
            ce_by_seed = dict(zip(ce["seeds"], ce[f"{key}_values"], strict=True))
            out.append(
                {
                    "preset": cell["preset"],
                    "iterations": cell["iterations"],
                    "method": row["method"],
                    "which": list(row["which"]),
                    "seeds": d["seeds"],
                    "diffs": d["diffs"],
                    "ce": [ce_by_seed[s] for s in d["seeds"]],
                    "mean": d["mean"],
                    "n_better": d["n_better"],
                }
            )
    return out


def regime_study(
    runs: Sequence[Run],
    *,
    choose_seeds: Sequence[int],
    report_seeds: Sequence[int],
    defaults: Mapping[str, Mapping[str, Any]],
    margin: float = 5.0,
    dice_tolerance: float = 0.01,
    protocol: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(study, records)``: the dict written as ``regime.json`` and one record per run."""
    runs = list(runs)
    records = [run_record(r, margin) for r in runs]
    cells = regime_cells(
        runs,
        records,
        choose_seeds=choose_seeds,
        report_seeds=report_seeds,
        defaults=defaults,
        dice_tolerance=dice_tolerance,
    )
    histograms = [
        {
            "preset": r.config["preset"],
            "iterations": r.config["iterations"],
            "seed": r.config["seed"],
            "method": r.label,
            "histogram": r.metrics["histogram"],
        }
        for r in runs
        if r.config["loss"] == "ce" and not r.config["temperature_scaling"]
    ]
    study = {
        "protocol": {
            **dict(protocol or {}),
            "choose_seeds": sorted(choose_seeds),
            "report_seeds": sorted(report_seeds),
            "defaults": {k: dict(v) for k, v in defaults.items()},
            "margin": float(margin),
            "dice_tolerance": dice_tolerance,
            "n_runs": len(runs),
        },
        "cells": cells,
        "findings": {
            "chosen": regime_findings(cells, "chosen"),
            "default": regime_findings(cells, "default"),
        },
        "histograms": histograms,
    }
    return study, records


# ------------------------------------------------------------------------------ formats

RECORD_COLUMNS = (
    "preset",
    "iterations",
    "family",
    "method",
    "knobs",
    "seed",
    "role",
    "dice",
    "dice_bayes",
    "hd95",
    "ece",
    "ece_true",
    "tce",
    "gap",
    "temperature",
    "val_dice",
    "val_ece",
    "val_gap",
    "val_nll_rise",
    "train_loss_fall",
    "val_nll_min_iteration",
    "test_mean_distance",
    "test_share_above_margin",
    "train_mean_distance",
    "train_share_above_margin",
    "seconds",
    "run",
)


def records_csv(
    records: Sequence[Mapping], choose_seeds: Sequence[int], report_seeds: Sequence[int]
) -> str:
    """CSV, one line per run; ``role`` says whether its seed chooses or reports."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for rec in sorted(
        records,
        key=lambda r: (
            _cell_order((r["preset"], r["iterations"])),
            r["family"],
            r["key"],
            r["seed"],
        ),
    ):
        role = (
            "choose"
            if rec["seed"] in choose_seeds
            else "report"
            if rec["seed"] in report_seeds
            else "-"
        )
        writer.writerow([role if c == "role" else rec.get(c) for c in RECORD_COLUMNS])
    return out.getvalue()


def _cell_text(mean, std, digits=3, sign=False) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


def _paired_text(d: Mapping | None, key: str) -> str:
    if not d or d.get("mean") is None:
        return "-"
    better = "lower" if key in LOWER_IS_BETTER else "higher"
    return f"{_cell_text(d['mean'], d['std'], sign=True)} ({better} on {d['n_better']}/{d['n']})"


def cell_markdown(cell: Mapping) -> str:
    """One cell's table: every reported row, its test numbers over the report seeds and the
    paired difference to CE."""
    head = [
        "family",
        "config",
        "as",
        "seeds",
        "DSC",
        "DSC vs argmax q",
        "ECE (fg)",
        "TCE (fg)",
        "conf - acc (fg)",
        "ΔECE vs CE",
        "Δgap vs CE",
        "ΔDSC vs CE",
        "val NLL rise",
        "mean d (test / train)",
        "share d > m (train)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in cell["rows"]:
        v = row["vs_ce"]
        cells = [
            LABELS.get(row["family"], row["family"]),
            row["method"],
            ", ".join(row["which"]),
            str(len(row["seeds"])),
            _cell_text(row["dice"], row["dice_std"]),
            _cell_text(row["dice_bayes"], row["dice_bayes_std"]),
            _cell_text(row["ece"], row["ece_std"]),
            _cell_text(row["tce"], row["tce_std"]),
            _cell_text(row["gap"], row["gap_std"], sign=True),
            _paired_text(v.get("ece"), "ece"),
            "-" if "gap" not in v else _cell_text(v["gap"]["mean"], v["gap"]["std"], sign=True),
            _paired_text(v.get("dice"), "dice"),
            _cell_text(row["val_nll_rise"], None),
            f"{_cell_text(row['test_mean_distance'], None, 2)} / "
            f"{_cell_text(row['train_mean_distance'], None, 2)}",
            _cell_text(row["train_share_above_margin"], None),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def choice_markdown(cells: Sequence[Mapping]) -> str:
    """What the rule chose in each cell (validation numbers of the choosing seeds)."""
    fams = [f for f in FAMILIES if f not in ("ce", "ce_ts")]
    head = ["preset", "iterations", *(f"{LABELS[f]} (val ECE)" for f in fams)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for cell in cells:
        cells_ = [cell["preset"], str(cell["iterations"])]
        for f in fams:
            c = cell["choice"].get(f)
            if c is None:
                cells_.append("-")
                continue
            val = next((x["val_ece"] for x in c["candidates"] if x["method"] == c["chosen"]), None)
            flag = "" if c["eligible"] else " (none within 1 pt)"
            cells_.append(f"{c['chosen']}{flag} ({_cell_text(val, None)})")
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines) + "\n"


def trend_markdown(findings: Mapping[str, Any]) -> str:
    """CE's regime and each family's paired ΔECE vs CE (relative, seeds better) per length."""
    head = ["preset", "iterations", "CE ECE", "CE gap", "CE val NLL rise", "CE mean d (train)"]
    fams = [f for f in FAMILIES[1:]]
    head += [f"{LABELS[f]} ΔECE" for f in fams]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for preset, entry in findings.items():
        for n in entry["lengths"]:
            ce = entry["ce"][str(n)]
            cells = [
                preset,
                str(n),
                _cell_text(ce["ece"], None),
                _cell_text(ce["gap"], None, sign=True),
                _cell_text(ce["val_nll_rise"], None),
                _cell_text(ce["train_mean_distance"], None, 2),
            ]
            for f in fams:
                a = entry["advantage"].get(f, {}).get(str(n))
                if a is None or a["delta_ece"] is None:
                    cells.append("-")
                    continue
                rel = "" if a["relative"] is None else f", {100 * a['relative']:+.0f}%"
                cells.append(f"{a['delta_ece']:+.3f}{rel} ({a['n_better']}/{a['n']})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def regime_markdown(study: Mapping[str, Any]) -> str:
    """The tables of ``regime.md``: trend (chosen and default knobs), the choices, each cell."""
    parts = [
        "## The margin's advantage against the regime (knobs re-chosen in each cell)\n",
        "Paired ΔECE = method − CE on the same report seed (mean; relative to CE's mean ECE; "
        "seeds on which the method's ECE is lower / seeds).\n",
        trend_markdown(study["findings"]["chosen"]),
        "\n## The same with the knobs chosen in the default regime (docs/evidence/chosen.json)\n",
        trend_markdown(study["findings"]["default"]),
        "\n## What the rule chose in each cell (validation, choosing seeds)\n",
        choice_markdown(study["cells"]),
    ]
    for cell in study["cells"]:
        parts.append(f"\n## {cell['preset']}, {cell['iterations']} iterations\n")
        parts.append(cell_markdown(cell))
        if cell["missing"]:
            parts.append("\nMissing: " + "; ".join(cell["missing"]) + ".\n")
    return "\n".join(parts)


def cell_ranking(cell: Mapping, which: str = "chosen") -> list[tuple[float, str, str]]:
    """The training-loss families of ``cell`` ranked by mean test ECE at their ``which`` knob
    (``chosen``: re-chosen in the cell; ``default``: the default regime's): ``[(ece, family,
    method)]``, lowest first. A family whose ``which`` knob has no report runs is a hole
    (``ranking_holes``), not ranked at another knob; CE + TS is not a training loss."""
    ranks = []
    for fam in FAMILIES[:-1]:
        row = cell_row(cell, fam, "reference" if fam == "ce" else which)
        if row is not None and row.get("ece") is not None:
            ranks.append((row["ece"], fam, row["method"]))
    return sorted(ranks)


def ranking_holes(cell: Mapping, which: str = "chosen") -> list[str]:
    """The training-loss families left out of ``cell_ranking(cell, which)``."""
    ranked = {f for _, f, _ in cell_ranking(cell, which)}
    return [f for f in FAMILIES[:-1] if f not in ranked]


def seeds_lower(cell: Mapping, a: str, b: str, which: str = "chosen") -> tuple[int, int]:
    """On how many report seeds family ``a``'s ECE is below family ``b``'s (``which`` knobs;
    CE is its reference row): ``(k, n)`` over the seeds both have."""

    def by_seed(fam):
        row = cell_row(cell, fam, "reference" if fam == "ce" else which)
        return {} if row is None else dict(zip(row["seeds"], row["ece_values"], strict=True))

    ea, eb = by_seed(a), by_seed(b)
    seeds = [s for s in ea if s in eb and ea[s] is not None and eb[s] is not None]
    return sum(ea[s] < eb[s] for s in seeds), len(seeds)


def unreported_choices(cell: Mapping) -> list[str]:
    """Families whose knob re-chosen in ``cell`` has no run on the report seeds, or that were
    never re-chosen there (holes of the re-chosen ranking)."""
    return [f for f in ranking_holes(cell, "chosen") if f != "ce"]


def finding_paragraph(study: Mapping[str, Any], family: str = "mbls") -> str:
    """The finding in one paragraph, every number read from ``study`` (``regime.json``), every
    trend with the number of seeds that show it.

    (1) Training length, per preset with two lengths: CE's ECE, ``family``'s paired ΔECE vs CE
    at the default knob (the same config at both lengths) and at the knob re-chosen in each
    cell, and on how many seeds the advantage grew ("grows" / "shrinks" only when every seed
    agrees). (2) Capacity, per length with several presets, at the default knob: the relative
    change in the means, CE's spread over the seeds (which the relative number divides by), and
    on how many seeds the per-seed relative change grows from preset to preset. (3) Rankings of
    the training losses over complete methods only (``cell_ranking``; holes named), at the
    re-chosen and at the default knobs, with the leader's margin seed by seed and CE + TS.
    """
    sentences = [
        *_length_sentences(study, family),
        *_capacity_sentences(study, family),
        *_ranking_sentences(study, family),
    ]
    if not sentences:
        return f"The study holds no {LABELS[family]} run to compare with CE."
    return ". ".join(x[0].upper() + x[1:] for x in sentences) + "."


def _verdict(trend: Mapping[str, Any]) -> str:
    """ "it grows" / "it shrinks" only when every seed agrees."""
    n = len(trend["seeds"])
    if trend["n_grew"] == n:
        return "it grows"
    if trend.get("n_shrank", n - trend["n_grew"]) == n:
        return "it shrinks"
    return "no consistent change"


def _length_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, out = LABELS[family], []
    chosen, default = study["findings"]["chosen"], study["findings"]["default"]
    for preset, entry in default.items():
        trend = entry.get("trend", {}).get(family)
        if trend is None or not trend["seeds"]:
            continue
        short, long, n = trend["short"], trend["long"], len(trend["seeds"])
        a, b = (entry["advantage"][family][str(x)] for x in (short, long))
        ce_a, ce_b = entry["ce"][str(short)], entry["ce"][str(long)]
        text = (
            f"with the {preset} U-Net, from {short} to {long} iterations CE's foreground ECE goes "
            f"{ce_a['ece']:.3f} -> {ce_b['ece']:.3f} (higher on {trend['ce_n_up']} of {n} "
            f"seeds) and {label}'s paired ECE difference to CE at the default knob "
            f"({a['method']}) goes {a['delta_ece']:+.3f} ({_pct(a['relative'])}, lower than CE "
            f"on {a['n_better']}/{a['n']} seeds) -> {b['delta_ece']:+.3f} "
            f"({_pct(b['relative'])}, {b['n_better']}/{b['n']}); its advantage grew on "
            f"{trend['n_grew']} of {n} seeds: {_verdict(trend)}"
        )
        c_trend = chosen.get(preset, {}).get("trend", {}).get(family)
        if c_trend and c_trend["seeds"]:
            ca, cb = (chosen[preset]["advantage"][family][str(x)] for x in (short, long))
            text += (
                f"; with the knob re-chosen in each cell ({ca['method']} -> {cb['method']}) "
                f"{_pct(ca['relative'])} -> {_pct(cb['relative'])}, grew on "
                f"{c_trend['n_grew']} of {len(c_trend['seeds'])} seeds: {_verdict(c_trend)}"
            )
        out.append(text)
    return out


def _capacity_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, default, out = LABELS[family], study["findings"]["default"], []
    by_length: dict[int, list[str]] = {}
    for preset, entry in default.items():
        for n in entry["lengths"]:
            if entry["advantage"].get(family, {}).get(str(n), {}).get("delta_ece") is not None:
                by_length.setdefault(n, []).append(preset)
    for n, presets in sorted(by_length.items()):
        if len(presets) < 2:
            continue
        adv = [default[p]["advantage"][family][str(n)] for p in presets]
        items = []
        for p, a in zip(presets, adv, strict=True):
            ce = [v for v in a["ce_by_seed"].values() if v is not None]
            items.append(
                f"{p} {_pct(a['relative'])} (lower on {a['n_better']}/{a['n']}; CE's ECE "
                f"{min(ce):.3f}-{max(ce):.3f} over the seeds)"
            )
        rels = [a["relative"] for a in adv]
        means_grow = all(x is not None for x in rels) and all(
            y < x for x, y in zip(rels, rels[1:], strict=False)
        )
        seeds = sorted(set.intersection(*(set(a["by_seed"]) for a in adv)), key=int)
        grow = 0
        for s in seeds:
            r = [a["by_seed"][s] / a["ce_by_seed"][s] for a in adv]
            grow += all(y < x for x, y in zip(r, r[1:], strict=False))
        out.append(
            f"at {n} iterations, with the default knob ({adv[0]['method']}), {label}'s relative "
            f"ECE change against CE is {', '.join(items)}: "
            + (
                "in the means, the larger the preset, the larger the relative reduction"
                if means_grow
                else "no monotone trend in the means"
            )
            + f"; seed by seed the relative reduction grows from preset to preset on {grow} of "
            f"{len(seeds)} seeds"
        )
    return out


def _ranking_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, parts, ts_below = LABELS[family], [], {"chosen": 0, "default": 0}
    cells = list(study["cells"])
    for which in ("chosen", "default"):
        texts = []
        for cell in cells:
            ranks = cell_ranking(cell, which)
            if not ranks:
                continue
            names = [f for _, f, _ in ranks]
            text = f"{cell['preset']} {cell['iterations']}: " + " < ".join(
                f"{m} {e:.3f}" for e, _, m in ranks
            )
            if len(ranks) > 1:
                k, n = seeds_lower(cell, ranks[0][1], ranks[1][1], which)
                text += f" (first below second on {k} of {n} seeds)"
            if family in names:
                text += f", {label} {names.index(family) + 1} of {len(ranks)}"
            holes = [LABELS[f] for f in ranking_holes(cell, which)]
            if holes:
                text += f"; not ranked (no report runs at this knob): {', '.join(holes)}"
            texts.append(text)
            ts = cell_row(cell, "ce_ts", "default")
            if ts is not None and ts.get("ece") is not None and ts["ece"] <= ranks[0][0]:
                ts_below[which] += 1
        if texts:
            knob = "the knob re-chosen in each cell" if which == "chosen" else "the default knobs"
            parts.append(
                f"ranked by test ECE at {knob}, over the methods that ran on the report seeds: "
                + "; ".join(texts)
            )
    if parts:
        parts.append(
            f"CE + TS is at or below the first training loss in {ts_below['chosen']} of "
            f"{len(cells)} cells at the re-chosen knobs and in {ts_below['default']} of "
            f"{len(cells)} at the default knobs"
        )
    return parts


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def write_study(
    study: Mapping[str, Any],
    records: Sequence[Mapping],
    out_dir: str | Path,
    name: str = "regime",
    header: str = "",
) -> dict[str, Path]:
    """``<name>.json``, ``<name>.csv`` (one line per run) and ``<name>.md`` (``header``, then
    the tables), atomically."""
    from mls_tutorial.train.checkpoint import atomic_write, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("json", "csv", "md")}
    write_json(study, paths["json"])
    text = records_csv(
        records, study["protocol"]["choose_seeds"], study["protocol"]["report_seeds"]
    )
    atomic_write(paths["csv"], lambda f: f.write(text.encode()))
    md = header + regime_markdown(study)
    atomic_write(paths["md"], lambda f: f.write(md.encode()))
    return paths
