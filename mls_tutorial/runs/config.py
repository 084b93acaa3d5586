"""A run's identity: its config, normalised (defaults filled, values checked), and its key.

``run_key(config)`` is a hash of the normalised config, so ``mbls`` and ``mbls, margin=10``
(the default) are the same run; ``run_name`` and ``run_label`` are what folders and tables show.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import math
from collections.abc import Callable
from typing import Any

from mls_tutorial.registry import LOSS_NAMES, LOSSES, config_label

#: Every config key and its default (the demo's over-confident setting on the bundled data).
DEFAULT_CONFIG: dict[str, Any] = {
    "data": "mni",
    "data_params": {},
    "loss": "ce",
    "loss_kwargs": {},
    "preset": "tiny",
    "iterations": 1000,
    "batch_size": 16,
    "lr": 1e-3,
    "lr_step": None,
    "seed": 1,
    "val_every": 100,
    "select_metric": "last",
    "amp": True,
    "temperature_scaling": False,
}


def _json_normal(obj: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python: what the config looks like after a JSON trip."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _signature_defaults(fn: Callable) -> dict[str, Any]:
    """Keyword defaults of ``fn`` (or of a class's ``__init__``)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.kind in kinds and p.default is not inspect.Parameter.empty
    }


def loss_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of loss ``name`` (so ``mbls`` and ``mbls, margin=10`` share a key)."""
    return dict(_loss_default_items(name))


@functools.cache
def _loss_default_items(name: str) -> tuple:
    from mls_tutorial.losses import build_loss

    return tuple(_signature_defaults(type(build_loss(name))).items())


def _with_defaults(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated by ``given``; an int given where the default is a float becomes a
    float (``margin=5`` and ``margin=5.0`` are the same run)."""
    out = dict(defaults)
    for key, value in given.items():
        default = defaults.get(key)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


def normalize_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults (config, dataset and loss keyword defaults) and check every value."""
    from mls_tutorial.models import PRESETS

    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(DEFAULT_CONFIG)}")
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update(copy.deepcopy(config))
    if cfg["loss"] not in LOSS_NAMES:
        raise ValueError(f"loss={cfg['loss']!r} is unknown; valid losses: {list(LOSS_NAMES)}")
    if cfg["preset"] not in PRESETS:
        raise ValueError(f"preset={cfg['preset']!r} is unknown; valid presets: {sorted(PRESETS)}")
    for key in ("iterations", "batch_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be an int >= 1, got {cfg[key]!r}")
    for key in ("seed", "val_every"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 0:
            raise ValueError(f"{key} must be an int >= 0, got {cfg[key]!r}")
    if not (isinstance(cfg["lr"], int | float) and math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        raise ValueError(f"lr must be a finite number > 0, got {cfg['lr']!r}")
    if cfg["lr_step"] is not None and (not isinstance(cfg["lr_step"], int) or cfg["lr_step"] < 1):
        raise ValueError(f"lr_step must be None or an int >= 1, got {cfg['lr_step']!r}")
    from mls_tutorial.train.engine import VAL_METRICS

    if cfg["select_metric"] != "last" and cfg["select_metric"] not in VAL_METRICS:
        raise ValueError(
            f"select_metric={cfg['select_metric']!r} is unknown; valid: 'last' or "
            f"{sorted(VAL_METRICS)}"
        )
    for key in ("data_params", "loss_kwargs"):
        if not isinstance(cfg[key], dict):
            raise ValueError(f"{key} must be a dict, got {type(cfg[key]).__name__}")
    from mls_tutorial.data import DATASETS

    if cfg["data"] not in DATASETS:
        raise ValueError(f"data={cfg['data']!r} is unknown; valid: {sorted(DATASETS)}")
    data_defaults = _signature_defaults(DATASETS[cfg["data"]])
    bad = sorted(set(cfg["data_params"]) - set(inspect.signature(DATASETS[cfg["data"]]).parameters))
    if bad:
        raise ValueError(f"unknown data_params {bad} for data={cfg['data']!r}")
    cfg["data_params"] = _with_defaults(data_defaults, cfg["data_params"])
    defaults = loss_defaults(cfg["loss"])
    bad = sorted(set(cfg["loss_kwargs"]) - set(defaults))
    if bad:
        raise ValueError(
            f"unknown loss_kwargs {bad} for loss={cfg['loss']!r}; its parameters: "
            f"{', '.join(sorted(defaults))}"
        )
    cfg["loss_kwargs"] = _with_defaults(defaults, cfg["loss_kwargs"])
    cfg["lr"] = float(cfg["lr"])
    cfg["amp"] = bool(cfg["amp"])
    cfg["temperature_scaling"] = bool(cfg["temperature_scaling"])
    return _json_normal(cfg)


def get_data(config: dict[str, Any]):
    """The config's ``DataBundle``, built once per process (``data.cache``: a sweep shares it)."""
    from mls_tutorial.data.cache import cached_data

    cfg = normalize_config(config)
    return cached_data(cfg["data"], cfg["data_params"])


def run_key(config: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of the normalised config (key order does not matter)."""
    text = json.dumps(normalize_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_name(config: dict[str, Any]) -> str:
    """``<loss>[-ts]-m<margin>-s<seed>-<key8>``; ``mna`` when the loss has no margin."""
    cfg = normalize_config(config)
    margin = cfg["loss_kwargs"].get("margin")
    m = "na" if margin is None else f"{float(margin):g}"
    loss = cfg["loss"] + ("-ts" if cfg["temperature_scaling"] else "")
    return f"{loss}-m{m}-s{cfg['seed']}-{run_key(cfg)[:8]}"


#: each loss's knobs and their label symbols (from ``mls_tutorial.registry``)
KNOBS: dict[str, tuple[str, ...]] = {s.name: s.knob_names for s in LOSSES if s.knobs}
KNOB_SYMBOLS = {k.name: k.symbol for s in LOSSES for k in s.knobs}


def run_label(config: dict[str, Any]) -> str:
    """A short label: ``CE``, ``MbLS m=5``, ``CE + TS``, ``LS a=0.3`` (knobs shown when they
    differ from the loss's default; the margin always): ``registry.config_label``."""
    return config_label(normalize_config(config))
