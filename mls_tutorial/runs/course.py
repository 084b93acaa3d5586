"""The runs the course reads with its default parameters: what the package ships.

Notebooks 01-03 and 05, ``mls-tutorial demo`` and ``python docs/build.py`` all train on the
bundled MNI task with the default config (``DEFAULT_CONFIG``: tiny U-Net, 1000 iterations,
batch 16, seed 1, 2/2/4 simulated subjects, sampled labels); they differ only in the loss and
its knobs. ``course_configs()`` lists those, once each. CI runs every notebook with its
defaults and training forbidden, so a default that needs a run missing here fails, naming it.
"""

from __future__ import annotations

from typing import Any

from mls_tutorial.runs.config import normalize_config, run_name


def _config(loss: str, temperature_scaling: bool = False, **loss_kwargs: Any) -> dict[str, Any]:
    return {"loss": loss, "loss_kwargs": loss_kwargs, "temperature_scaling": temperature_scaling}


def _mbls(margin: float, alpha: float = 0.1) -> dict[str, Any]:
    return _config("mbls", margin=margin, alpha=alpha)


#: each reader's runs at its default parameters (the loss and its knobs; the rest is default)
READERS: dict[str, list[dict[str, Any]]] = {
    "01_constrained_optimization_view": [_config("ce")],
    "02_training_with_margin": [_config("ce"), _mbls(5.0), _mbls(10.0)],
    "03_calibration_evaluation": [
        *(_config(loss) for loss in ("ce", "ce_dice", "focal", "ls", "ecp", "svls", "nacl")),
        *(_mbls(m) for m in (5.0, 2.0, 10.0)),  # the loss table's m = 5, the margin sweep
        _config("ce", temperature_scaling=True),
        *(_config("ls", alpha=a) for a in (0.1, 0.3, 1.0)),  # section 8: the penalty weight
        *(_mbls(m, a) for m in (0.0, 5.0) for a in (0.1, 0.3, 1.0)),
    ],
    "05_class_adaptive_constraints": [
        _config("ce"),
        _mbls(5.0),
        _mbls(5.0, 1.0),
        _config("cals", margin=5.0),
    ],
    "demo": [_config("ce"), _config("mbls", margin=5.0)],
}


def course_configs() -> list[dict[str, Any]]:
    """Every normalised config in ``READERS``, once each, in first-seen order."""
    unique: dict[str, dict[str, Any]] = {}
    for configs in READERS.values():
        for config in configs:
            cfg = normalize_config(config)
            unique.setdefault(run_name(cfg), cfg)
    return list(unique.values())
