"""Checkpoints: written atomically (``mls_tutorial.files``: a temp file, then ``os.replace``),
so a reader sees the old complete file or the new one, never a torn one. Checkpoints hold only
tensors and primitive containers, so they load with ``torch.load(..., weights_only=True)`` (no
arbitrary code runs on load); ``rng_state`` puts every RNG in that form.

``atomic_write``, ``write_json`` and ``read_json`` live in ``mls_tutorial.files`` (re-exported
here for older imports).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mls_tutorial.files import atomic_write, read_json, write_json

__all__ = [
    "CHECKPOINT_NAME",
    "atomic_write",
    "finite_or_none",
    "load_checkpoint",
    "read_json",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "write_json",
]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save(state)`` atomically (temp file in the same folder, then ``os.replace``)."""
    atomic_write(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated/corrupt pickle, zip errors, ...
        raise ValueError(
            f"checkpoint {path} is corrupt or not a weights-only checkpoint: {exc}"
        ) from exc


# RNG state, in weights-only-loadable form -----------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), NumPy and Python RNG states as tensors and primitive containers."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``; its tensors may have been loaded onto any device (a checkpoint
    read with ``map_location="cuda"``): torch wants CPU byte tensors."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([c.cpu() for c in cuda])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def finite_or_none(x: float | None) -> float | None:
    """A float, or None when it is None/NaN/inf (for tables)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
