"""A notebook's ``output_dir``: the figures it saves, listed, and its ``metrics.json``.

    output = NotebookOutput(output_dir)
    output.save(fig, "reliability.png")       # or PNG bytes, e.g. a widget's image
    output.write_metrics({"dice": ...})        # metrics.json, with "figures" added last

The notebook tests read ``metrics.json``; the figures are kept open (they still show inline).
The records a notebook's last cell puts in it are built by the functions below, so that the
cell is a short list of names:

    pick(result, ("dice", "ece"))              # {"dice": ..., "ece": ...}
    per_class(result, "hd95")                  # {class name: HD95}
    run_record(run, share_above_own_margin=s)  # a trained run: label, loss, scores by class
    row_record(row, run.metrics)               # a results_table row, the same way
    reference_record(q_ref)                    # the true probabilities' reference row

They take plain mappings (``evaluate``'s results, a ``Run``'s ``metrics``, a table row) and
import nothing of the package.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: a run's headline test scores, in the order of its ``metrics.json``
SCORES = ("dice", "hd95", "ece", "cece", "ece_all", "gap")
#: the headline scores of the true probabilities (``train.evaluate_true_probabilities``)
REFERENCE_SCORES = ("dice", "hd95", "ece", "cece", "gap")


class NotebookOutput:
    """The folder ``output_dir`` (created) and the names of the figures saved into it."""

    def __init__(self, output_dir, dpi: int = 100):
        self.path = Path(output_dir)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dpi = dpi
        self.figures: list[str] = []

    def save(self, fig, name: str) -> None:
        """Write ``fig`` (a matplotlib Figure, or PNG bytes of any bytes-like type, e.g. an
        ipywidgets ``Image.value``) to ``output_dir / name``; list it."""
        if hasattr(fig, "savefig"):
            fig.savefig(self.path / name, dpi=self.dpi, bbox_inches="tight")
        else:
            (self.path / name).write_bytes(bytes(fig))
        self.figures.append(name)

    def write_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write ``metrics`` plus ``"figures"`` (the saved names) as ``metrics.json``
        (JSON, indent 2); return what was written."""
        metrics = {**metrics, "figures": list(self.figures)}
        (self.path / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics


def pick(mapping: Mapping[str, Any], keys: Iterable[str], suffix: str = "") -> dict[str, Any]:
    """``{key + suffix: mapping[key]}`` for each of ``keys``, in their order (a missing key
    raises ``KeyError``)."""
    return {f"{k}{suffix}": mapping[k] for k in keys}


def per_class(result: Mapping[str, Any], key: str = "dice") -> dict[str, Any]:
    """One number per class of an evaluation result (``evaluate``'s, a run's ``metrics``, the
    true probabilities'): ``{class name: result["per_class"][name][key]}``."""
    return {name: row[key] for name, row in result["per_class"].items()}


def _by_class(result: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {f"per_class_{k}": per_class(result, k) for k in keys}


def run_record(run, keys: Iterable[str] = SCORES, **extra: Any) -> dict[str, Any]:
    """A trained run (``runs.Run``) as a notebook's ``metrics.json`` lists it: ``label``,
    ``loss``, ``margin``, ``cached``, its ``keys`` of ``run.metrics``, ``per_class_dice`` and
    ``per_class_hd95``, then ``extra``."""
    head = {"label": run.label, "loss": run.config["loss"], "margin": run.margin}
    scores = {**pick(run.metrics, keys), **_by_class(run.metrics, ("dice", "hd95"))}
    return {**head, "cached": run.cached, **scores, **extra}


def row_record(
    row: Mapping[str, Any], result: Mapping[str, Any], keys: Iterable[str] = SCORES
) -> dict[str, Any]:
    """A ``results.results_table`` row the same way: ``name`` (its method), ``loss``,
    ``margin``, ``temperature_scaling``, the row's ``keys`` (means over its seeds), then
    ``per_class_dice`` and ``per_class_hd95`` of ``result`` (that run's ``metrics``)."""
    head = {"name": row["method"], **pick(row, ("loss", "margin", "temperature_scaling"))}
    return {**head, **pick(row, keys), **_by_class(result, ("dice", "hd95"))}


def reference_record(
    q_ref: Mapping[str, Any], keys: Iterable[str] = REFERENCE_SCORES
) -> dict[str, Any]:
    """The reference row of the true probabilities (``train.evaluate_true_probabilities``'s
    result): its ``keys``, then ``per_class_dice``."""
    return {**pick(q_ref, keys), **_by_class(q_ref, ("dice",))}
