"""Shared fixtures: where test artifacts go, and the fast parameters of each notebook
(``NOTEBOOK_FAST_PARAMETERS``, defined in ``notebook_parameters.py`` and shared with
``docs/build.py --fast``).

Markers ``slow`` and ``browser`` are declared in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from notebook_parameters import NOTEBOOK_FAST_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]


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
