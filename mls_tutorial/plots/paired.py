"""Paired differences per seed: did a change help on each seed, and by how much?

One panel per metric; one row per comparison (e.g. "MbLS - default"); each seed a dot at its
difference ``x_method - x_baseline`` on the same seed (same initial weights and batches), the
mean a black bar, zero a grey line; under a panel's x axis, which side is better when told.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from mls_tutorial.plots._common import axes_grid, root_figure

_SIDE = {"lower": "<- method better", "higher": "method better ->"}


def paired_differences(
    pairs: Sequence[Mapping], metrics: Sequence[str], better: Mapping | None = None, ax=None
):
    """``pairs``: ``[{"pair": label, "seeds": [s, ...], "diffs": {metric: [d per seed]}}]``
    (``docs/evidence/nnunet/table.json``'s ``pairs``); one panel per name in ``metrics``;
    ``better``: ``{metric: "lower" | "higher"}``, written under that panel. Returns the figure."""
    better = dict(better or {})
    wrong = {k: v for k, v in better.items() if v not in _SIDE}
    if wrong:
        raise ValueError(f"better values must be 'lower' or 'higher', got {wrong}")
    if not pairs:
        raise ValueError("pairs is empty: give at least one comparison")
    if not metrics:
        raise ValueError("metrics is empty: name at least one metric to draw")
    for p in pairs:
        missing = [m for m in metrics if m not in p["diffs"]]
        if missing:
            raise ValueError(f"pair {p['pair']!r} has no differences for {missing}")
        bad = [m for m in metrics if len(p["diffs"][m]) != len(p["seeds"])]
        if bad:
            raise ValueError(f"pair {p['pair']!r}: one difference per seed needed for {bad}")
    axes = axes_grid(
        ax, len(metrics), direction="row", figsize=(3.2 * len(metrics), 1.8 + 0.6 * len(pairs))
    )
    seeds = sorted({s for p in pairs for s in p["seeds"]})
    for axis, metric in zip(axes, metrics, strict=True):
        for row, p in enumerate(pairs):
            d = np.asarray(p["diffs"][metric], dtype=float)
            for s, x in zip(p["seeds"], d, strict=True):
                axis.plot(x, row, "o", color=f"C{seeds.index(s)}", ms=6, alpha=0.85,
                          label=f"seed {s}")  # fmt: skip
            axis.plot([d.mean()] * 2, [row - 0.25, row + 0.25], color="k", lw=2, label="mean")
        axis.axvline(0.0, color="grey", lw=0.8)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=4))  # room for small differences' labels
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2), useMathText=True)
        axis.set_yticks(range(len(pairs)), [p["pair"] for p in pairs] if axis is axes[0] else [])
        axis.set_ylim(len(pairs) - 0.5, -0.5)
        axis.set_xlabel(f"Δ {metric}\n{_SIDE.get(better.get(metric), '')}".rstrip())
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig = root_figure(axes[0])
    fig.legend(unique.values(), unique.keys(), loc="outside lower center",
               ncols=min(6, len(unique)), fontsize="small")  # fmt: skip
    return fig
