"""The paper's central pictures: logit-distance histograms and the margin sweep.

Logit distances ``d_k = max_j z_j - z_k`` (winner = predicted class). MbLS penalises
``relu(d_k - m)``, so the share of distances above the margin ``m`` shrinks as training goes on;
CE lets the distances grow without bound (over-confidence).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import (
    axes_grid,
    check_counts,
    check_edges,
    class_names_for,
    is_mapping_with,
    rebuild_from_dict,
    root_figure,
)

SUMMARIES = {
    "all": "every non-winning class",
    "mean": "per-voxel mean over the K-1 non-winning classes",
}


def distance_histogram_data(hist_or_dict, summary: str = "all", margin: float | None = None):
    """Normalise a histogram source to a dict for drawing.

    Returns ``edges``, ``counts`` (float arrays), ``overflow`` (distances beyond the last edge),
    ``n`` (all distances, overflow included), ``summary``, ``fraction_above`` (share of ``d > m``,
    None without a margin) and ``exact``. Accepts a ``LogitDistanceHistogram`` (its exact
    ``fraction_above``), its ``to_dict()`` (rebuilt with ``from_dict``), or a ``histogram()`` dict
    ``(edges, counts[, overflow, n, summary])``. When the exact count is not available (a plain
    dict, or a margin the histogram was not built for) the share is read from the bins: exact
    when ``m`` is a bin edge (bins are ``(lo, hi]``), else interpolated in its bin
    (``exact=False``, drawn with "~").
    """
    if summary not in SUMMARIES:
        raise ValueError(f"summary must be one of {sorted(SUMMARIES)}, got {summary!r}")
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    source = hist_or_dict
    if isinstance(source, Mapping) and not is_mapping_with(source, ("edges", "counts")):
        source = rebuild_from_dict(
            source, "LogitDistanceHistogram", "hist_or_dict", "a histogram dict"
        )
    fraction = None
    if hasattr(source, "histogram"):
        hist = source.histogram(summary)
        if margin is not None:
            try:
                fraction = float(source.fraction_above(margin, summary))
            except ValueError:  # a margin the histogram holds no exact boundary for
                fraction = None
    elif isinstance(source, Mapping):
        hist = source
        if hist.get("summary", summary) != summary:
            raise ValueError(
                f"the histogram dict holds summary {hist['summary']!r}, "
                f"not the requested {summary!r}"
            )
    else:
        raise ValueError(
            "hist_or_dict must be a LogitDistanceHistogram, its to_dict() or a "
            f"histogram dict, got {type(hist_or_dict).__name__}"
        )
    edges = check_edges(hist["edges"], "histogram edges")
    counts = check_counts(hist["counts"], "histogram counts", edges.size - 1)
    overflow = float(hist.get("overflow") or 0)
    n = float(hist["n"]) if hist.get("n") is not None else counts.sum() + overflow
    if overflow < 0 or not np.isclose(n, counts.sum() + overflow):
        raise ValueError(f"histogram n={n} != sum(counts) + overflow = {counts.sum() + overflow}")
    if n == 0:
        raise ValueError("the histogram holds no distances: nothing to draw")
    exact = True
    if margin is not None and fraction is None:
        fraction, exact = _fraction_from_bins(edges, counts, overflow, margin)
    return dict(
        edges=edges,
        counts=counts,
        overflow=overflow,
        n=n,
        summary=summary,
        fraction_above=fraction,
        exact=exact,
    )


def _fraction_from_bins(edges, counts, overflow, margin) -> tuple[float, bool]:
    """Share of the distances above ``margin`` read from bins ``(lo, hi]`` (+ the overflow)."""
    above = np.clip((edges[1:] - margin) / np.diff(edges), 0.0, 1.0)  # part of each bin > m
    on_edge = bool(np.any(edges == margin) or margin < edges[0])
    exact = on_edge or (margin >= edges[-1] and overflow == 0)
    return float((np.sum(counts * above) + overflow) / (counts.sum() + overflow)), exact


def logit_distance_histogram(
    hists,
    margin: float | None = None,
    summary: str = "all",
    ax=None,
    normalize: bool = True,
    margins: Mapping | None = None,
):
    """Overlay logit-distance histograms, e.g. ``{"CE": h_ce, "MbLS m=10": h_mbls}``.

    Each curve is a step histogram (share of distances per bin when ``normalize``). Each legend
    entry gives the share of distances ``d > m`` measured at that curve's own margin:
    ``margins[label]`` when given (e.g. ``{"MbLS m=5": 5, "MbLS m=10": 10}``), else ``margin``
    (e.g. CE measured at the margin drawn), written as ``"label (24.7% > 5)"`` (exact from the
    histogram object; "~" marks a value read from bins), plus the share beyond the last edge when
    there is one. A dashed vertical line marks ``margin`` (``gid="margin"``) and a dotted one in
    the curve's colour each other margin of ``margins`` (``gid="margin <m>"``).
    ``summary``: ``"all"`` (every non-winning distance) or ``"mean"`` (per-voxel mean over the
    non-winning classes); it is named on the x-axis. Returns the figure.
    """
    if hasattr(hists, "histogram") or is_mapping_with(hists, ("edges", "counts")):
        hists = {"run": hists}
    if not isinstance(hists, Mapping) or not hists:
        raise ValueError("hists must be a non-empty dict {label: histogram}")
    margins = dict(margins or {})
    unknown = sorted(map(str, set(margins) - set(hists)))
    if unknown:
        raise ValueError(f"margins names labels that are not in hists: {unknown}")
    (ax,) = axes_grid(ax, 1, figsize=(6.0, 3.8))
    drawn = set() if margin is None else {float(margin)}
    for i, (label, source) in enumerate(hists.items()):
        own = margins.get(label, margin)
        own = None if own is None else float(own)
        data = distance_histogram_data(source, summary, own)
        values = data["counts"] / data["n"] if normalize else data["counts"]
        text = str(label)
        if own is not None:
            approx = "" if data["exact"] else "~"
            text += f" ({approx}{data['fraction_above']:.1%} > {own:g})"
        if data["overflow"]:  # a few distances out of range: say so, never as "0.0%"
            share = data["overflow"] / data["n"]
            text += (
                f" [{f'{share:.1%}' if share >= 5e-4 else '<0.1%'} beyond {data['edges'][-1]:g}]"
            )
        ax.stairs(values, data["edges"], color=f"C{i}", lw=1.6, label=text, fill=False)
        if own is not None and own not in drawn:
            drawn.add(own)
            ax.axvline(own, color=f"C{i}", ls=":", lw=1.2, gid=f"margin {own:g}")
    if margin is not None:
        ax.axvline(margin, color="k", ls="--", lw=1.2, label=f"margin m = {margin:g}", gid="margin")
    ax.set_xlabel(f"logit distance $d = \\max_j z_j - z_k$ ({SUMMARIES[summary]})")
    ax.set_ylabel("share of distances" if normalize else "count")
    ax.set_xlim(left=0)
    ax.legend(fontsize="small")
    return root_figure(ax)


def margin_sweep(
    rows: Sequence[Mapping],
    references: Mapping | None = None,
    ax=None,
    highlight: float | None = None,
    min_dice_span: float = 0.1,
):
    """DSC (top) and ECE / CECE (bottom) against the margin ``m``; returns the figure.

    ``rows``: dicts with ``margin``, ``dice``, ``ece`` and optionally ``cece`` and ``alpha``
    (one curve per alpha). ``references``: ``{label: dict(dice, ece, cece)}`` drawn as horizontal
    lines (e.g. CE and LS). ``highlight``: a margin marked on each curve (artists with
    ``gid="highlight"``, moved in place by the widget). ``ax``: None, one Axes (split) or two.
    The DSC axis spans at least ``min_dice_span`` (centred on the data, inside [0, 1]) so that
    differences of a few thousandths do not fill the panel; the calibration axis starts at 0.
    Legends sit right of the axes, off the data.
    """
    if not min_dice_span >= 0:
        raise ValueError(f"min_dice_span must be >= 0, got {min_dice_span}")
    if not rows:
        raise ValueError("rows must hold at least one dict(margin, dice, ece)")
    groups = defaultdict(list)
    for row in rows:
        missing = [k for k in ("margin", "dice", "ece") if k not in row]
        if missing:
            raise ValueError(f"each row needs margin, dice and ece; {dict(row)} lacks {missing}")
        if not float(row["margin"]) >= 0:
            raise ValueError(f"rows: margin must be >= 0, got {row['margin']}")
        groups[row.get("alpha")].append(row)
    ax_dsc, ax_cal = axes_grid(ax, 2, direction="column", figsize=(5.5, 5.5))
    for g, (alpha, group) in enumerate(sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))):
        group = sorted(group, key=lambda r: float(r["margin"]))
        m = np.array([float(r["margin"]) for r in group])
        suffix = "" if alpha is None or len(groups) == 1 else f", alpha={alpha:g}"
        series = [
            (ax_dsc, "dice", "o-", f"C{g}", "DSC"),
            (ax_cal, "ece", "o-", f"C{g}", "ECE"),
            (ax_cal, "cece", "s--", f"C{g}", "CECE"),
        ]
        for axis, key, style, color, name in series:
            y = np.array([np.nan if r.get(key) is None else float(r[key]) for r in group])
            if np.all(np.isnan(y)):
                continue
            axis.plot(m, y, style, color=color, label=f"MbLS {name}{suffix}", gid=key)
            if highlight is not None:
                hx, hy = _at_margin(m, y, highlight)
                axis.plot(hx, hy, "*", ms=16, color="gold", mec="k", zorder=5, gid="highlight")
    for r, (label, ref) in enumerate((references or {}).items()):
        color = f"C{len(groups) + r}"
        for axis, key, ls in ((ax_dsc, "dice", "-"), (ax_cal, "ece", "-"), (ax_cal, "cece", ":")):
            if ref.get(key) is not None:
                axis.axhline(
                    float(ref[key]),
                    color=color,
                    ls=ls,
                    lw=1.2,
                    label=f"{label} {'DSC' if key == 'dice' else key.upper()}",
                )
    ax_dsc.set_ylabel("DSC (foreground)")
    ax_cal.set_ylabel("calibration error")
    ax_cal.set_xlabel("margin m")
    ax_dsc.tick_params(labelbottom=False)
    _widen(ax_dsc, min_dice_span)
    ax_cal.set_ylim(bottom=0.0)
    for axis in (ax_dsc, ax_cal):  # right of the axes: reference lines cross the whole panel
        axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return root_figure(ax_dsc)


def _widen(axis, span: float) -> None:
    """Give ``axis`` a y-range of at least ``span``, centred on the current one, inside [0, 1]."""
    lo, hi = axis.get_ylim()
    if hi - lo >= span:
        return
    lo = min(max(0.0, (lo + hi - span) / 2), max(0.0, 1.0 - span))
    axis.set_ylim(lo, lo + span)


def _sort_key(alpha):
    return (alpha is None, 0.0 if alpha is None else float(alpha))


def _at_margin(m: np.ndarray, y: np.ndarray, highlight: float):
    """The curve's point at ``highlight`` (interpolated between swept margins)."""
    ok = ~np.isnan(y)
    return [highlight], [float(np.interp(highlight, m[ok], y[ok]))]


def class_distance_data(
    logits, margin: float | None = None, max_distance: float = 30.0, n_bins: int = 60
) -> dict:
    """Per class ``k``, the distances ``d_k = max_j z_j - z_k`` over the voxels ``k`` does not win.

    ``logits``: ``(N, K, *spatial)`` (array or tensor). Returns ``edges`` (n_bins + 1, on
    ``[0, max_distance]``), ``share`` (K, n_bins: share of the class's losing voxels per bin,
    larger distances in the last bin), ``n`` (K: losing voxels per class) and ``fraction_above``
    (K: share with ``d_k > margin``, 0 for a class that never loses; None without a margin).
    """
    z = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits, np.float64)
    if z.ndim < 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K>=2, ...), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or inf")
    if not max_distance > 0 or n_bins < 1:
        raise ValueError(f"need max_distance > 0 and n_bins >= 1, got {max_distance}, {n_bins}")
    z = np.moveaxis(z, 1, -1).reshape(-1, z.shape[1])
    d = z.max(axis=1, keepdims=True) - z
    winner = z.argmax(axis=1)
    edges = np.linspace(0.0, max_distance, n_bins + 1)
    share, n, above = [], [], []
    for c in range(z.shape[1]):
        dc = d[winner != c, c]
        counts = np.histogram(np.minimum(dc, max_distance), bins=edges)[0]
        share.append(counts / max(dc.size, 1))
        n.append(dc.size)
        above.append(0.0 if margin is None else float((dc > margin).sum()) / max(dc.size, 1))
    return {
        "edges": edges,
        "share": np.array(share),
        "n": np.array(n),
        "fraction_above": None if margin is None else np.array(above),
    }


def class_distance_histograms(
    logits_by_run: Mapping,
    margin: float | None = None,
    class_names: Sequence[str] | None = None,
    max_distance: float = 30.0,
    n_bins: int = 60,
    ax=None,
):
    """One panel per class ``k``: the distribution of ``d_k = max_j z_j - z_k`` where ``k`` loses.

    The constraint of CALS is per class (one multiplier each), so its picture is per class:
    ``logits_by_run`` maps a label to logits ``(N, K, *spatial)`` (array or tensor); in panel
    ``k`` each run's curve is the share of its voxels, among those whose predicted class is not
    ``k``, per distance bin on ``[0, max_distance]`` (larger distances in the last bin), with the
    share above ``margin`` in the legend (:func:`class_distance_data`). Returns the figure.
    """
    if not isinstance(logits_by_run, Mapping) or not logits_by_run:
        raise ValueError("logits_by_run must be a non-empty dict {label: logits (N, K, ...)}")
    data = {}
    for label, z in logits_by_run.items():
        try:
            data[label] = class_distance_data(z, margin, max_distance, n_bins)
        except ValueError as exc:
            raise ValueError(f"logits of {label!r}: {exc}") from None
    ks = {len(v["n"]) for v in data.values()}
    if len(ks) != 1:
        raise ValueError(f"runs have different numbers of classes: {sorted(ks)}")
    k = ks.pop()
    names = class_names_for(class_names, k, f"K = {k} classes")
    axes = axes_grid(ax, k, direction="row", figsize=(3.6 * k, 3.4))
    for i, (label, v) in enumerate(data.items()):
        for c, axis in enumerate(axes):
            text = str(label)
            if margin is not None and v["n"][c]:
                text += f" ({v['fraction_above'][c]:.1%} > {margin:g})"
            axis.stairs(v["share"][c], v["edges"], color=f"C{i}", lw=1.4, label=text)
    for c, axis in enumerate(axes):
        if margin is not None:
            axis.axvline(margin, color="k", ls="--", lw=1, gid="margin")
        axis.set(title=f"d_k, k = {names[c]}", xlabel="d_k (voxels k does not win)")
        axis.legend(fontsize="x-small")
    axes[0].set_ylabel("share of voxels")
    return root_figure(axes[0])
