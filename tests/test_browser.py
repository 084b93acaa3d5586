"""A real JupyterLab in headless Chromium: notebook 02 runs, its margin slider moves the figure.

Starts ``jupyter lab`` on 127.0.0.1 (free port, token auth, news popup off through an
``overrides.json`` in a temporary app settings dir), opens a copy of notebook 02 on its default
parameters (papermill's ``prepare_only`` sets only its output and runs folders), runs all cells
in the browser as a learner would, with training forbidden (the runs are the shipped ones), moves the margin slider with the keyboard, and checks that the widget's figure
changed and that no cell errored. Screenshots go to ``test-artifacts/browser/``.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` package;
skipped with the reason otherwise.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEM = "02_training_with_margin"
NEWS_OFF = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}
}

# JavaScript run in the page (window.jupyterapp exists with --LabApp.expose_app_in_browser)
JS_PANEL = "const panel = window.jupyterapp.shell.currentWidget;"
JS_KERNEL_STATUS = f"""() => {{ {JS_PANEL}
  const k = panel && panel.sessionContext && panel.sessionContext.session
            && panel.sessionContext.session.kernel;
  return k ? k.status : null; }}"""
JS_CELLS = f"""() => {{ {JS_PANEL}
  const cells = [];
  for (const cell of panel.content.widgets) {{
    if (cell.model.type !== 'code') continue;
    const outs = cell.model.outputs.toJSON();
    cells.push({{count: cell.model.executionCount,
                 prompt: cell.promptNode ? cell.promptNode.textContent : '',
                 errors: outs.filter(o => o.output_type === 'error')
                             .map(o => o.ename + ': ' + o.evalue)}});
  }}
  return cells; }}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of notebook 02 on its defaults; yields (url, path)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    import papermill

    tmp = tmp_path_factory.mktemp("lab")
    work, settings = tmp / "work", tmp / "settings"
    work.mkdir()
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(NEWS_OFF))
    params = {
        "output_dir": str(tmp / "output"),
        "runs_dir": str(tmp / "runs"),
    }
    nb_path = work / f"{STEM}.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{STEM}.ipynb"),
        str(nb_path),
        parameters=params,
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp / "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "MLS_TUTORIAL_NO_TRAIN": "1",  # the kernel inherits it: the shipped runs, no training
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.root_dir={work}",
        f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
        f"--LabApp.app_settings_dir={settings}", "--ServerApp.open_browser=False",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")  # noqa: SIM115 - closed in the teardown
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited: {(tmp / 'jupyterlab.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        _wait(ready, 90, "jupyter lab to start")
        declared = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{STEM}.ipynb"))
        margins = ast.literal_eval(declared["margins"]["default"])  # the slider's stops
        yield {"url": url, "token": token, "tmp": tmp, "params": {**params, "margins": margins}}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        artifacts = ROOT / "test-artifacts" / "browser"
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "jupyterlab.log", artifacts / "jupyterlab.log")


def _widget_images(page) -> list[str]:
    """The src of every image drawn inside the margin explorer (the widget's figures)."""
    return page.eval_on_selector_all(
        ".mls-margin-explorer img, .jp-OutputArea-output .widget-vbox img",
        "els => els.map(e => e.getAttribute('src') || '')",
    )


def _move_slider(page, slider, old_value: str) -> None:
    """Move the margin slider one step, as a user would.

    The explorer's margin slider is a SelectionSlider (one stop per trained margin): its readout
    is display-only (typing into it commits nothing, unlike a Float/IntSlider's), so the handle
    is focused and moved with the arrow keys; noUiSlider's keyboard support fires the same
    change event as a drag.
    """
    readout = slider.locator(".widget-readout")
    handle = slider.locator(".noUi-handle").first
    for key in ("ArrowLeft", "ArrowRight"):
        handle.focus()
        page.keyboard.press(key)
        try:
            _wait(lambda: readout.inner_text().strip() != old_value, 5, "the readout to move")
            return
        except TimeoutError:
            continue
    raise AssertionError(f"the slider did not move from {old_value}")


def test_notebook_02_runs_in_jupyterlab_and_the_slider_redraws(lab):
    from playwright.sync_api import sync_playwright

    artifacts = ROOT / "test-artifacts" / "browser"
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console_errors = []
        page.on("pageerror", lambda e: console_errors.append(str(e)))
        try:
            page.goto(f"{lab['url']}/lab/tree/{STEM}.ipynb?token={lab['token']}")
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell"
                " && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext",
                timeout=120_000,
            )
            _wait(lambda: page.evaluate(JS_KERNEL_STATUS) == "idle", 120, "an idle kernel")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            def finished():
                cells = page.evaluate(JS_CELLS)
                if any(c["errors"] for c in cells):
                    return cells
                done = all(c["count"] is not None for c in cells)
                return cells if done and page.evaluate(JS_KERNEL_STATUS) == "idle" else None

            cells = _wait(finished, 900, "all cells to run", interval=2)
            page.screenshot(path=str(artifacts / f"{STEM}-after-run.png"), full_page=False)
            errors = [e for c in cells for e in c["errors"]]
            assert not errors, f"cells raised: {errors}"

            slider = page.locator(".widget-slider", has_text="margin").first
            slider.scroll_into_view_if_needed()
            before = _widget_images(page)
            assert before, "the margin explorer drew no figure"
            readout = slider.locator(".widget-readout")
            old_value = readout.inner_text().strip()
            _move_slider(page, slider, old_value)
            _wait(lambda: _widget_images(page) != before, 60, "the widget's figure to change")
            new_value = readout.inner_text().strip()
            assert float(new_value) != float(old_value)
            assert float(new_value) in [float(m) for m in lab["params"]["margins"]]
            slider.screenshot(path=str(artifacts / f"{STEM}-slider.png"))
            page.screenshot(path=str(artifacts / f"{STEM}-after-slider.png"), full_page=False)
            widget_text = page.locator(".jp-OutputArea-output .widget-vbox").first.inner_text()
            assert "Traceback" not in widget_text and "Error" not in widget_text
            errors = [e for c in page.evaluate(JS_CELLS) for e in c["errors"]]
            assert not errors, f"cells raised after the slider moved: {errors}"
        finally:
            page.screenshot(path=str(artifacts / f"{STEM}-final.png"), full_page=False)
            browser.close()
    assert not console_errors, console_errors
