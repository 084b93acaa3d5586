"""A run's figures: reliability diagrams, logit distances, training curves, one example."""

from __future__ import annotations

import warnings
from pathlib import Path

from mls_tutorial.runs.folder import Run

FIGURES = (
    "reliability.png",
    "classwise_reliability.png",
    "logit_distances.png",
    "training_curves.png",
    "example.png",
)


def save_figures(run: Run) -> list[Path]:
    """Write the run's figures (reliability diagrams, logit distances, curves, one example)."""
    try:
        from matplotlib.figure import Figure

        from mls_tutorial import plots
    except ImportError as exc:  # plots is optional for training; say so, do not fail the run
        warnings.warn(f"figures skipped ({exc})", stacklevel=2)
        return []
    m = run.metrics
    names = m.get("data", {}).get("class_names")
    colors = m.get("data", {}).get("class_colors")
    title = f"{run.label} (foreground, test)"
    drawers = {
        "reliability.png": lambda ax: plots.reliability_diagram(m["meter"], ax=ax, title=title),
        "classwise_reliability.png": lambda ax: plots.classwise_reliability(
            m["meter"], class_names=names, ax=ax
        ),
        "logit_distances.png": lambda ax: plots.logit_distance_histogram(
            {run.label: m["histogram"]}, margin=run.margin, ax=ax
        ),
        "training_curves.png": lambda ax: plots.training_curves(
            run.history, ax=ax, class_names=names
        ),
    }
    if names and colors:
        ex = run.example()
        drawers["example.png"] = lambda ax: plots.segmentation_overlay(
            ex["image"], ex["label"], ex["probs"], names, colors, ax=ax
        )
    sizes = {
        "classwise_reliability.png": (13, 4),
        "training_curves.png": (15 if plots.multipliers.has_multipliers(run.history) else 10, 3.6),
        "example.png": (11, 3.8),
    }
    written = []
    for fname, draw in drawers.items():
        fig = Figure(figsize=sizes.get(fname, (6, 5)), layout="constrained")
        draw(fig.add_subplot())
        out = run.path / fname
        fig.savefig(out, dpi=110)
        written.append(out)
    return written
