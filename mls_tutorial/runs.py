"""Run folders: train once, keep everything, reload instantly (load-if-cached-else-train).

A run is keyed by its config (``run_key``: a hash of the normalised config). Its folder
``<root>/<loss>-m<margin>-s<seed>-<key8>/`` holds::

    config.json     the normalised config (written first: marks the folder as this config's)
    checkpoint.pt   weights (last and best), optimizer, RNG, history; weights_only=True loadable
    history.json    losses and validation metrics (plots.training_curves)
    example.npz     one test slice: image, label, probs (K, H, W), true_prob (if known)
    metrics.json    evaluate() on the test volumes (written last: marks the run complete)
    *.png           figures (save_figures)

Every file is written atomically, and a folder is never reused for a different config, so no
written result is ever lost or mixed. ``load_or_train(config, root)`` returns the cached run when
``metrics.json`` exists, resumes from ``checkpoint.pt`` when an earlier run was interrupted, and
trains otherwise. ``temperature_scaling=True`` reuses the run trained without it (same training
config): only T is fitted (on the validation volumes) and the test set re-evaluated.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import json
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mls_tutorial.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    read_json,
    write_json,
)

CONFIG_FILE, HISTORY_FILE, METRICS_FILE, EXAMPLE_FILE = (
    "config.json",
    "history.json",
    "metrics.json",
    "example.npz",
)

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


# ---------------------------------------------------------------------------- config and keys


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
    from mls_tutorial.losses import LOSS_NAMES
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
    cfg["loss_kwargs"] = _with_defaults(loss_defaults(cfg["loss"]), cfg["loss_kwargs"])
    cfg["lr"] = float(cfg["lr"])
    cfg["amp"] = bool(cfg["amp"])
    cfg["temperature_scaling"] = bool(cfg["temperature_scaling"])
    return _json_normal(cfg)


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


#: each loss's knobs (what a sweep varies and a label shows when it is not the default)
KNOBS: dict[str, tuple[str, ...]] = {
    "focal": ("gamma",),
    "ls": ("alpha",),
    "ecp": ("beta",),
    "svls": ("sigma",),
    "nacl": ("alpha",),
    "mbls": ("margin", "alpha"),
    "cals": ("margin",),
    "acls": ("alpha", "margin"),
    "mdca": ("beta",),
    "hl1ace": ("ace_weight",),
    "sl1ace": ("ace_weight",),
}
KNOB_SYMBOLS = {
    "alpha": "a",
    "beta": "b",
    "gamma": "g",
    "sigma": "s",
    "margin": "m",
    "ace_weight": "w",
}


def run_label(config: dict[str, Any]) -> str:
    """A short label: ``CE``, ``MbLS m=5``, ``CE + TS``, ``LS a=0.3`` (knobs shown when they
    differ from the loss's default; the margin always)."""
    cfg = normalize_config(config)
    names = {
        "ce": "CE",
        "ce_dice": "CE+Dice",
        "focal": "FL",
        "ls": "LS",
        "ecp": "ECP",
        "svls": "SVLS",
        "mbls": "MbLS",
        "nacl": "NACL",
        "cals": "CALS",
        "acls": "ACLS",
        "mdca": "MDCA",
        "hl1ace": "hL1-ACE",
        "sl1ace": "sL1-ACE",
    }
    label = names.get(cfg["loss"], cfg["loss"])
    kwargs, defaults = cfg["loss_kwargs"], loss_defaults(cfg["loss"])
    if cfg["loss"] == "mbls":
        label += f" m={float(kwargs.get('margin', 10.0)):g}"
    for key in KNOBS.get(cfg["loss"], ()):
        if (cfg["loss"], key) != ("mbls", "margin") and kwargs.get(key) != defaults.get(key):
            label += f" {KNOB_SYMBOLS.get(key, key)}={kwargs[key]:g}"
    if cfg["temperature_scaling"]:
        label += " + TS"
    return label


# ---------------------------------------------------------------------------------- the Run


@dataclass
class Run:
    """A finished run folder (see the module docstring)."""

    path: Path
    config: dict[str, Any]
    history: dict[str, Any]
    metrics: dict[str, Any]
    cached: bool = False
    _example: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def key(self) -> str:
        return run_key(self.config)

    @property
    def label(self) -> str:
        return run_label(self.config)

    @property
    def margin(self) -> float | None:
        m = self.config.get("loss_kwargs", {}).get("margin")
        return None if m is None else float(m)

    def example(self) -> dict[str, np.ndarray]:
        """One test slice: ``image (H, W)``, ``label (H, W)``, ``probs (K, H, W)``, ``true_prob``."""
        if self._example is None:
            path = self.path / EXAMPLE_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found")
            with np.load(path) as npz:
                self._example = {k: npz[k] for k in npz.files}
        return self._example

    def load_model(self, device=None, which: str = "best"):
        """The trained U-Net (``best`` validation weights, or ``last``) on ``device``, in eval mode."""
        from mls_tutorial.device import pick_device
        from mls_tutorial.models import build_unet

        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        ckpt = load_checkpoint(self.path / CHECKPOINT_NAME)
        state = ckpt["best_model"] if which == "best" and ckpt.get("best_model") else ckpt["model"]
        info = self.metrics.get("data") or {}
        if "in_channels" not in info:  # an unfinished run: ask the dataset
            data = get_data(self.config)
            info = {"in_channels": data.in_channels, "num_classes": data.num_classes}
        model = build_unet(
            int(info["in_channels"]), int(info["num_classes"]), self.config["preset"]
        )
        model.load_state_dict(state)
        return model.to(pick_device(device)).eval()


def load_run(path: str | Path) -> Run:
    """Read a finished run folder; FileNotFoundError names a missing file."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")
    return Run(
        path=path,
        config=read_json(path / CONFIG_FILE),
        history=read_json(path / HISTORY_FILE),
        metrics=read_json(path / METRICS_FILE),
    )


def find_runs(root: str | Path, **where: Any) -> list[Run]:
    """Finished runs under ``root`` (recursively), sorted by label then seed.

    ``where`` filters on config values, e.g. ``find_runs("runs", loss="mbls", seed=1)``.
    Unreadable folders are skipped with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root not found: {root}")
    runs = []
    for metrics in sorted(root.rglob(METRICS_FILE)):
        if any(part.startswith(".") for part in metrics.relative_to(root).parts):
            continue  # .replaced/ and other hidden folders
        try:
            run = load_run(metrics.parent)
        except (FileNotFoundError, ValueError) as exc:
            warnings.warn(f"skipping {metrics.parent}: {exc}", stacklevel=2)
            continue
        if all(run.config.get(k) == v for k, v in where.items()):
            runs.append(run)
    return sorted(
        runs,
        key=lambda r: (
            r.config["loss"],
            r.margin or -1.0,
            r.config["temperature_scaling"],
            r.config["seed"],
            r.name,
        ),
    )


# -------------------------------------------------------------------- load-if-cached-else-train

_DATA_CACHE: dict[str, Any] = {}


def get_data(config: dict[str, Any]):
    """The config's ``DataBundle``, built once per process (a sweep shares it)."""
    from mls_tutorial.data import build_data

    cfg = normalize_config(config)
    key = json.dumps([cfg["data"], cfg["data_params"]], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = build_data(cfg["data"], **cfg["data_params"])
    return _DATA_CACHE[key]


def _claim_folder(path: Path, cfg: dict[str, Any]) -> None:
    """Write config.json, or check that an existing folder holds this very config."""
    cfg_path = path / CONFIG_FILE
    if cfg_path.is_file():
        existing = read_json(cfg_path)
        if existing != cfg:
            raise ValueError(
                f"{path} holds a different config (hash collision or edited config.json); "
                "refusing to overwrite it. Move the folder away or use another root."
            )
    elif path.exists() and any(path.iterdir()):
        raise ValueError(
            f"{path} exists, is not empty and has no {CONFIG_FILE}: refusing to use it"
        )
    else:
        write_json(cfg, cfg_path)


def _move_aside(path: Path, say) -> None:
    """Move a run folder to ``<root>/.replaced/<name>-<time>`` (an atomic rename)."""
    import time

    dest = path.parent / ".replaced" / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.rename(dest)
    say(f"[force] the previous {path.name} was moved to {dest}")


def load_or_train(
    config: dict[str, Any],
    root: str | Path = "runs",
    *,
    device=None,
    progress: bool = True,
    data=None,
    force: bool = False,
    figures: bool = True,
    log: Callable[[str], None] | None = print,
) -> Run:
    """The finished run for ``config`` under ``root``: cached if there, else trained now.

    ``data``: a prebuilt ``DataBundle`` matching the config (else built and cached in-process).
    ``force``: retrain even if the run exists; the old folder is first moved to
    ``<root>/.replaced/<name>-<time>/`` (kept, never deleted; ``find_runs`` skips it).
    ``log``: where one-line messages go (``print`` by default; None for silence).
    Under ``torchrun`` every rank trains (DDP) and evaluates; rank 0 alone writes files. Figures
    are not drawn while the process group is up (rebuilding a meter to plot it would start a
    collective on rank 0 alone); call ``save_figures(run)`` after it is destroyed (the CLI does).
    """
    from mls_tutorial.train import distributed as dist_utils

    say = log if (log is not None and dist_utils.is_main()) else (lambda _msg: None)
    cfg = normalize_config(config)
    root = Path(root)
    path = root / run_name(cfg)
    if not force and (path / METRICS_FILE).is_file():
        return _cached(path, cfg, say)
    with run_lock(root, path.name, say):
        dist_utils.barrier()
        if not force and (path / METRICS_FILE).is_file():  # finished while we waited
            return _cached(path, cfg, say)
        if dist_utils.is_main():
            if force and path.exists():
                _move_aside(path, say)
            _claim_folder(path, cfg)
        dist_utils.barrier()
        if cfg["temperature_scaling"]:
            return _temperature_scaled(cfg, root, path, device, progress, data, force, figures, say)
        return _train_and_evaluate(cfg, path, device, progress, data, force, figures, say)


def _cached(path: Path, cfg: dict[str, Any], say) -> Run:
    run = load_run(path)
    if run.config != cfg:
        raise ValueError(f"{path} holds a different config; refusing to reuse it")
    run.cached = True
    say(f"[cached] {run_label(cfg)}: reusing {path}")
    return run


LOCK_DIR = ".locks"


@contextlib.contextmanager
def run_lock(root: str | Path, name: str, say: Callable[[str], None] = print):
    """One writer per run folder: an OS-level lock on ``<root>/.locks/<name>.lock``.

    A second process asking for the same run waits here (and says so), then finds the finished
    run. The lock is the operating system's (``filelock``: ``flock`` on POSIX), released when
    its holder exits, so a crashed holder never blocks anyone. Under torchrun rank 0 alone locks.
    """
    from filelock import FileLock, Timeout

    from mls_tutorial.train import distributed as dist_utils

    if not dist_utils.is_main():
        yield
        return
    lock_dir = Path(root) / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_dir / f"{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"[wait] another process is working on {name}; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _seeded_model(cfg: dict[str, Any], data):
    from mls_tutorial.models import build_unet
    from mls_tutorial.train.sampling import RNG_LOCK, seed_everything

    with RNG_LOCK:  # seed and initialise in one step: threads of a process share the RNGs
        seed_everything(cfg["seed"])
        return build_unet(data.in_channels, data.num_classes, cfg["preset"])


def _train_and_evaluate(cfg, path, device, progress, data, force, figures, say) -> Run:
    from mls_tutorial.losses import build_loss
    from mls_tutorial.train import fit

    data = data if data is not None else get_data(cfg)
    model = _seeded_model(cfg, data)
    loss_fn = build_loss(cfg["loss"], **cfg["loss_kwargs"])
    resuming = (path / CHECKPOINT_NAME).is_file()
    say(
        f"[train] {run_label(cfg)}: {cfg['iterations']} iterations -> {path}"
        + (" (resuming from checkpoint)" if resuming else "")
    )
    history = fit(
        model,
        loss_fn,
        data,
        iterations=cfg["iterations"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        device=device,
        amp=cfg["amp"],
        seed=cfg["seed"],
        run_dir=path,
        resume=resuming,
        val_every=cfg["val_every"],
        select_metric=cfg["select_metric"],
        progress=progress,
        lr_step=cfg["lr_step"],
    )
    return _finish(cfg, path, model, data, history, None, device, figures)


def _temperature_scaled(cfg, root, path, device, progress, data, force, figures, say) -> Run:
    from mls_tutorial.train import distributed as dist_utils
    from mls_tutorial.train import fit_temperature

    base = load_or_train(
        {**cfg, "temperature_scaling": False},
        root,
        device=device,
        progress=progress,
        data=data,
        force=False,
        figures=figures,
        log=say,
    )
    data = data if data is not None else get_data(cfg)
    model = base.load_model(device)
    t = fit_temperature(model, data.val, device=device, amp=cfg["amp"])
    say(f"[temperature] {run_label(cfg)}: T = {t:.3f} fitted on {len(data.val)} validation volumes")
    if dist_utils.is_main():
        tmp = path / f".{CHECKPOINT_NAME}.copy"
        shutil.copyfile(base.path / CHECKPOINT_NAME, tmp)
        tmp.replace(path / CHECKPOINT_NAME)
    return _finish(cfg, path, model, data, base.history, t, device, figures)


def _finish(cfg, path, model, data, history, temperature, device, figures) -> Run:
    """Evaluate on the test volumes; write history, example and (last) metrics on rank 0."""
    from mls_tutorial.train import distributed as dist_utils
    from mls_tutorial.train import evaluate

    metrics = evaluate(
        model,
        data.test,
        data.num_classes,
        device=device,
        temperature=temperature,
        amp=cfg["amp"],
        class_names=data.class_names,
    )
    metrics["val"] = _val_metrics(model, data, temperature, device, cfg["amp"])
    metrics["data"] = {
        "description": data.description,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "class_names": list(data.class_names),
        "class_colors": list(data.class_colors),
    }
    run = Run(path=path, config=cfg, history=history, metrics=metrics)
    if dist_utils.is_main():
        write_json(history, path / HISTORY_FILE)
        _write_example(path / EXAMPLE_FILE, model, data, temperature, device, cfg["amp"])
        write_json(metrics, path / METRICS_FILE)
        if figures and not dist_utils.is_distributed():  # plots reduce meters: see load_or_train
            save_figures(run)
    dist_utils.barrier()
    return run


#: the validation numbers kept in metrics.json["val"] (the selection rules read them)
VAL_KEYS = ("dice", "ece", "cece", "ece_all", "gap", "nll", "brier", "tce", "ece_true", "prob_gap")


def _val_metrics(model, data, temperature, device, amp) -> dict[str, Any] | None:
    """``evaluate`` of the kept weights on the validation volumes (no HD95), headline keys."""
    from mls_tutorial.train import evaluate

    if not getattr(data, "val", None):
        return None
    res = evaluate(
        model,
        data.val,
        data.num_classes,
        device=device,
        temperature=temperature,
        amp=amp,
        hd95=False,
        class_names=data.class_names,
    )
    out = {key: res.get(key) for key in (*VAL_KEYS, "dice_bayes", "temperature")}
    out["per_class_dice"] = {name: v["dice"] for name, v in res["per_class"].items()}
    return out


def _write_example(path: Path, model, data, temperature, device, amp) -> None:
    """The test slice with the most foreground (middle of the first test volume on ties)."""
    import torch

    from mls_tutorial.device import pick_device
    from mls_tutorial.train.checkpoint import atomic_write
    from mls_tutorial.train.evaluation import predict_logits

    vol = data.test[0]
    fg = (vol.label != 0).flatten(1).sum(1)
    i = int(torch.argmax(fg)) if int(fg.max()) > 0 else vol.image.shape[0] // 2
    logits = predict_logits(model, vol.image[i : i + 1], device=pick_device(device), amp=amp)
    if temperature is not None:
        logits = logits / temperature
    arrays = {
        "image": vol.image[i, 0].numpy(),
        "label": vol.label[i].numpy(),
        "probs": torch.softmax(logits, 1)[0].cpu().numpy(),
        "slice_index": np.array(i),
    }
    if vol.prob is not None:
        arrays["true_prob"] = vol.prob[i].numpy()
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


# ------------------------------------------------------------------------------------ figures

FIGURES = (
    "reliability.png",
    "classwise_reliability.png",
    "logit_distances.png",
    "training_curves.png",
    "example.png",
)


def save_figures(run: Run) -> list[Path]:
    """Write the run's figures (reliability diagrams, logit distances, curves, one example)."""
    try:
        from matplotlib.figure import Figure

        from mls_tutorial import plots
    except ImportError as exc:  # plots is optional for training; say so, do not fail the run
        warnings.warn(f"figures skipped ({exc})", stacklevel=2)
        return []
    m = run.metrics
    names = m.get("data", {}).get("class_names")
    colors = m.get("data", {}).get("class_colors")
    title = f"{run.label} (foreground, test)"
    drawers = {
        "reliability.png": lambda ax: plots.reliability_diagram(m["meter"], ax=ax, title=title),
        "classwise_reliability.png": lambda ax: plots.classwise_reliability(
            m["meter"], class_names=names, ax=ax
        ),
        "logit_distances.png": lambda ax: plots.logit_distance_histogram(
            {run.label: m["histogram"]}, margin=run.margin, ax=ax
        ),
        "training_curves.png": lambda ax: plots.training_curves(
            run.history, ax=ax, class_names=names
        ),
    }
    if names and colors:
        ex = run.example()
        drawers["example.png"] = lambda ax: plots.segmentation_overlay(
            ex["image"], ex["label"], ex["probs"], names, colors, ax=ax
        )
    sizes = {
        "classwise_reliability.png": (13, 4),
        "training_curves.png": (15 if plots.multipliers.has_multipliers(run.history) else 10, 3.6),
        "example.png": (11, 3.8),
    }
    written = []
    for fname, draw in drawers.items():
        fig = Figure(figsize=sizes.get(fname, (6, 5)), layout="constrained")
        draw(fig.add_subplot())
        out = run.path / fname
        fig.savefig(out, dpi=110)
        written.append(out)
    return written
