"""Sphinx configuration of the course website (built by ``python docs/build.py``).

The source tree is assembled by ``docs/build.py`` in ``docs/_build/src`` (the README as the
landing page, ``docs/*.md``, the executed notebooks, ``api.md``); this file only configures
the rendering. Notebooks are never executed here (``nb_execution_mode = "off"``), and math is
typeset by a MathJax copied into the build (``sphinx-mathjax-offline``): no CDN.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # autodoc imports mls_tutorial even without an install

project = "mls-tutorial"
author = "mls-tutorial developers"
copyright = "mls-tutorial developers, MIT licence"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' "Args:" / "Returns:" sections
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 files into _static/mathjax (the module name has dashes)
]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# MyST: $...$ and $$...$$ math in the markdown pages and notebooks
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# MyST-NB: render the executed notebooks as they are; no widget JavaScript (build.py has
# replaced widgets by their figures), so the pages load nothing from the network
nb_execution_mode = "off"
nb_ipywidgets_js = {}
nb_output_stderr = "show"  # as in JupyterLab (e.g. a library's FutureWarning)
nb_merge_streams = True
# Markdown outputs (the notebooks' result tables, display(Markdown(...))) rendered as MyST, which
# has tables; the default, CommonMark, has none and printed them as a paragraph of pipes
nb_render_markdown_format = "myst"

# autodoc: the API reference (docs/site/api.md)
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # not torch.nn.Module.forward's "Define the computation..."
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "sphinx_book_theme"
html_title = "mls-tutorial"
html_theme_options = {
    "repository_url": "https://github.com/mls-tutorial/mls-tutorial",
    "repository_branch": "main",
    "path_to_docs": "",
    "use_repository_button": True,
    "launch_buttons": {"binderhub_url": "https://mybinder.org", "notebook_interface": "jupyterlab"},
    "show_toc_level": 2,
}
html_last_updated_fmt = None
