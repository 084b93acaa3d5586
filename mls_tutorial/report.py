"""Reports: the tables and figures that ``report``, ``sweep``, ``demo``, ``score`` and the notebooks
share.

- ``comparison_figures(runs, out)``: side-by-side reliability diagrams, overlaid logit distances
  and (with several margins) the margin sweep, first seed of each method;
- ``write_chosen(runs, rows, out)``: the choose-on-validation rule (``results.choose_on_validation``)
  written as ``chosen.md`` / ``chosen.json`` / ``grid.md`` plus the weight-sweep figure;
- ``reference_row(runs)``: the true probabilities q scored as a prediction (data that know q);
- ``demo_summary(rows)``: the demo's plain-language lines (CE's gap, each method's change);
- ``calibration_figures(meter, histogram, out)``: a results dict's reliability diagram,
  class-wise reliability diagrams and logit-distance histogram (what ``score`` writes).

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot state, no backend choice).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: per-run figures ``report`` draws when a run folder lacks them
RUN_FIGURES = ("reliability.png", "logit_distances.png")


def ensure_run_figures(runs) -> None:
    """Draw a run's figures when its folder lacks any of ``RUN_FIGURES``."""
    from mls_tutorial.runs import save_figures

    for run in runs:
        if not all((run.path / f).is_file() for f in RUN_FIGURES):
            save_figures(run)


def _save(fig, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def comparison_figures(runs, out: str | Path) -> list[Path]:
    """Side-by-side reliability diagrams, overlaid logit distances and (if several margins) the
    margin sweep, for the first seed of each method; returns the files written."""
    try:
        from matplotlib.figure import Figure

        from mls_tutorial import plots
    except ImportError as exc:
        print(f"figures skipped ({exc})", file=sys.stderr)
        return []
    from mls_tutorial.results import results_table

    out = Path(out)
    firsts: dict[str, Any] = {}
    for run in runs:
        firsts.setdefault(run.label, run)
    shown = list(firsts.values())
    written = []
    ncols = min(5, len(shown))  # rows of at most 5 panels
    nrows = -(-len(shown) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 4.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, run in zip(axes, shown, strict=False):
        plots.reliability_diagram(run.metrics["meter"], ax=ax, title=f"{run.label} (fg)")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    written.append(_save(fig, out / "reliability_comparison.png"))

    margins = [r.margin for r in shown if r.margin is not None]
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    plots.logit_distance_histogram(
        {r.label: r.metrics["histogram"] for r in shown},
        margin=margins[0] if len(set(margins)) == 1 else None,
        margins={r.label: r.margin for r in shown if r.margin is not None},
        ax=fig.add_subplot(),
    )
    written.append(_save(fig, out / "logit_distances.png"))

    rows = results_table(runs)
    sweep = [r for r in rows if r["loss"] == "mbls" and not r["temperature_scaling"]]
    if len({r["margin"] for r in sweep}) > 1:
        refs = {
            r["method"]: r
            for r in rows
            if r["loss"] in ("ce", "ls") and not r["temperature_scaling"]
        }
        fig = Figure(figsize=(6, 6), layout="constrained")
        plots.margin_sweep(sweep, references=refs, ax=fig.add_subplot())
        written.append(_save(fig, out / "margin_sweep.png"))
    return written


def weight_figure(rows: Sequence[dict], out: str | Path) -> list[Path]:
    """ECE, gap and DSC against the penalty weight (``alpha_sweep.png``) when rows vary it."""
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    if not plots.weight_curves(rows):
        return []
    refs = {r["method"]: r for r in rows if r["family"] == "ce"}
    fig = Figure(figsize=(13, 4.0), layout="constrained")
    plots.weight_sweep(rows, references=refs, ax=list(fig.subplots(1, 3)))
    return [_save(fig, Path(out) / "alpha_sweep.png")]


def reference_row(runs) -> dict | None:
    """The true probabilities q scored on the test volumes (data with ``Volume.prob`` only)."""
    from mls_tutorial.runs import get_data
    from mls_tutorial.train import evaluate_true_probabilities

    data = get_data(runs[0].config)
    if any(v.prob is None for v in data.test):
        return None
    res = evaluate_true_probabilities(data.test, data.num_classes, class_names=data.class_names)
    row = {k: res[k] for k in ("dice", "dice_bayes", "hd95", "ece", "ece_true", "tce", "gap")}
    row["per_class_dice"] = {n: v["dice"] for n, v in res["per_class"].items()}
    return {"family": "reference", "method": "true probabilities q", **row}


@dataclass
class ChosenReport:
    """What ``write_chosen`` wrote: table paths, the chosen table as Markdown, the figures and
    the keys (``run_key`` with seed 0) of the chosen configs."""

    paths: dict[str, Path]
    markdown: str
    figures: list[Path] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)


def write_chosen(
    runs, rows: Sequence[dict], out: str | Path, dice_tolerance: float
) -> ChosenReport:
    """``report --choose-on val``: ``chosen.md``/``chosen.json``, ``grid.md`` and the weight
    sweep figure in ``out`` (each file written atomically)."""
    from mls_tutorial.files import atomic_write, write_json
    from mls_tutorial.results import choose_on_validation, chosen_markdown, grid_markdown

    out = Path(out)
    chosen = choose_on_validation(rows, dice_tolerance=dice_tolerance)
    reference = reference_row(runs)
    md = chosen_markdown(chosen, extra_rows=[reference] if reference else ())
    grid = grid_markdown(rows, chosen)
    paths = {
        "chosen": out / "chosen.md",
        "chosen_json": out / "chosen.json",
        "grid": out / "grid.md",
    }
    atomic_write(paths["chosen"], lambda f: f.write(md.encode()))
    atomic_write(paths["grid"], lambda f: f.write(grid.encode()))
    records = [
        {
            **c,
            "chosen": c["chosen"]["method"],
            # enough to train the chosen config again (notebook 05's table, `train --loss-param`)
            "config": {k: c["chosen"][k] for k in ("loss", "loss_kwargs", "temperature_scaling")},
        }
        for c in chosen
    ]
    write_json(
        {"dice_tolerance": dice_tolerance, "families": records, "reference": reference},
        paths["chosen_json"],
    )
    return ChosenReport(
        paths=paths,
        markdown=md,
        figures=weight_figure(rows, out),
        keys={c["chosen"]["key"] for c in chosen},
    )


def demo_summary(rows: Sequence[dict]) -> str:
    """CE's foreground gap in words, then each method's ECE and DSC change against CE."""
    ce = next((r for r in rows if r["loss"] == "ce" and not r["temperature_scaling"]), None)
    lines = []
    for r in rows:
        if ce is None or r is ce or r["ece"] is None or ce["ece"] is None or ce["ece"] == 0:
            continue
        change = (r["ece"] - ce["ece"]) / ce["ece"]
        lines.append(
            f"{r['method']}: foreground ECE {ce['ece']:.3f} -> {r['ece']:.3f} ({change:+.0%} vs CE), "
            f"DSC {ce['dice']:.3f} -> {r['dice']:.3f}"
        )
    if ce is not None and ce["gap"] is not None:
        state = "over-confident" if ce["gap"] > 0 else "under-confident"
        lines.insert(
            0, f"CE is {state}: mean confidence - accuracy on foreground = {ce['gap']:+.3f}"
        )
    return "\n".join(lines)


#: the figures ``calibration_figures`` writes
CALIBRATION_FIGURES = ("reliability.png", "classwise_reliability.png", "logit_distances.png")


def calibration_figures(
    meters: Mapping[str, Any],
    histograms: Mapping[str, Any],
    out: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    margins: Sequence[float] = (),
    title: str = "foreground",
) -> list[Path]:
    """Reliability diagram(s), class-wise reliability and the logit-distance histogram.

    ``meters``: label -> ``CalibrationMeter`` (or its ``to_dict()``), one reliability panel
    each (e.g. ``{"T = 1": ..., "T = 1.8": ...}``); the class-wise panels use the first.
    ``histograms``: label -> ``LogitDistanceHistogram`` (or its ``to_dict()``), overlaid, with a
    dotted line at each of ``margins``. Returns ``CALIBRATION_FIGURES`` paths under ``out``.
    """
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    if not meters or not histograms:
        raise ValueError("calibration_figures needs at least one meter and one histogram")
    out = Path(out)
    n = len(meters)
    fig = Figure(figsize=(4.6 * n, 5.4), layout="constrained")
    for ax, (label, meter) in zip(
        fig.subplots(1, n, squeeze=False)[0], meters.items(), strict=True
    ):
        plots.reliability_diagram(meter, ax=ax, title=f"{label} ({title})")
    written = [_save(fig, out / CALIBRATION_FIGURES[0])]
    first = next(iter(meters.values()))
    k = int(first["config"]["num_classes"] if isinstance(first, Mapping) else first.num_classes)
    fig = Figure(figsize=(max(6.0, 3.2 * k), 5.0), layout="constrained")
    plots.classwise_reliability(
        first, class_names=class_names, ax=fig.add_subplot(), title=next(iter(meters))
    )
    written.append(_save(fig, out / CALIBRATION_FIGURES[1]))
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    plots.logit_distance_histogram(dict(histograms), ax=ax)
    lines = []
    for m in margins:
        ax.axvline(m, color="0.3", ls=":", lw=1, gid=f"margin {m:g}")
        shares = [
            plots.distance_histogram_data(h, "all", m)["fraction_above"]
            for h in histograms.values()
        ]
        lines.append(f"d > {m:g}: " + " / ".join(f"{s:.1%}" for s in shares))
    if lines:
        ax.text(
            0.98,
            0.6,
            "\n".join(lines),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize="small",
            bbox=dict(boxstyle="round", fc="white", alpha=0.8),
            gid="shares",
        )
    written.append(_save(fig, out / CALIBRATION_FIGURES[2]))
    return written
