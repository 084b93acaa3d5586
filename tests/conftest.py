"""Shared fixtures: where test artifacts go, and the fast parameters of each notebook.

Markers ``slow`` and ``browser`` are declared in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fast parameters for CI, per notebook (papermill injects them after the `parameters` cell).
# `output_dir` and `runs_dir` are added by the tests. Sizes chosen so that the whole notebook
# suite runs in a few minutes on 2 CPU cores; short runs do NOT reach the over-confident regime.
_FAST_TRAINING = {
    "device": "cpu",
    "iterations": 30,
    "batch_size": 4,
    "val_every": 15,
    "n_train_subjects": 1,
    "n_val_subjects": 1,
    "n_test_subjects": 1,
}
NOTEBOOK_FAST_PARAMETERS = {
    "01_constrained_optimization_view": dict(_FAST_TRAINING),
    "02_training_with_margin": {**_FAST_TRAINING, "margins": [2.0, 10.0]},
    "03_calibration_evaluation": {
        **_FAST_TRAINING,
        "losses": ["ce", "ls", "mbls"],
        "sweep_margins": [2.0, 10.0],
    },
    "04_your_own_data": {
        "device": "cpu",
        "iterations": 30,
        "batch_size": 4,
        "n_patients": 3,
        "volume_size": 48,
    },
}


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
