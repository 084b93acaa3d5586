"""Cells (U-Net preset, training length): knobs re-chosen on the choosing seeds, rows reported on
the others, and every hole named (``cell_holes``): a hole is listed, never filled."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mls_tutorial.regime.records import CELL_METRICS, FAMILIES, LABELS, PAIRED
from mls_tutorial.results import (
    choose_on_validation,
    mean_std,
    paired_difference,
    results_table,
)
from mls_tutorial.runs import Run, run_key


@dataclass(frozen=True)
class Cell:
    """One (U-Net preset, training iterations): its runs and their ``run_record``s, same order."""

    preset: str
    iterations: int
    runs: tuple[Run, ...]
    records: tuple[dict, ...]


@dataclass(frozen=True)
class Protocol:
    """What every cell shares: the disjoint choosing and report seeds, the knobs chosen in the
    default regime (``{family: {knob: value}}``) and the rule's Dice tolerance."""

    choose_seeds: tuple[int, ...]
    report_seeds: tuple[int, ...]
    defaults: Mapping[str, Mapping[str, Any]]
    dice_tolerance: float = 0.01


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
        row[k], row[f"{k}_std"] = mean_std(row[f"{k}_values"])
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
    protocol = Protocol(tuple(choose_seeds), tuple(report_seeds), defaults, dice_tolerance)
    by_cell: dict[tuple, list[int]] = {}
    for i, rec in enumerate(records):
        by_cell.setdefault((rec["preset"], rec["iterations"]), []).append(i)
    cells = []
    for (preset, iterations), idx in sorted(by_cell.items(), key=lambda kv: _cell_order(kv[0])):
        cell = Cell(preset, iterations, tuple(runs[i] for i in idx), tuple(records[i] for i in idx))
        cells.append(_cell(cell, protocol))
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


def _cell(cell: Cell, protocol: Protocol) -> dict:
    """The JSON-able record of ``cell``: what was chosen, the report rows, paired to CE, holes."""
    runs, records, defaults = cell.runs, cell.records, protocol.defaults
    missing: list[str] = []
    choice: dict[str, dict] = {}
    choosing = [r for r in runs if r.config["seed"] in protocol.choose_seeds]
    table = results_table(choosing) if choosing else []
    picked, problems = choose_per_family(table, protocol.dice_tolerance)
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
    reported = [r for r in records if r["seed"] in protocol.report_seeds]
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
    out = {
        "preset": cell.preset,
        "iterations": cell.iterations,
        "n_runs": len(runs),
        "choice": choice,
        "rows": out_rows,
        "defaults": {f: dict(k) for f, k in defaults.items()},
    }
    out["missing"] = list(dict.fromkeys(missing + cell_holes(out)))
    return out


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


def cell_row(cell: Mapping, family: str, which: str = "chosen") -> dict | None:
    """The row of ``family`` in ``cell`` that is ``which`` (``chosen``, ``default``,
    ``reference``), or None."""
    for row in cell["rows"]:
        if row["family"] == family and which in row["which"]:
            return row
    return None
