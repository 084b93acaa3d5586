"""A notebook's ``output_dir``: the figures it saves, listed, and its ``metrics.json``.

    output = NotebookOutput(output_dir)
    output.save(fig, "reliability.png")       # or PNG bytes, e.g. a widget's image
    output.write_metrics({"dice": ...})        # metrics.json, with "figures" added last

The notebook tests read ``metrics.json``; the figures are kept open (they still show inline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
