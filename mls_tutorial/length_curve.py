"""Metrics against training length, paired per seed with CE at the same length.

A **series** is one config up to its length and seed (loss, knobs, TS or not, which weights are
kept), followed over the lengths it was trained to (``results.results_table`` rows, one per
length). Its **reference** at each length is CE at that length with the same TS flag, keeping
its last weights; a series that keeps other weights (``select_metric``, e.g. the best validation
Dice: early stopping) is compared with CE's last weights. Each point is the mean and sample std
over seeds, with the paired difference to the reference on the seeds both have and on how many
of them the series is better.

``length_series(rows, key)`` -> the series; ``length_markdown(series, key)`` -> one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mls_tutorial.markdown import markdown_table
from mls_tutorial.metrics.results import LOWER_IS_BETTER
from mls_tutorial.results import paired_difference

#: how a checkpoint rule (``select_metric``) reads in a label
RULES = {"val_fg_dice": "val DSC", "val_fg_nll": "val NLL", "val_fg_ece": "val ECE"}


def _series_key(row: Mapping[str, Any]) -> tuple:
    kwargs = tuple(sorted((k, repr(v)) for k, v in row["loss_kwargs"].items()))
    return (row["loss"], kwargs, row["temperature_scaling"], row["select_metric"])


def series_label(row: Mapping[str, Any]) -> str:
    """The row's label, with the checkpoint rule when it is not the last weights."""
    rule = row.get("select_metric", "last")
    if rule == "last":
        return row["method"]
    return f"{row['method']} (kept at best {RULES.get(rule, rule)})"


def length_series(
    rows: Sequence[Mapping[str, Any]], key: str = "ece", reference: str = "ce"
) -> list[dict[str, Any]]:
    """``[{label, family, loss, temperature_scaling, select_metric, points}]``, references
    first; each point: ``iterations``, ``mean``, ``std``, ``seeds``, ``values`` of ``key`` and
    ``vs_ref`` (``paired_difference`` to the reference at that length, None for the reference
    itself or when it is missing)."""
    refs = {
        (r["iterations"], r["temperature_scaling"]): r
        for r in rows
        if r["loss"] == reference and r["select_metric"] == "last"
    }
    groups: dict[tuple, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(_series_key(r), []).append(r)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda r: r["iterations"])
        first = members[0]
        points = []
        for r in members:
            ref = refs.get((r["iterations"], r["temperature_scaling"]))
            d = None if ref is None or ref is r else paired_difference(r, ref, key)
            points.append(
                {
                    "iterations": r["iterations"],
                    "mean": r.get(key),
                    "std": r.get(f"{key}_std"),
                    "seeds": list(r["seeds"]),
                    "values": list(r.get(f"{key}_values") or []),
                    "vs_ref": d if d and d["n"] else None,
                }
            )
        out.append(
            {
                "label": series_label(first),
                "family": first["family"],
                "loss": first["loss"],
                "temperature_scaling": first["temperature_scaling"],
                "select_metric": first["select_metric"],
                "points": points,
            }
        )
    is_ref = {id(s): s["loss"] == reference and s["select_metric"] == "last" for s in out}
    return sorted(out, key=lambda s: (s["temperature_scaling"], not is_ref[id(s)]))


def length_markdown(series: Sequence[Mapping[str, Any]], key: str = "ece") -> str:
    """Rows: series; columns: lengths. A cell: mean ± sd over seeds (n), then the paired
    difference to the reference at that length and on how many seeds the series is better."""
    lengths = sorted({p["iterations"] for s in series for p in s["points"]})
    better = "lower" if key in LOWER_IS_BETTER else "higher"
    head = ["config", *(f"{n} it" for n in lengths)]
    body = []
    for s in series:
        at = {p["iterations"]: p for p in s["points"]}
        cells = [s["label"]]
        for n in lengths:
            p = at.get(n)
            if p is None or p["mean"] is None:
                cells.append("-")
                continue
            text = f"{p['mean']:.3f}" + ("" if p["std"] is None else f" ± {p['std']:.3f}")
            text += f" (n={len(p['seeds'])})"
            d = p["vs_ref"]
            if d:
                text += f"; Δ {d['mean']:+.3f}, {better} on {d['n_better']}/{d['n']}"
            cells.append(text)
        body.append(cells)
    return markdown_table(head, body)


def length_sentences(series: Sequence[Mapping[str, Any]], key: str = "ece") -> list[str]:
    """One sentence per series with a reference, every number and seed count read from
    ``series``: its paired difference to the reference at each length."""
    better = "lower" if key in LOWER_IS_BETTER else "higher"
    out = []
    for s in series:
        pts = [p for p in s["points"] if p["vs_ref"]]
        if not pts:
            continue
        parts = [
            f"{p['iterations']} it {p['vs_ref']['mean']:+.3f} ({better} on "
            f"{p['vs_ref']['n_better']}/{p['vs_ref']['n']})"
            for p in pts
        ]
        out.append(f"{s['label']}: " + ", ".join(parts))
    return out
