"""The built course website in headless Chromium: figures load, math is typeset, no network.

Serves ``docs/_build/html`` (from ``python docs/build.py``, or its ``--fast`` variant) on
127.0.0.1 and opens the notebook-02 page and the API reference: every image has loaded
(``naturalWidth > 0``), every math element was typeset by the MathJax copied into the build,
the margin explorer's place holds its figure and how to run it live, ``MarginLoss`` is
documented next to its formula, and no request left 127.0.0.1 (no CDN). Screenshots go to
``test-artifacts/site/``.

Skipped with the reason when the build, Debian's ``chromium`` or ``playwright`` is missing.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "docs" / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
PAGE_02 = "notebooks/02_training_with_margin.html"

JS_IMAGES = """() => Array.from(document.images).map(
  i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}))"""
JS_HREFS = "els => els.map(e => e.href)"  # absolute URLs
JS_MATH = """() => MathJax.startup.promise.then(() => {
  const math = Array.from(document.querySelectorAll('.math'));
  return {n: math.length,
          typeset: math.filter(e => e.querySelector('mjx-container')).length,
          errors: document.querySelectorAll('mjx-merror').length}; })"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    """An HTTP server on the build folder; yields its base URL."""
    if not (HTML / PAGE_02).is_file():
        pytest.skip(f"{HTML / PAGE_02} not built: run `python docs/build.py` first")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    handler = functools.partial(_Quiet, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, site):
    """A page that records every request leaving 127.0.0.1 and every script error."""
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.outside, page.errors = [], []
    page.on("request", lambda r: _local(r.url, site) or page.outside.append(r.url))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    page.close()


def _local(url: str, site: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("data", "blob", "about") or url.startswith(site)


def _artifacts() -> Path:
    path = ROOT / "test-artifacts" / "site"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open(page, url: str) -> dict:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    return page.evaluate(JS_MATH)


def test_notebook_02_page_images_math_and_widget(page, site):
    math = _open(page, f"{site}/{PAGE_02}")
    images = page.evaluate(JS_IMAGES)
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    page.screenshot(path=str(_artifacts() / "02_training_with_margin-top.png"))
    assert len(images) >= 6, f"expected the notebook's figures, found {len(images)} images"
    assert not broken, f"images that did not load: {broken}"
    assert math["n"] >= 1, "no math on the notebook-02 page"
    assert math["typeset"] == math["n"] and math["errors"] == 0, math
    # the results tables (Markdown outputs of the notebook) are tables, not paragraphs of pipes
    tables = page.locator("div.cell_output table")
    assert tables.count() >= 2, "the notebook's result tables were not rendered as tables"
    assert "ECE (fg)" in tables.first.inner_text() and "CE" in tables.first.inner_text()
    # the explorer: its place says how to run it live, and its figure is on the page
    note = page.get_by_text("Interactive widget.").first
    note.scroll_into_view_if_needed()
    page.screenshot(path=str(_artifacts() / "02_training_with_margin-explorer.png"))
    text = page.inner_text("main")
    assert "jupyter lab notebooks/02_training_with_margin.ipynb" in text
    assert page.locator("a", has_text="Binder").count() >= 1
    # every link to another page of the site lands on an existing page and anchor
    checked = 0
    for href in set(page.eval_on_selector_all("main a[href]", JS_HREFS)):
        if not href.startswith(site) or href.startswith(f"{site}/{PAGE_02}#"):
            continue
        url, _, anchor = href.partition("#")
        target = HTML / urlparse(url).path.lstrip("/")
        assert target.is_file(), f"{href}: no such page"
        assert not anchor or f'id="{anchor}"' in target.read_text(), f"{href}: no such anchor"
        checked += 1
    assert checked >= 1, "no link to another page of the site (the navigation has some)"
    assert not page.outside, f"requests left 127.0.0.1: {page.outside}"
    assert not page.errors, page.errors


def test_api_page_lists_margin_loss_with_its_formula(page, site):
    math = _open(page, f"{site}/api.html")
    assert math["typeset"] == math["n"] and math["errors"] == 0, math
    entry = page.locator("dt[id='mls_tutorial.losses.MarginLoss']")
    assert entry.count() == 1, "MarginLoss is not documented on the API page"
    formula = page.locator("#equation-mbls")
    assert formula.locator("mjx-container").count() == 1, "the MbLS formula was not typeset"
    # the typeset formula is the MbLS one: MathJax keeps the TeX source for assistive tech
    tex = page.evaluate("() => MathJax.startup.document.getMathItemsWithin("
                        "document.getElementById('equation-mbls')).map(m => m.math).join(' ')")  # fmt: skip
    assert r"\max(0,\, d_k - m)" in tex and r"\frac{\alpha}{K}" in tex, tex
    formula.scroll_into_view_if_needed()
    page.screenshot(path=str(_artifacts() / "api-margin-loss.png"))
    assert "margin" in entry.inner_text()
    assert not page.outside, f"requests left 127.0.0.1: {page.outside}"
    assert not page.errors, page.errors
