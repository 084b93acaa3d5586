"""``docs/build.py`` turns a notebook's widgets into what a static page can show.

A synthetic executed notebook with the widget state papermill saves: a tqdm bar (HBox with a
FloatProgress), an explorer (VBox holding an Image widget, its PNG in a base64 buffer) and a
toy (VBox holding an Output widget with a figure). No kernel, no Sphinx: the page builder only.
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import nbformat
import pytest
from _imports import absolute_imports

ROOT = Path(__file__).resolve().parents[1]
PNG_A = base64.b64encode(b"\x89PNG\r\n\x1a\n-explorer").decode()
PNG_B = base64.b64encode(b"\x89PNG\r\n\x1a\n-toy").decode()


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(name: str, **state) -> dict:
    return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}


def _view(model_id: str, text: str = "VBox(...)") -> dict:
    data = {"text/plain": text, "application/vnd.jupyter.widget-view+json": {"model_id": model_id}}
    return nbformat.v4.new_output("display_data", data=data)


def _notebook(build):
    state = {
        "bar": _model("HBoxModel", children=["IPY_MODEL_d", "IPY_MODEL_p", "IPY_MODEL_n"]),
        "d": _model("HTMLModel", value="train:&nbsp;100%"),
        "p": _model("FloatProgressModel", value=30),
        "n": _model("HTMLModel", value="30/30 [00:01&lt;00:00]"),
        "explorer": _model("VBoxModel", children=["IPY_MODEL_slider", "IPY_MODEL_img"]),
        "slider": _model("SelectionSliderModel", index=1),
        "img": {
            **_model("ImageModel", format="png"),
            "buffers": [{"path": ["value"], "encoding": "base64", "data": PNG_A}],
        },  # fmt: skip
        "toy": _model("VBoxModel", children=["IPY_MODEL_out"]),
        "out": {
            **_model("OutputModel"),
            "state": {"outputs": [{"output_type": "display_data", "data": {"image/png": PNG_B}}]},
        },  # fmt: skip
    }
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {build.WIDGET_STATE: {"state": state, "version_major": 2}}
    cells = [nbformat.v4.new_code_cell(f"cell {i}") for i in range(4)]
    cells[0].outputs = [_view("bar", "HBox(children=(HTML(value=''), FloatProgress(...)))")]
    cells[1].outputs = [_view("explorer")]
    cells[2].outputs = [_view("toy")]
    # the notebook shows the toy's figure itself further down: not repeated
    cells[3].outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG_B})]
    nb.cells = cells
    return nb


def test_widgets_become_text_figures_and_a_live_note(build):
    nb = _notebook(build)
    assert build.static_widgets(nb, "02_training_with_margin") == 3
    assert "widgets" not in nb.metadata  # no widget JavaScript on the page
    bar, explorer, toy, shown = (c.outputs for c in nb.cells)
    assert [o.output_type for o in bar] == ["stream"]
    assert bar[0].text == "train: 100% 30/30 [00:01<00:00]\n"
    assert [o.data.get("image/png") for o in explorer[:-1]] == [PNG_A]
    note = explorer[-1].data["text/markdown"]
    assert "jupyter lab notebooks/02_training_with_margin.ipynb" in note
    assert "02_training_with_margin.ipynb)" in note  # the Binder link opens this notebook
    assert [o.data for o in toy] == [{"text/markdown": note}]  # its figure is already shown
    assert shown[0].data["image/png"] == PNG_B
    for cell in nb.cells:
        assert not any(build.WIDGET_VIEW in o.get("data", {}) for o in cell.outputs)


def test_parameters_cell_names_the_parameters_not_the_paths(build):
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("iterations = 30\noutput_dir = '/x'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells = [nbformat.v4.new_code_cell("a = 1"), injected]
    nb.metadata["papermill"] = {"parameters": {"iterations": 30, "output_dir": "/x"}}
    build.parameters_note(nb)
    assert nb.cells[1].cell_type == "markdown"
    assert "`iterations=30`" in nb.cells[1].source and "/x" not in nb.cells[1].source


def test_html_anchors_become_myst_targets(build):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell('Intro\n<a id="glossary"></a>\n**Glossary**'),
        nbformat.v4.new_markdown_cell('inline <a id="x"></a> stays'),
        nbformat.v4.new_code_cell('s = """\n<a id="code"></a>\n"""'),
    ]
    build.anchors_to_targets(nb)
    assert nb.cells[0].source == "Intro\n(glossary)=\n**Glossary**"
    assert nb.cells[1].source == 'inline <a id="x"></a> stays'
    assert '<a id="code"></a>' in nb.cells[2].source  # code is never touched


def test_the_docs_build_imports_nothing_from_tests():
    """The docs depend on the package, never on the test suite: no import names a module of
    ``tests/`` and no path into it is put on ``sys.path``."""
    source = (ROOT / "docs" / "build.py").read_text()
    ours = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for name in absolute_imports(source):
        assert name.split(".")[0] not in ours | {"tests"}, name
    assert '"tests"' not in source
