"""Checking and preparing ``(logits, target)`` pairs: the one place every loss validates input.

Conventions (docs/architecture.md): logits ``(N, K, *spatial)`` with 0 to 3 spatial dims, target
``(N, *spatial)`` or ``(N, 1, *spatial)`` of integer class indices in ``[0, K)`` or equal to
``ignore_index``. Half-precision logits are upcast to float32.

Shape and dtype checks are free. The value checks (finite logits, labels in range) need one
device-to-host sync; they are fused into a single small reduction (a float32 sum of the logits,
which is finite exactly when every logit is finite unless it overflows, plus the min and max of
the target) so they cost about two memory passes over the inputs. ``validate=False`` skips them
in hot loops: inputs are then trusted, and a target made only of ignored pixels gives NaN
instead of an error. On an accelerator it also avoids the sync (every pixel is then treated as
possibly ignored, which costs a few small per-pixel tensors); on CPU, where a sync is free, a
min/max of the target still tells whether any pixel is ignored.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Pixels",
    "check_logits",
    "check_nonnegative",
    "no_autocast",
    "prepare",
    "raise_bad_labels",
    "squeeze_target",
]

_HALF = (torch.float16, torch.bfloat16)


def check_nonnegative(**values: float) -> None:
    """Raise ``ValueError`` naming any argument that is negative, NaN or infinite."""
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    """Check dtype and rank of ``(N, K, *spatial)`` logits; return them upcast to >= float32."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")
    if not 2 <= logits.dim() <= 5:
        raise ValueError(
            f"{name} must have shape (N, K, *spatial) with 0 to 3 spatial dims, "
            f"got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"{name} must have K >= 2 classes in dim 1, got shape {tuple(logits.shape)}"
        )
    return logits.float() if logits.dtype in _HALF else logits


def no_autocast(tensor: Tensor):
    """A context that switches autocast off on the tensor's device (losses compute in float32)."""
    try:
        return torch.autocast(device_type=tensor.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


@dataclass
class Pixels:
    """A checked batch. ``valid is None`` means that every pixel counts (no ignored pixel).

    ``index`` ``(N, 1, *spatial)`` holds the labels with ignored pixels sent to a valid class, so
    it can be used with ``gather``/``scatter``; ``count`` is the number of counted pixels (an int,
    or a 0-dim tensor when ``valid`` is given, so that no sync is needed).
    """

    logits: Tensor
    target: Tensor
    index: Tensor
    valid: Tensor | None
    count: Tensor | int
    ignore_index: int | None = None

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @property
    def spatial_dims(self) -> int:
        return self.logits.dim() - 2

    def weight(self) -> Tensor | None:
        """``valid / count`` as ``(N, 1, *spatial)`` floats, or None when every pixel counts."""
        if self.valid is None:
            return None
        return self.valid.to(self.logits.dtype) / self.count

    def mean(self, per_pixel: Tensor) -> Tensor:
        """Mean of a per-pixel tensor (``(N, *spatial)`` or ``(N, 1, *spatial)``) over counted pixels."""
        if self.valid is None:
            return per_pixel.mean()
        valid = self.valid if per_pixel.dim() == self.valid.dim() else self.valid.squeeze(1)
        return torch.where(valid, per_pixel, 0.0).sum() / self.count


def squeeze_target(logits: Tensor, target: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}")
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target.squeeze(1)
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"logits and target shapes differ: logits {tuple(logits.shape)} needs target of shape "
            f"{expected} or {(logits.shape[0], 1, *logits.shape[2:])}, got {tuple(target.shape)}"
        )
    return target.long()


def raise_bad_labels(target: Tensor, k: int, ignore_index: int | None) -> None:
    """Raise ``ValueError`` listing target values outside ``[0, k)`` other than ignore_index."""
    out_of_range = (target < 0) | (target >= k)
    if ignore_index is not None:
        out_of_range &= target != ignore_index
    if bool(out_of_range.any()):
        bad = torch.unique(target[out_of_range])[:5].tolist()
        raise ValueError(
            f"target has values outside [0, {k}) (K = logits.shape[1]) that are not "
            f"ignore_index={ignore_index}: {bad}"
        )


def _check_values(logits: Tensor, target: Tensor, ignore_index: int | None) -> bool:
    """Check finite logits and labels in range with one sync; return True if no pixel is ignored."""
    k = logits.shape[1]
    if target.numel() == 0:
        raise ValueError("target is empty: there is no pixel to average over")
    tmin, tmax = torch.aminmax(target)
    total, lo, hi = torch.stack([logits.sum().double(), tmin.double(), tmax.double()]).tolist()
    if not math.isfinite(total) and not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf")
    has_ignore = ignore_index is not None
    if 0 <= lo and hi < k:  # every label is a class; ignore_index may still be one of them
        if has_ignore and 0 <= ignore_index < k:
            n_ignored = int((target == ignore_index).sum())
            if n_ignored == target.numel():
                raise ValueError(f"every target pixel equals ignore_index={ignore_index}")
            return n_ignored == 0
        return True
    raise_bad_labels(target, k, ignore_index)
    if bool((target == ignore_index).all()):
        raise ValueError(f"every target pixel equals ignore_index={ignore_index}")
    return False


def _nothing_ignored(target: Tensor, k: int, ignore_index: int) -> bool:
    if 0 <= ignore_index < k:
        return not bool((target == ignore_index).any())
    lo, hi = torch.aminmax(target)
    return not int(lo) <= ignore_index <= int(hi)


def prepare(
    logits: Tensor, target: Tensor, ignore_index: int | None, validate: bool = True
) -> Pixels:
    """Check ``(logits, target)`` and return a :class:`Pixels` batch (logits upcast to float32)."""
    logits = check_logits(logits)
    target = squeeze_target(logits, target)
    if validate:
        all_valid = _check_values(logits, target, ignore_index)
    elif ignore_index is None:
        all_valid = True
    elif logits.device.type == "cpu":  # no device sync to fear: look for ignored pixels
        all_valid = _nothing_ignored(target, logits.shape[1], ignore_index)
    else:  # trust the input, never sync: treat every pixel as possibly ignored
        all_valid = False
    index = target.unsqueeze(1)
    if all_valid:
        return Pixels(logits, target, index, None, target.numel(), ignore_index)
    valid = index != ignore_index
    if not 0 <= ignore_index < logits.shape[1]:
        index = index.clamp(0, logits.shape[1] - 1)
    return Pixels(logits, target, index, valid, valid.sum(), ignore_index)
