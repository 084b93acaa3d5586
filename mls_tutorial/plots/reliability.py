"""Reliability diagrams (Guo et al. 2017, Fig. 1), top-label and classwise.

Bins ``b`` of equal width on the confidence axis, ``(lo, hi]``. For each non-empty bin: a bar of
height ``acc_b`` (the accuracy, or for class ``k`` the frequency of ``y = k``), a gap bar from
``acc_b`` to ``conf_b`` (the mean confidence), and the diagonal ``acc = conf``. The gap has two
colours, both always in the legend: red above the bar where ``conf_b > acc_b`` (over-confident),
an opaque gold band over the top of the bar where ``conf_b < acc_b`` (under-confident).
``ECE = sum_b (n_b / N) |acc_b - conf_b|``. Underneath, the bin counts on a log scale with the
overall accuracy and mean confidence marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from mls_tutorial.plots._common import (
    as_float_array,
    axes_block,
    axes_grid,
    check_counts,
    check_edges,
    class_names_for,
    is_mapping_with,
    rebuild_from_dict,
    root_figure,
)

RELIABILITY_KEYS = ("edges", "counts", "confidence", "accuracy")
# gap colours: opaque faces (no blend with the accuracy bar underneath), hatched edges
GAP_STYLES = {
    "over-confident gap": dict(facecolor="#f4b6b2", edgecolor="#c0392b"),  # conf > acc
    "under-confident gap": dict(facecolor="#f9e79f", edgecolor="#b7950b"),  # conf < acc
}


def reliability_data(meter_or_dict, cls: int | None = None) -> dict:
    """Normalise a reliability source to ``dict(edges, counts, confidence, accuracy, ece, n)``.

    Accepts a ``CalibrationMeter`` (``.reliability(cls)``), a ``CalibrationMeter.to_dict()`` dict
    (rebuilt with ``CalibrationMeter.from_dict``), or an already computed reliability dict (then
    ``cls`` must be None). Arrays come back as float64 numpy arrays, NaN in empty bins.
    """
    if hasattr(meter_or_dict, "reliability"):
        rel = meter_or_dict.reliability(cls)
    elif is_mapping_with(meter_or_dict, RELIABILITY_KEYS):
        if cls is not None:
            raise ValueError("cls must be None when meter_or_dict is already a reliability dict")
        rel = meter_or_dict
    elif isinstance(meter_or_dict, Mapping):
        meter = rebuild_from_dict(
            meter_or_dict, "CalibrationMeter", "meter_or_dict", "a reliability dict"
        )
        rel = meter.reliability(cls)
    else:
        raise ValueError(
            "meter_or_dict must be a CalibrationMeter, its to_dict() or a reliability dict, "
            f"got {type(meter_or_dict).__name__}"
        )
    return _check_reliability(rel)


def _check_reliability(rel: Mapping) -> dict:
    missing = [k for k in (*RELIABILITY_KEYS, "ece", "n") if k not in rel]
    if missing:
        raise ValueError(f"reliability dict lacks {missing}")
    edges = check_edges(rel["edges"], "reliability edges")
    b = edges.size - 1
    counts = check_counts(rel["counts"], "reliability counts", b)
    conf = as_float_array(rel["confidence"], "reliability confidence", b)
    acc = as_float_array(rel["accuracy"], "reliability accuracy", b)
    filled = counts > 0
    if np.any(~np.isfinite(conf[filled])) or np.any(~np.isfinite(acc[filled])):
        raise ValueError("reliability confidence/accuracy must be finite in non-empty bins")
    n = float(rel["n"])
    if n <= 0 or counts.sum() == 0:
        raise ValueError("the reliability data hold no samples (n = 0): nothing to draw")
    return dict(
        edges=edges, counts=counts, confidence=conf, accuracy=acc, ece=float(rel["ece"]), n=n
    )


def reliability_diagram(
    meter_or_dict, cls: int | None = None, ax=None, title: str | None = None, legend: bool = True
):
    """Draw the reliability diagram; returns the figure.

    The legends sit right of the axes, never over a bar; ``legend=False`` leaves them out (a
    row of diagrams needs them once, on its last panel).

    ``cls=None`` is the top-label diagram (ECE); ``cls=k`` the classwise one for class ``k``
    (its mean over classes is CECE). ``ax``: None, one Axes (split into diagram + counts), or two
    Axes ``(diagram, counts)``. Bar containers carry labels ``"accuracy"`` (or ``"frequency"``),
    ``"over-confident gap"`` (bars from ``acc`` up to ``conf``), ``"under-confident gap"`` (bars
    from ``conf`` up to ``acc``) and ``"counts"``; the ECE/N text has ``gid="annotation"``.
    """
    rel = reliability_data(meter_or_dict, cls)
    axes = axes_grid(ax, 2, direction="column", ratios=(3, 1), figsize=(6.6, 5.5))
    _draw(rel, cls, *axes, title=title, legend=legend)
    return root_figure(axes[0])


def _draw(rel: dict, cls, ax_rel, ax_cnt, title=None, legend=True) -> None:
    edges, counts = rel["edges"], rel["counts"]
    filled = counts > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    acc, conf = rel["accuracy"][filled], rel["confidence"][filled]
    what = "accuracy" if cls is None else "frequency"
    bars = dict(width=width, align="edge", lw=0.5)
    ax_rel.bar(left, acc, color="C0", edgecolor="k", label=what, **bars)
    over = conf >= acc
    for name, sel, bottom, top in (
        ("over-confident gap", over, acc, conf),
        ("under-confident gap", ~over, conf, acc),
    ):
        ax_rel.bar(
            left[sel],
            (top - bottom)[sel],
            bottom=bottom[sel],
            width=width[sel],
            align="edge",
            lw=0.5,
            hatch="//",
            label=name,
            **GAP_STYLES[name],
        )
    lo, hi = edges[0], edges[-1]
    ax_rel.plot([lo, hi], [lo, hi], "--", color="0.4", lw=1, label="perfect calibration")
    ax_rel.set(xlim=(lo, hi), ylim=(0, 1))
    ax_rel.set_ylabel("accuracy" if cls is None else f"frequency of class {cls}")
    ax_rel.tick_params(labelbottom=False)
    total = counts[filled].sum()
    overall = float(np.sum(counts[filled] * acc) / total)
    mean_conf = float(np.sum(counts[filled] * conf) / total)
    name = "ECE" if cls is None else f"ECE$_{{{cls}}}$"
    text = f"{name} = {rel['ece']:.4f}\nN = {int(round(rel['n'])):,}"
    box = dict(boxstyle="round", fc="white", alpha=0.8)
    ax_rel.text(
        0.04,
        0.96,
        text,
        transform=ax_rel.transAxes,
        va="top",
        ha="left",
        bbox=box,
        gid="annotation",
    )
    if legend:  # proxies: both gap colours are explained even when one kind of bin is absent
        handles = [Patch(facecolor="C0", edgecolor="k", label=what)]
        handles += [Patch(hatch="//", label=n, **style) for n, style in GAP_STYLES.items()]
        handles += [
            h
            for h in ax_rel.get_legend_handles_labels()[0]
            if h.get_label() == "perfect calibration"
        ]
        ax_rel.legend(  # right of the axes: never over a bar
            handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small"
        )
    if title:
        ax_rel.set_title(title)

    ax_cnt.bar(left, counts[filled], color="0.6", edgecolor="k", label="counts", **bars)
    ax_cnt.set_yscale("log")
    ax_cnt.set_ylim(0.7, counts.max() * 30)
    ax_cnt.axvline(overall, color="C0", lw=1.5, label=f"{what} {overall:.3f}", gid="overall")
    ax_cnt.axvline(
        mean_conf,
        color="C3",
        ls="--",
        lw=1.5,
        label=f"mean confidence {mean_conf:.3f}",
        gid="mean_confidence",
    )
    ax_cnt.text(  # the two lines' values, in the empty low-confidence corner
        0.02,
        0.95,
        f"{what} {overall:.3f}\nmean confidence {mean_conf:.3f}",
        transform=ax_cnt.transAxes,
        va="top",
        ha="left",
        fontsize="x-small",
        gid="overall_text",
    )
    ax_cnt.set(xlim=(lo, hi), ylabel="count")
    ax_cnt.set_xlabel("confidence" if cls is None else f"$s_{{{cls}}}$")
    if legend:
        ax_cnt.legend(
            loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="x-small", frameon=False
        )


def classwise_reliability(
    meter_or_dict, class_names: Sequence[str] | None = None, ax=None, title: str | None = None
):
    """One reliability panel per class (the ingredients of CECE); returns the figure.

    ``meter_or_dict``: a ``CalibrationMeter``, its ``to_dict()``, or a sequence of per-class
    reliability dicts. ``CECE = (1/K) sum_k ECE_k`` over all K classes is written in the title.
    ``ax``: None, one Axes (split into a 2 x K block) or a sequence of ``2 K`` Axes ordered
    (diagram_0, counts_0, diagram_1, counts_1, ...). The CECE heading (prefixed by ``title``)
    goes on the figure or sub-figure holding the panels, so that several meters can share a
    figure, one sub-figure each.
    """
    per_class = _per_class(meter_or_dict)
    k = len(per_class)
    class_names = class_names_for(class_names, k)
    if ax is None or isinstance(ax, Axes):  # a 2 x K block: diagrams above their counts
        flat = axes_block(ax, 2, k, figsize=(3.2 * k + 2.0, 5.0), height_ratios=(3, 1))
        pairs = [(flat[c], flat[k + c]) for c in range(k)]
    else:
        flat = axes_grid(ax, 2 * k, name="ax")
        pairs = [(flat[2 * c], flat[2 * c + 1]) for c in range(k)]
    for c, (rel, pair) in enumerate(zip(per_class, pairs, strict=True)):
        _draw(rel, c, *pair, title=f"{class_names[c]} (class {c})", legend=c == 0)
    cece = float(np.mean([rel["ece"] for rel in per_class]))
    heading = f"classwise reliability: CECE = {cece:.4f} (mean over {k} classes)"
    pairs[0][0].figure.suptitle(f"{title}: {heading}" if title else heading)
    return root_figure(pairs[0][0])


def _per_class(meter_or_dict) -> list[dict]:
    if isinstance(meter_or_dict, Sequence) and not isinstance(meter_or_dict, str | bytes):
        if not meter_or_dict:
            raise ValueError("meter_or_dict: the sequence of per-class reliability dicts is empty")
        return [reliability_data(rel) for rel in meter_or_dict]
    meter = meter_or_dict
    if isinstance(meter, Mapping):
        if is_mapping_with(meter, RELIABILITY_KEYS):
            raise ValueError(
                "classwise_reliability needs a meter (or its to_dict()), not one reliability dict"
            )
        meter = rebuild_from_dict(
            meter, "CalibrationMeter", "meter_or_dict", "a list of per-class reliability dicts"
        )
    if not hasattr(meter, "reliability") or not hasattr(meter, "num_classes"):
        raise ValueError(
            "meter_or_dict must be a CalibrationMeter, its to_dict() "
            "or a list of per-class reliability dicts"
        )
    return [reliability_data(meter, c) for c in range(int(meter.num_classes))]
