"""The regime study's figures, drawn from its ``regime.json`` dict (``mls_tutorial.regime``).

- ``regime_curves``: a test metric (foreground ECE, gap, ...) against the training length, one
  line per loss family, one column per U-Net preset; mean ± sample std over the report seeds.
- ``regime_histograms``: CE's logit-distance histogram at the end of short and long training,
  one panel per preset, with the margin drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import axes_grid, new_figure, root_figure

FAMILIES = ("ce", "ls", "ecp", "mbls", "cals", "ce_ts")
LABELS = {"ce": "CE", "ls": "LS", "ecp": "ECP", "mbls": "MbLS", "cals": "CALS", "ce_ts": "CE + TS"}
TITLES = {
    "ece": "ECE (fg, test)",
    "gap": "conf - acc (fg, test)",
    "dice": "DSC (test)",
    "tce": "TCE (fg, test)",
    "dice_bayes": "DSC vs argmax q (test)",
}
STYLES = {"ce": ("k", "o-"), "ce_ts": ("k", "s--")}


def _presets(study: Mapping) -> list[str]:
    cells = study.get("cells") if isinstance(study, Mapping) else None
    if not cells:
        raise ValueError("study must be a regime.json dict with a non-empty 'cells' list")
    return list(dict.fromkeys(c["preset"] for c in cells))


def _row(cell: Mapping, family: str, which: str) -> Mapping | None:
    wanted = "reference" if family == "ce" else which
    for row in cell["rows"]:
        if row["family"] == family and (
            wanted in row["which"] or (family == "ce_ts" and "default" in row["which"])
        ):
            return row
    return None


def regime_curve_data(
    study: Mapping, key: str = "ece", which: str = "chosen", families: Sequence[str] = FAMILIES
) -> dict[str, dict[str, dict[str, np.ndarray | list]]]:
    """``{preset: {family: {iterations, mean, std, n, methods}}}`` for metric ``key``.

    ``which``: ``chosen`` (knob re-chosen in each cell) or ``default`` (the default regime's
    knob); CE is its reference row, CE + TS its only row. Sorted by iterations; cells without
    the row are left out.
    """
    if which not in ("chosen", "default"):
        raise ValueError(f"which must be 'chosen' or 'default', got {which!r}")
    out: dict[str, dict] = {p: {} for p in _presets(study)}
    for cell in sorted(study["cells"], key=lambda c: c["iterations"]):
        for fam in families:
            row = _row(cell, fam, which)
            if row is None or key not in row:
                continue
            if row[key] is None:
                continue
            d = out[cell["preset"]].setdefault(
                fam, {"iterations": [], "mean": [], "std": [], "n": [], "methods": []}
            )
            d["iterations"].append(cell["iterations"])
            d["mean"].append(float(row[key]))
            d["std"].append(float(row.get(f"{key}_std") or 0.0))
            d["n"].append(len(row["seeds"]))
            d["methods"].append(row["method"])
    for per in out.values():
        for d in per.values():
            for k in ("iterations", "mean", "std", "n"):
                d[k] = np.asarray(d[k], dtype=float)
    return out


def regime_curves(
    study: Mapping,
    keys: Sequence[str] = ("ece", "gap"),
    which: str = "chosen",
    families: Sequence[str] = FAMILIES,
    ax=None,
):
    """One row per metric of ``keys``, one column per preset: the metric against training
    iterations (log x), a line per family, error bars the sample std over the report seeds.

    ``ax``: None, one Axes (split) or ``len(keys) * presets`` axes (row-major). Returns the
    figure.
    """
    presets = _presets(study)
    data = {k: regime_curve_data(study, k, which, families) for k in keys}
    n_rows, n_cols = len(keys), len(presets)
    if ax is None:
        axes = list(new_figure(n_rows, n_cols, figsize=(4.2 * n_cols, 3.4 * n_rows))[1])
    else:
        axes = axes_grid(ax, n_rows * n_cols, direction="row")
    for r, key in enumerate(keys):
        for c, preset in enumerate(presets):
            axis = axes[r * n_cols + c]
            curves = data[key][preset]
            for i, fam in enumerate(families):
                if fam not in curves:
                    continue
                d = curves[fam]
                color, fmt = STYLES.get(fam, (f"C{i}", "o-"))
                shift = 2 ** (0.04 * (i - (len(families) - 1) / 2))  # keep error bars apart
                axis.errorbar(
                    d["iterations"] * shift,
                    d["mean"],
                    yerr=d["std"],
                    fmt=fmt,
                    color=color,
                    capsize=3,
                    ms=4,
                    label=LABELS.get(fam, fam),
                    gid=f"{preset}:{key}:{fam}",
                )
            lengths = sorted({n for d in curves.values() for n in d["iterations"]})
            axis.set_xscale("log", base=2)
            if lengths:
                axis.set_xticks(lengths, [f"{int(n)}" for n in lengths])
                axis.minorticks_off()
            if key == "gap":
                axis.axhline(0.0, color="grey", lw=0.8)
            axis.set_title(f"{preset}: {TITLES.get(key, key)}", fontsize="medium")
            if r == n_rows - 1:
                axis.set_xlabel("training iterations")
    axes[0].legend(fontsize="x-small", loc="best")
    return root_figure(axes[0])


def regime_histograms(
    study: Mapping,
    seed: int | None = None,
    lengths: Sequence[int] | None = None,
    margin: float | None = None,
    ax=None,
):
    """CE's logit-distance histograms after the shortest and longest training (or ``lengths``)
    of ``seed`` (default: the first report seed), one panel per preset, ``margin`` drawn
    (default: the study's margin). Returns the figure."""
    from mls_tutorial.plots.distances import logit_distance_histogram

    hists = [h for h in study.get("histograms") or [] if h["method"] == "CE"]
    if not hists:
        raise ValueError("study holds no CE histograms ('histograms' in regime.json)")
    if seed is None:
        report = study.get("protocol", {}).get("report_seeds") or []
        seeds = sorted({h["seed"] for h in hists})
        seed = next((s for s in report if s in seeds), seeds[0])
    mine = [h for h in hists if h["seed"] == seed]
    if not mine:
        raise ValueError(
            f"no CE histogram for seed {seed}; seeds: {sorted({h['seed'] for h in hists})}"
        )
    margin = float(study.get("protocol", {}).get("margin", 5.0) if margin is None else margin)
    presets = [p for p in _presets(study) if any(h["preset"] == p for h in mine)]
    axes = axes_grid(ax, len(presets), direction="row", figsize=(5.2 * len(presets), 3.8))
    for axis, preset in zip(axes, presets, strict=True):
        have = sorted({h["iterations"] for h in mine if h["preset"] == preset})
        wanted = sorted(set(lengths)) if lengths is not None else sorted({have[0], have[-1]})
        missing = [n for n in wanted if n not in have]
        if missing:
            raise ValueError(f"{preset}: no CE histogram at {missing} iterations; have {have}")
        curves = {
            f"{n} iterations": next(
                h["histogram"] for h in mine if h["preset"] == preset and h["iterations"] == n
            )
            for n in wanted
        }
        logit_distance_histogram(curves, margin=margin, ax=axis)
        axis.set_title(f"CE, {preset}, seed {seed} (test, every voxel)", fontsize="medium")
    return root_figure(axes[0])
