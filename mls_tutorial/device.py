"""The one place that chooses the device and the mixed-precision policy.

``pick_device()`` returns cuda, then mps, then cpu (an explicit name overrides it).
``autocast(device)`` enables float16/bfloat16 autocast on CUDA only; on CPU and MPS it is a no-op,
so every code path runs unchanged on a laptop.
"""

from __future__ import annotations

import contextlib

import torch


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """Return ``torch.device(name)`` or the best available one: cuda > mps > cpu."""
    if name is not None and str(name) != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} requested but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r} requested but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where supported on CUDA, else float16 on CUDA, None elsewhere (no AMP)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    """Autocast context on CUDA (bf16/fp16); a null context on CPU/MPS or when disabled."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
