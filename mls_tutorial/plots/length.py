"""Test metrics against training length (``mls_tutorial.length_curve`` series).

One panel per metric; x: training iterations (log scale), one line per series: solid for a
loss's last weights, dashed for the same loss after temperature scaling (same colour), dotted
black for CE that keeps its best-validation weights (early stopping). Points are means over the
seeds, error bars one sample standard deviation (said in the y label). The legend sits below
the panels, off the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import axes_grid, root_figure

YLABELS = {
    "ece": "ECE (fg, test)",
    "gap": "conf - acc (fg, test)",
    "dice": "DSC (test)",
    "tce": "TCE (fg, test)",
}
ORDER = ("ce", "ls", "ecp", "mbls", "linear", "cals")


def _style(series: Mapping, i: int) -> dict:
    fam = series["family"].removesuffix("_ts")
    color = "k" if fam == "ce" else f"C{ORDER.index(fam) if fam in ORDER else i}"
    if series.get("select_metric", "last") != "last":
        return dict(color="grey", ls=":", marker="^")
    return dict(color=color, ls="--" if series["temperature_scaling"] else "-", marker="o")


def length_curves(
    series_by_key: Mapping[str, Sequence[Mapping]],
    ax=None,
    n_seeds_text: str | None = None,
):
    """``series_by_key``: ``{metric: length_curve.length_series(rows, metric)}``, one panel
    each. ``n_seeds_text`` (e.g. "3 seeds") goes into the y labels. Returns the figure."""
    keys = list(series_by_key)
    if not keys:
        raise ValueError("series_by_key is empty: give at least one metric's series")
    axes = axes_grid(ax, len(keys), direction="row", figsize=(4.6 * len(keys), 4.4))
    spread = f"mean ± sd over {n_seeds_text}" if n_seeds_text else "mean ± sample sd over seeds"
    for axis, key in zip(axes, keys, strict=True):
        series = series_by_key[key]
        lengths = sorted({p["iterations"] for s in series for p in s["points"]})
        for i, s in enumerate(series):
            pts = [p for p in s["points"] if p["mean"] is not None]
            if not pts:
                continue
            shift = 2 ** (0.03 * (i - (len(series) - 1) / 2))  # error bars apart
            axis.errorbar(
                np.array([p["iterations"] for p in pts], dtype=float) * shift,
                [p["mean"] for p in pts],
                yerr=[p["std"] or 0.0 for p in pts],
                capsize=2,
                ms=4,
                lw=1.3,
                label=s["label"],
                **_style(s, i),
            )
        axis.set_xscale("log", base=2)
        if lengths:
            axis.set_xticks(lengths, [str(n) for n in lengths])
            axis.minorticks_off()
        if key == "gap":
            axis.axhline(0.0, color="grey", lw=0.8)
        axis.set_xlabel("training iterations (log scale)")
        axis.set_ylabel(f"{YLABELS.get(key, key)}\n({spread})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig = root_figure(axes[0])
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize="small"
    )
    return fig
