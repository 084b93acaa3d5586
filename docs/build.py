"""Build the course website: execute the notebooks with papermill, then render with Sphinx.

    python docs/build.py            # default parameters; trained runs cached in runs/
    python docs/build.py --fast     # the fast parameters (mls_tutorial/notebook_parameters.py)

Steps: (1) every ``notebooks/0*.ipynb`` runs once with papermill into
``docs/_build/executed/<mode>/`` (skipped when that copy is up to date: same notebook, same
parameters; ``--force`` reruns); models come from the runs cache (``runs/`` by default, as the
notebooks and the CLI use it; ``docs/_build/runs-fast`` for ``--fast``), so only missing runs are
trained. (2) A source tree laid out like the repository is assembled in ``docs/_build/src``:
README.md as the landing page, ``docs/*.md``, ``docs/figures``, the executed notebooks (widgets
replaced by their last drawn figures and a note on how to run them live) and the API reference.
(3) Sphinx renders it with MyST-NB, never executing again, warnings as errors, into
``docs/_build/html`` (open ``docs/_build/html/index.html``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD = DOCS / "_build"
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL = "python3"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BINDER = "https://mybinder.org/v2/gh/mls-tutorial/mls-tutorial/HEAD?urlpath=lab/tree/notebooks/"
# parameters that only say where files go: not shown on the pages
PATH_PARAMETERS = ("output_dir", "runs_dir")


def fast_parameters() -> dict[str, dict]:
    """The notebooks' fast parameters (``mls_tutorial/notebook_parameters.py``, as the tests')."""
    from mls_tutorial.notebook_parameters import NOTEBOOK_FAST_PARAMETERS

    return copy.deepcopy(NOTEBOOK_FAST_PARAMETERS)


def notebooks() -> list[Path]:
    """The course, in order: every ``notebooks/0*.ipynb`` (a new 05 appears by itself)."""
    found = sorted(NOTEBOOK_DIR.glob("0*.ipynb"))
    if not found:
        raise SystemExit(f"no notebooks found in {NOTEBOOK_DIR}")
    return found


def _relative(path: Path) -> str:
    """``path`` relative to the notebooks' folder (papermill runs them there): no local paths
    end up printed on the pages."""
    return os.path.relpath(path, NOTEBOOK_DIR)


# ---------------------------------------------------------------- 1. execute with papermill


def execute(path: Path, parameters: dict, out_dir: Path, force: bool, timeout: int) -> Path:
    """Run one notebook with papermill into ``out_dir``; reuse the copy if it is up to date."""
    import nbformat
    import papermill

    target = out_dir / path.name
    stamp = {
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "parameters": parameters,
    }
    if target.exists() and not force:
        old = nbformat.read(target, as_version=4).metadata.get("mls_build")
        if old == json.loads(json.dumps(stamp)):
            print(f"  {path.stem}: up to date ({_relative(target)})")
            return target
    from mls_tutorial import notebook_engine as engine  # see its docstring: the hang's fix

    declared = papermill.inspect_notebook(str(path))
    parameters = {k: v for k, v in parameters.items() if k in declared}
    start = time.perf_counter()
    # one retry of a timed-out cell in a fresh kernel stays as a guard (notebook_engine.execute)
    engine.execute(
        path,
        target,
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(NOTEBOOK_DIR),
        execution_timeout=timeout,
        progress_bar=False,
        on_retry=lambda: print(f"  {path.stem}: a cell timed out after {timeout} s, retrying once"),
    )
    nb = nbformat.read(target, as_version=4)
    nb.metadata["mls_build"] = stamp
    nbformat.write(nb, target)
    print(f"  {path.stem}: executed in {time.perf_counter() - start:.0f} s")
    return target


# ---------------------------------------------------------------- 2. pages from notebooks


def _b64(data) -> str:
    return re.sub(r"\s+", "", data if isinstance(data, str) else "".join(data))


def _widget_figures(model_id: str, state: dict, seen: set[str]) -> list[str]:
    """Base64 PNGs a widget tree last showed: ``Image`` widget values and the images inside
    ``Output`` widgets, depth first, leaving out those the notebook already shows elsewhere."""
    found, todo, visited = [], [model_id], set()
    while todo:
        mid = todo.pop(0)
        model = state.get(mid)
        if model is None or mid in visited:
            continue
        visited.add(mid)
        name, st = model.get("model_name", ""), model.get("state", {})
        if name == "ImageModel" and st.get("format", "png") == "png":
            for buf in model.get("buffers", []):
                if buf.get("path") == ["value"] and buf.get("encoding") == "base64":
                    found.append(_b64(buf["data"]))
        if name == "OutputModel":
            found += [_b64(o["data"]["image/png"]) for o in st.get("outputs", [])
                      if "image/png" in o.get("data", {})]  # fmt: skip
        todo += [c[len("IPY_MODEL_") :] for c in st.get("children", []) if isinstance(c, str)]
    return [png for png in dict.fromkeys(found) if png not in seen]


def _is_progress_bar(model_id: str, state: dict) -> bool:
    """tqdm's notebook bar: an HBox holding a FloatProgress (or IntProgress)."""
    children = state.get(model_id, {}).get("state", {}).get("children", [])
    names = {state.get(c[len("IPY_MODEL_") :], {}).get("model_name") for c in children}
    return bool(names & {"FloatProgressModel", "IntProgressModel"})


def _progress_text(model_id: str, state: dict) -> str:
    """The last text of a tqdm bar (its HTML children: description and counts)."""
    parts = []
    for child in state[model_id]["state"]["children"]:
        st = state.get(child[len("IPY_MODEL_") :], {}).get("state", {})
        if "value" in st and isinstance(st["value"], str):
            text = html.unescape(re.sub(r"<[^>]+>", " ", st["value"]))
            parts.append(text.replace("\xa0", " ").strip())
    return " ".join(p for p in parts if p) + "\n"


def live_note(stem: str) -> str:
    return (
        "**Interactive widget.** This page is a static copy: the widget needs a running Python "
        "kernel, so what it drew last is shown instead. Run it live in JupyterLab "
        f'(`pip install -e ".[lab]"`, then `jupyter lab notebooks/{stem}.ipynb`) '
        f"or on [Binder]({BINDER}{stem}.ipynb)."
    )


def static_widgets(nb, stem: str) -> int:
    """Replace widget outputs (which need a kernel) in place; return how many were replaced.

    A progress bar becomes its final text; any other widget becomes the figures it last drew
    (from the widget state papermill saved) and a note on how to run it live. The saved widget
    state is dropped, so the site loads no widget JavaScript (none from a CDN either).
    """
    import nbformat

    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    seen = {_b64(o["data"]["image/png"]) for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})}  # fmt: skip
    replaced = 0
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                outputs.append(out)
                continue
            replaced += 1
            mid = view.get("model_id", "")
            if _is_progress_bar(mid, state):
                outputs.append(nbformat.v4.new_output("stream", text=_progress_text(mid, state)))
                continue
            for png in _widget_figures(mid, state, seen):
                outputs.append(nbformat.v4.new_output("display_data", data={"image/png": png}))
            outputs.append(
                nbformat.v4.new_output("display_data", data={"text/markdown": live_note(stem)})
            )
        cell["outputs"] = outputs
    return replaced


def parameters_note(nb) -> None:
    """Replace papermill's injected-parameters cell by a sentence naming the parameters."""
    import nbformat

    for i, cell in enumerate(nb.cells):
        if "injected-parameters" not in cell.metadata.get("tags", []):
            continue
        params = nb.metadata.get("papermill", {}).get("parameters", {})
        shown = {k: v for k, v in params.items() if k not in PATH_PARAMETERS}
        if shown:
            listed = ", ".join(f"`{k}={v!r}`" for k, v in shown.items())
            text = f"*Executed for this site with papermill, with these parameters:* {listed}."
        else:
            text = "*Executed for this site with papermill, with the default parameters above.*"
        nb.cells[i] = nbformat.v4.new_markdown_cell(text)
        return


HTML_ANCHOR = re.compile(r"""^[ \t]*<a\s+(?:id|name)=["']([^"']+)["']\s*>\s*</a>[ \t]*$""", re.M)


def anchors_to_targets(nb) -> None:
    """``<a id="x"></a>`` on a line of its own (what JupyterLab links to as ``nb.ipynb#x``)
    becomes the MyST target ``(x)=``, so that Sphinx resolves those links too."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = HTML_ANCHOR.sub(r"(\1)=", cell.source)


def page_from(executed: Path, target: Path) -> None:
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    static_widgets(nb, executed.stem)
    parameters_note(nb)
    anchors_to_targets(nb)
    nb.metadata.pop("mls_build", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)


# ---------------------------------------------------------------- 3. source tree and Sphinx


def toctree(caption: str, entries: list[str]) -> str:
    body = "\n".join(entries)
    return f"\n```{{toctree}}\n:caption: {caption}\n:hidden:\n:maxdepth: 1\n\n{body}\n```\n"


def assemble(executed: list[Path], src: Path) -> None:
    """The Sphinx source tree, laid out like the repository so README's links resolve."""
    shutil.rmtree(src, ignore_errors=True)
    (src / "docs").mkdir(parents=True)
    for md in sorted(DOCS.glob("*.md")):
        shutil.copy(md, src / "docs" / md.name)
    shutil.copytree(DOCS / "figures", src / "docs" / "figures")
    shutil.copy(DOCS / "site" / "api.md", src / "api.md")
    for path in executed:
        page_from(path, src / "notebooks" / path.name)
    course = [f"notebooks/{p.stem}" for p in executed]
    reference = [f"docs/{md.stem}" for md in sorted(DOCS.glob("*.md"))]
    order = ["results", "benchmarks", "architecture", "notebooks"]
    reference.sort(key=lambda e: order.index(e[5:]) if e[5:] in order else len(order))
    index = (ROOT / "README.md").read_text()
    index += toctree("Course", course) + toctree("Reference", [*reference, "api"])
    (src / "index.md").write_text(index)


def sphinx(src: Path, html: Path) -> None:
    shutil.rmtree(html, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
        "-c", str(DOCS / "site"), "-d", str(BUILD / "doctrees"), str(src), str(html),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    # The kernels inherit this process's environment: a non-inline MPLBACKEND (CI exports Agg)
    # would keep plt.show() from putting any figure into the pages.
    os.environ.pop("MPLBACKEND", None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the tests' fast parameters")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="trained-runs cache (default: runs/, or docs/_build/runs-fast)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="re-execute every notebook")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)

    mode = "fast" if args.fast else "default"
    runs_dir = args.runs_dir or (BUILD / "runs-fast" if args.fast else ROOT / "runs")
    fast = fast_parameters() if args.fast else {}
    out_dir = BUILD / "executed" / mode
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"executing notebooks ({mode} parameters, runs cache {runs_dir}) into {out_dir}")
    executed = []
    for path in notebooks():
        if args.fast and path.stem not in fast:
            print(f"  {path.stem}: no fast parameters in notebook_parameters.py: defaults")
        params = {
            **fast.get(path.stem, {}),
            "output_dir": _relative(out_dir / "outputs" / path.stem),
            "runs_dir": _relative(runs_dir),
        }
        executed.append(execute(path, params, out_dir, args.force, args.timeout))
    t_exec = time.perf_counter() - start
    assemble(executed, BUILD / "src")
    sphinx(BUILD / "src", BUILD / "html")
    total = time.perf_counter() - start
    print(f"built {BUILD / 'html' / 'index.html'} (notebooks {t_exec:.0f} s, total {total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
