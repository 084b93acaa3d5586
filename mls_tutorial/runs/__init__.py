"""Runs: train once, keep everything, reload instantly (load-if-cached-else-train).

A run is keyed by its config (``run_key``: a hash of the normalised config) and lives in
``<root>/<loss>-m<margin>-s<seed>-<key8>/``. One idea per module:

- ``config``: the config keys and defaults, ``normalize_config``, ``run_key``, ``run_name``,
  ``run_label``, ``get_data`` (the config's dataset, cached per process by ``data.cache``);
- ``folder``: what a run folder holds, ``Run``, ``load_run``, ``find_runs``, the folder lock;
- ``orchestration``: ``load_or_train`` (cached, shipped, resumed or trained), evaluation;
- ``shipped``: the course's runs shipped as package data, found by config;
- ``course``: the configs the course reads with its default parameters;
- ``figures``: each run's figures.
"""

from mls_tutorial.files import write_json  # re-exported: results.py reads it from here
from mls_tutorial.runs.config import (
    DEFAULT_CONFIG,
    KNOB_SYMBOLS,
    KNOBS,
    get_data,
    loss_defaults,
    normalize_config,
    run_key,
    run_label,
    run_name,
)
from mls_tutorial.runs.figures import FIGURES, save_figures
from mls_tutorial.runs.folder import (
    CONFIG_FILE,
    EXAMPLE_FILE,
    HISTORY_FILE,
    LOCK_DIR,
    METRICS_FILE,
    SHIPPED_FILE,
    WEIGHTS_FILE,
    Run,
    find_runs,
    load_run,
    run_lock,
)
from mls_tutorial.runs.orchestration import (
    NO_TRAIN_ENV,
    VAL_KEYS,
    TrainingForbidden,
    load_or_train,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_CONFIG",
    "EXAMPLE_FILE",
    "FIGURES",
    "HISTORY_FILE",
    "KNOBS",
    "KNOB_SYMBOLS",
    "LOCK_DIR",
    "METRICS_FILE",
    "NO_TRAIN_ENV",
    "SHIPPED_FILE",
    "VAL_KEYS",
    "WEIGHTS_FILE",
    "Run",
    "TrainingForbidden",
    "find_runs",
    "get_data",
    "load_or_train",
    "load_run",
    "loss_defaults",
    "normalize_config",
    "run_key",
    "run_label",
    "run_lock",
    "run_name",
    "save_figures",
    "write_json",
]
