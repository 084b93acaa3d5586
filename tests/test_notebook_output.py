"""``NotebookOutput``: a notebook's figures saved and listed, its metrics.json written."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mls_tutorial.notebook_output import NotebookOutput  # noqa: E402


def test_figures_are_saved_listed_and_added_last_to_metrics(tmp_path):
    output = NotebookOutput(tmp_path / "new" / "folder")  # created
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    output.save(fig, "line.png")
    output.save(memoryview(b"\x89PNG\r\n\x1a\n-bytes"), "widget.png")  # a widget's value
    assert plt.fignum_exists(fig.number)  # left open: it still shows inline
    plt.close(fig)
    assert (output.path / "line.png").read_bytes().startswith(b"\x89PNG")
    assert (output.path / "widget.png").read_bytes().endswith(b"-bytes")
    written = output.write_metrics({"dice": 0.5, "nested": {"a": [1, 2]}})
    assert list(written) == ["dice", "nested", "figures"]
    assert written["figures"] == ["line.png", "widget.png"]
    text = (output.path / "metrics.json").read_text()
    assert text == json.dumps(written, indent=2) and json.loads(text) == written
