"""What each penalty does as its weight grows: foreground ECE, signed gap and DSC against the
weight (log x), one line per family, mean ± std over seeds."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import axes_grid, root_figure
from mls_tutorial.registry import family_label

#: the knob that weighs each family's penalty (``alpha`` unless named here)
WEIGHT_KNOB = {"ecp": "beta"}
#: the families drawn by default: the equality penalties and the margin
FAMILIES = ("ls", "ecp", "linear", "mbls")
PANELS = (("ece", "ECE (fg, test)"), ("gap", "conf - acc (fg, test)"), ("dice", "DSC (test)"))


def weight_curves(
    rows: Sequence[Mapping], families: Sequence[str] = FAMILIES
) -> dict[str, dict[str, np.ndarray]]:
    """``{curve label: {weight, <key>, <key>_std ...}}`` from ``results_table`` rows.

    A curve is one of ``families`` (MbLS: one per margin) with at least two weights; other rows
    are left out. Arrays are sorted by weight.
    """
    groups: dict[str, list[Mapping]] = defaultdict(list)
    for row in rows:
        fam = row.get("family", row.get("loss"))
        knob = WEIGHT_KNOB.get(fam, "alpha")
        if fam not in families or row.get("temperature_scaling"):
            continue
        if knob not in row.get("loss_kwargs", {}):
            continue
        label = family_label(fam)
        if fam == "mbls":
            label = f"MbLS m={float(row['margin']):g}"
        groups[label].append(row)
    curves = {}
    for label, members in groups.items():
        fam = members[0].get("family", members[0].get("loss"))
        knob = WEIGHT_KNOB.get(fam, "alpha")
        members = sorted(members, key=lambda r: float(r["loss_kwargs"][knob]))
        if len(members) < 2:
            continue
        curve = {"weight": np.array([float(r["loss_kwargs"][knob]) for r in members])}
        for key, _ in PANELS:
            curve[key] = np.array([_num(r.get(key)) for r in members])
            curve[f"{key}_std"] = np.array([_num(r.get(f"{key}_std"), 0.0) for r in members])
        curves[label] = curve
    return curves


def _num(value, default=np.nan) -> float:
    return default if value is None else float(value)


def weight_sweep(
    rows: Sequence[Mapping],
    references: Mapping | None = None,
    ax=None,
    families: Sequence[str] = FAMILIES,
):
    """Three panels against the penalty weight (log x): ECE, conf - acc, DSC; returns the figure.

    ``rows``: ``results_table`` rows; one line per family of ``families`` (MbLS: per margin).
    ``references``: ``{label: row}`` drawn as horizontal lines (e.g. CE). The gap panel has a
    line at 0: below it the network is under-confident. ``ax``: None, one Axes or three.
    """
    curves = weight_curves(rows, families)
    if not curves:
        raise ValueError("rows hold no family with two or more weights to draw")
    axes = axes_grid(ax, 3, direction="row", figsize=(13, 4.0))
    for c, (label, curve) in enumerate(curves.items()):
        for axis, (key, _) in zip(axes, PANELS, strict=True):
            axis.errorbar(
                curve["weight"],
                curve[key],
                yerr=curve[f"{key}_std"],
                fmt="o-",
                color=f"C{c}",
                capsize=3,
                label=label,
                gid=f"{label}:{key}",
            )
    for label, ref in (references or {}).items():
        for axis, (key, _) in zip(axes, PANELS, strict=True):
            if ref.get(key) is not None:
                axis.axhline(float(ref[key]), color="k", ls="--", lw=1.0, label=label)
    axes[1].axhline(0.0, color="grey", lw=0.8)
    xlabel = weight_label(curves)
    for axis, (_, title) in zip(axes, PANELS, strict=True):
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_title(title)
        axis.set_ylabel(f"{title}\nmean ± sample sd over seeds", fontsize="small")
    axes[0].set_ylim(bottom=0.0)
    handles, labels = axes[0].get_legend_handles_labels()
    root_figure(axes[0]).legend(
        handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small"
    )
    return root_figure(axes[0])


def weight_label(curves: Mapping[str, Mapping]) -> str:
    """The x label: the knob of each drawn curve (``alpha``, and ``beta`` only when ECP is)."""
    knobs = ["beta for ECP" if label == "ECP" else "alpha" for label in curves]
    knobs = list(dict.fromkeys(knobs))
    if knobs == ["beta for ECP"]:
        return "penalty weight (beta)"
    return f"penalty weight ({'; '.join(knobs)})"
