"""Shared fixtures: where test artifacts go, and the fast parameters of each notebook
(``NOTEBOOK_FAST_PARAMETERS``, defined in ``mls_tutorial/notebook_parameters.py`` and shared
with ``docs/build.py --fast``).

Markers ``slow`` and ``browser`` are declared in pyproject.toml; every test that starts a
notebook kernel (``kernel_ready``) or a browser is marked ``slow`` here, so that
``python -m pytest -m "not slow"`` is the fast suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mls_tutorial.notebook_parameters import NOTEBOOK_FAST_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]


#: fixtures that only a test running a notebook or a browser asks for
SLOW_FIXTURES = {"kernel_ready"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that runs a notebook (``kernel_ready``) or drives a browser."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker(
            "browser"
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test-artifacts/`` at the repository root (gitignored; CI uploads it on failure)."""
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def notebook_fast_parameters() -> dict[str, dict]:
    """Fast parameters per notebook stem (a copy: tests may add their own keys)."""
    return {k: dict(v) for k, v in NOTEBOOK_FAST_PARAMETERS.items()}
