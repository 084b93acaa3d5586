"""Run folders: what a finished run holds on disk, reading it back, and one writer per folder.

A run's folder ``<root>/<run_name>/`` holds::

    config.json     the normalised config (written first: marks the folder as this config's)
    checkpoint.pt   training state (weights, optimizer, RNG, history) for resuming; not shipped
    weights.pt      the weights that metrics.json describes (a state dict, weights_only loadable)
    history.json    losses and validation metrics (plots.training_curves)
    example.npz     one test slice: image, label, probs (K, H, W), true_prob (if known)
    metrics.json    evaluate() on the test volumes (written last: marks the run complete)
    shipped.json    only in a run copied from the package's shipped runs: its manifest entry
    *.png           figures (save_figures)

Every file is written atomically, and a folder is never reused for a different config.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mls_tutorial.files import read_json, write_json
from mls_tutorial.runs.config import get_data, run_key, run_label
from mls_tutorial.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

CONFIG_FILE, HISTORY_FILE, METRICS_FILE, EXAMPLE_FILE, WEIGHTS_FILE, SHIPPED_FILE = (
    "config.json",
    "history.json",
    "metrics.json",
    "example.npz",
    "weights.pt",
    "shipped.json",
)


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
        """The trained U-Net on ``device``, in eval mode: ``best`` is the kept weights (those
        metrics.json describes: the best validation weights, or the last with
        ``select_metric='last'``), ``last`` the last training step's."""
        from mls_tutorial.device import pick_device
        from mls_tutorial.models import build_unet

        if which not in ("best", "last"):
            raise ValueError(f"which must be 'best' or 'last', got {which!r}")
        info = self.metrics.get("data") or {}
        if "in_channels" not in info:  # an unfinished run: ask the dataset
            data = get_data(self.config)
            info = {"in_channels": data.in_channels, "num_classes": data.num_classes}
        model = build_unet(
            int(info["in_channels"]), int(info["num_classes"]), self.config["preset"]
        )
        model.load_state_dict(self._state_dict(which))
        return model.to(pick_device(device)).eval()

    def _state_dict(self, which: str) -> dict:
        kept_is_last = self.config.get("select_metric") == "last"
        weights = self.path / WEIGHTS_FILE
        if weights.is_file() and (which == "best" or kept_is_last):
            return load_checkpoint(weights)
        ckpt_path = self.path / CHECKPOINT_NAME
        if not ckpt_path.is_file():
            raise FileNotFoundError(
                f"{self.path} has no {CHECKPOINT_NAME}"
                + (
                    f" (its {WEIGHTS_FILE} holds the kept weights, not the last)"
                    if weights.is_file()
                    else ""
                )
            )
        ckpt = load_checkpoint(ckpt_path)
        return ckpt["best_model"] if which == "best" and ckpt.get("best_model") else ckpt["model"]


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


def claim_folder(path: Path, cfg: dict[str, Any]) -> None:
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


def move_aside(path: Path, say) -> None:
    """Move a run folder to ``<root>/.replaced/<name>-<time>[-n]`` (an atomic rename)."""
    stem = path.parent / ".replaced" / f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    dest, n = stem, 1
    while dest.exists():  # two moves within one second
        n += 1
        dest = stem.with_name(f"{stem.name}-{n}")
    path.rename(dest)
    say(f"[kept] the previous {path.name} was moved to {dest}")


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
