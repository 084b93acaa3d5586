"""The notebooks' fast parameters, in one place: the tests and ``docs/build.py --fast`` use them.

Papermill injects them after each notebook's ``parameters`` cell; ``output_dir`` and ``runs_dir``
are added by the caller. Sizes chosen so that the whole notebook suite runs in a few minutes on
2 CPU cores; short runs do NOT reach the over-confident regime. Plain data, no imports: the
docs build and the tests read it from here (neither depends on the other).
"""

from __future__ import annotations

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
        "weight_alphas": [0.1, 1.0],
    },
    "05_class_adaptive_constraints": dict(_FAST_TRAINING),
    "06_when_does_the_margin_help": {"device": "cpu"},  # reads the study: nothing to shorten
    "07_mbls_in_nnunet": {"device": "cpu", "batch_size": 2},  # no training: smaller outputs
    "04_your_own_data": {
        "device": "cpu",
        "iterations": 30,
        "batch_size": 4,
        "n_patients": 3,
        "volume_size": 48,
    },
}
