"""The regime study's figures, drawn from its ``regime.json`` dict (``mls_tutorial.regime``).

- ``regime_curves``: test metrics (foreground ECE, gap, DSC) against the training length, one
  line per loss family, one row per U-Net preset with two lengths or more;
- ``regime_capacity``: the same metrics per preset at one training length (categories: the
  presets differ in width, and ``paper`` also in depth, residual units and normalisation);
- ``regime_histograms``: CE's logit-distance histogram after short and long training, one panel
  per preset, with the margin drawn.

Points are means over the report seeds, error bars the sample std. Lines follow the knob chosen
in the default regime (the same config in every cell); hollow markers add the knob re-chosen in
a cell where it differs and was run on the report seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import axes_grid, new_figure, root_figure
from mls_tutorial.registry import family_label

FAMILIES = ("ce", "ls", "ecp", "mbls", "cals", "ce_ts")
LABELS = {fam: family_label(fam) for fam in FAMILIES}
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


def regime_points(
    study: Mapping, key: str = "ece", which: str = "default", families: Sequence[str] = FAMILIES
) -> list[dict]:
    """One point per cell and family: ``preset``, ``iterations``, ``family``, ``method``,
    ``mean``, ``std`` (0 for one seed), ``n`` (seeds) of metric ``key`` for the ``which`` row
    (``default``: the default regime's knob; ``chosen``: re-chosen in the cell). CE is its
    reference row, CE + TS its only row; cells without the row are left out."""
    if which not in ("chosen", "default"):
        raise ValueError(f"which must be 'chosen' or 'default', got {which!r}")
    _presets(study)
    points = []
    for cell in study["cells"]:
        for fam in families:
            row = _row(cell, fam, which)
            if row is None or row.get(key) is None:
                continue
            points.append(
                {
                    "preset": cell["preset"],
                    "iterations": cell["iterations"],
                    "family": fam,
                    "method": row["method"],
                    "mean": float(row[key]),
                    "std": float(row.get(f"{key}_std") or 0.0),
                    "n": len(row["seeds"]),
                }
            )
    return points


def _rechosen(study: Mapping, key: str, families: Sequence[str]) -> list[dict]:
    """Re-chosen points whose config differs from the default one."""
    default = {
        (p["preset"], p["iterations"], p["family"]): p["method"]
        for p in regime_points(study, key, "default", families)
    }
    return [
        p
        for p in regime_points(study, key, "chosen", families)
        if p["family"] not in ("ce", "ce_ts")
        and default.get((p["preset"], p["iterations"], p["family"])) != p["method"]
    ]


def _draw(axis, xs, points, i, fam, n_fams, hollow: bool, gid: str, lines: bool = True) -> None:
    color, fmt = STYLES.get(fam, (f"C{i}", "o-"))
    if not lines:
        fmt = fmt.rstrip("-")  # categorical x: markers only, no line between categories
    kw = dict(color=color, capsize=3, ms=5 if hollow else 4, gid=gid)
    if hollow:
        kw.update(fmt="o", mfc="white", ls="none")
    else:
        kw.update(fmt=fmt, label=LABELS.get(fam, fam))
    axis.errorbar(
        np.asarray(xs, dtype=float),
        [p["mean"] for p in points],
        yerr=[p["std"] for p in points],
        **kw,
    )


def _ylabel(study: Mapping, key: str) -> str:
    seeds = study.get("protocol", {}).get("report_seeds") or []
    who = f"seeds {', '.join(map(str, seeds))}" if seeds else "the report seeds"
    return f"{TITLES.get(key, key)}\nmean ± sample sd over {who}"


def regime_curves(
    study: Mapping,
    keys: Sequence[str] = ("ece", "gap"),
    families: Sequence[str] = FAMILIES,
    chosen_markers: bool = True,
    ax=None,
):
    """The metrics of ``keys`` against training iterations (log x), one row per preset that
    has two lengths or more (a preset with one length has no curve: see ``regime_capacity``),
    one column per metric; a line per family at its default knob, hollow markers for a knob
    re-chosen in the cell (``chosen_markers``). Points are means over the report seeds, error
    bars one sample std (said in each y label); the legend sits below the panels.

    ``ax``: None, one Axes (split) or ``presets * len(keys)`` axes (row-major). Returns the
    figure.
    """
    lengths_of: dict[str, set] = {}
    for cell in study.get("cells") or []:
        lengths_of.setdefault(cell["preset"], set()).add(cell["iterations"])
    presets = [p for p in _presets(study) if len(lengths_of[p]) > 1]
    if not presets:
        raise ValueError("no preset has two training lengths: nothing to draw against length")
    n_rows, n_cols = len(presets), len(keys)
    if ax is None:
        axes = list(new_figure(n_rows, n_cols, figsize=(4.6 * n_cols, 3.8 * n_rows + 0.6))[1])
    else:
        axes = axes_grid(ax, n_rows * n_cols, direction="row")
    for c, key in enumerate(keys):
        points = regime_points(study, key, "default", families)
        extra = _rechosen(study, key, families) if chosen_markers else []
        for r, preset in enumerate(presets):
            axis = axes[r * n_cols + c]
            for hollow, source in ((False, points), (True, extra)):
                for i, fam in enumerate(families):
                    mine = sorted(
                        (p for p in source if p["preset"] == preset and p["family"] == fam),
                        key=lambda p: p["iterations"],
                    )
                    if mine:
                        shift = 2 ** (0.03 * (i - (len(families) - 1) / 2))  # bars apart
                        xs = [p["iterations"] * shift for p in mine]
                        tag = "re-chosen" if hollow else "default"
                        gid = f"{preset}:{key}:{fam}:{tag}"
                        _draw(axis, xs, mine, i, fam, len(families), hollow, gid)
            lengths = sorted(lengths_of[preset])
            axis.set_xscale("log", base=2)
            axis.set_xticks(lengths, [str(n) for n in lengths])
            axis.minorticks_off()
            axis.set_xlim(min(lengths) / 1.6, max(lengths) * 1.6)
            if key == "gap":
                axis.axhline(0.0, color="grey", lw=0.8)
            axis.set_title(f"{preset} U-Net: {TITLES.get(key, key)}", fontsize="medium")
            axis.set_ylabel(_ylabel(study, key), fontsize="small")
            axis.set_xlabel("training iterations (log scale)")
    _legend(axes[0], chosen_markers)
    return root_figure(axes[0])


def _legend(axis, chosen_markers: bool) -> None:
    """One legend for the figure, below the panels (never over the data)."""
    handles, labels = axis.get_legend_handles_labels()
    if chosen_markers:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="o", mfc="white", color="grey", ls="none"))
        labels.append("knob re-chosen in the cell (where it differs and ran)")
    root_figure(axis).legend(
        handles, labels, loc="outside lower center", ncols=min(7, len(labels)), fontsize="small"
    )


def regime_capacity(
    study: Mapping,
    iterations: int | None = None,
    keys: Sequence[str] = ("ece", "gap"),
    families: Sequence[str] = FAMILIES,
    chosen_markers: bool = True,
    ax=None,
):
    """One panel per metric of ``keys``: the metric for each U-Net preset (categories, in the
    study's order; markers side by side, no line between presets: they differ in more than
    size, see ``models.PRESETS``) after ``iterations`` (default: the length most presets share),
    each family at its default knob, hollow markers for re-chosen knobs. Tick labels give the
    parameter count when ``study["protocol"]["parameters"]`` has it."""
    presets = _presets(study)
    if iterations is None:
        counts: dict[int, int] = {}
        for cell in study["cells"]:
            counts[cell["iterations"]] = counts.get(cell["iterations"], 0) + 1
        iterations = max(counts, key=lambda n: (counts[n], -n))
    have = [
        p
        for p in presets
        if any(c["preset"] == p and c["iterations"] == iterations for c in study["cells"])
    ]
    if not have:
        raise ValueError(f"no cell at {iterations} iterations")
    axes = axes_grid(ax, len(keys), direction="row", figsize=(4.8 * len(keys), 4.4))
    pos = {p: i for i, p in enumerate(have)}
    params = study.get("protocol", {}).get("parameters") or {}
    ticks = [p + (f"\n{_count(params[p])} params" if p in params else "") for p in have]
    for axis, key in zip(axes, keys, strict=True):
        points = [
            p
            for p in regime_points(study, key, "default", families)
            if p["iterations"] == iterations and p["preset"] in pos
        ]
        extra = [
            p
            for p in (_rechosen(study, key, families) if chosen_markers else [])
            if p["iterations"] == iterations and p["preset"] in pos
        ]
        for hollow, source in ((False, points), (True, extra)):
            for i, fam in enumerate(families):
                mine = [p for p in source if p["family"] == fam]
                if mine:
                    dx = 0.09 * (i - (len(families) - 1) / 2)  # side by side in a category
                    xs = [pos[p["preset"]] + dx for p in mine]
                    tag = "re-chosen" if hollow else "default"
                    gid = f"{key}:{fam}:{tag}"
                    _draw(axis, xs, mine, i, fam, len(families), hollow, gid, lines=False)
        axis.set_xticks(list(pos.values()), ticks)
        axis.set_xlim(-0.5, len(pos) - 0.5)
        for x in range(len(pos) - 1):
            axis.axvline(x + 0.5, color="0.85", lw=0.8)
        if key == "gap":
            axis.axhline(0.0, color="grey", lw=0.8)
        axis.set_title(f"{TITLES.get(key, key)}, {iterations} iterations", fontsize="medium")
        axis.set_ylabel(_ylabel(study, key), fontsize="small")
        axis.set_xlabel("U-Net preset")
    _legend(axes[0], chosen_markers)
    return root_figure(axes[0])


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def regime_histograms(
    study: Mapping,
    seed: int | None = None,
    lengths: Sequence[int] | None = None,
    margin: float | None = None,
    ax=None,
):
    """CE's logit-distance histograms after the shortest and longest training (or ``lengths``)
    of ``seed`` (default: the first report seed), one panel per preset that has them all,
    ``margin`` drawn (default: the study's margin). Returns the figure."""
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
        seeds = sorted({h["seed"] for h in hists})
        raise ValueError(f"no CE histogram for seed {seed}; seeds: {seeds}")
    margin = float(study.get("protocol", {}).get("margin", 5.0) if margin is None else margin)
    have = {p: sorted({h["iterations"] for h in mine if h["preset"] == p}) for p in _presets(study)}
    if lengths is not None:
        presets = [p for p, ns in have.items() if set(lengths) <= set(ns)]
        if not presets:
            raise ValueError(f"no preset has CE histograms at {sorted(lengths)} iterations: {have}")
    else:
        presets = [p for p, ns in have.items() if ns]
    axes = axes_grid(ax, len(presets), direction="row", figsize=(5.2 * len(presets), 3.8))
    for axis, preset in zip(axes, presets, strict=True):
        ns = have[preset]
        wanted = sorted(set(lengths)) if lengths is not None else sorted({ns[0], ns[-1]})
        curves = {
            f"{n} iterations": next(
                h["histogram"] for h in mine if h["preset"] == preset and h["iterations"] == n
            )
            for n in wanted
        }
        logit_distance_histogram(curves, margin=margin, ax=axis)
        axis.set_title(f"CE, {preset}, seed {seed} (test, every voxel)", fontsize="medium")
    return root_figure(axes[0])
