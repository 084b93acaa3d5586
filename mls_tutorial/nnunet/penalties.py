"""Label-free calibration penalties on one nnU-Net output, torch only (the trainers import this).

Per voxel, logits ``z`` (K classes), ``s = softmax(z)``, logit distances ``d_k = max_j z_j - z_k``:

    margin (MbLS):   alpha * mean over voxels and classes of relu(d_k - m)
    entropy (ECP):  -beta  * mean over voxels of H(s),   H(s) = -sum_k s_k log s_k

"Voxels" are the voxels whose label is not nnU-Net's ignore label (all of them without one); with
none left the penalty is 0, as nnU-Net's CE is then 0. Both run with autocast off, half-precision
logits upcast to float32 (float32 and float64 kept), so mixed precision changes the logits, not the penalty's
arithmetic. The margin's normalisation (mean over classes) is the official MbLS code's and this
project's ``MarginLoss``; the entropy is summed over classes, as ``ConfidencePenaltyLoss``.

nnU-Net trains each deep-supervision output ``i`` with ``w_i * (loss_i + penalty_i)``: the
penalty is added per output (``PenalizedLoss``) inside nnU-Net's ``DeepSupervisionWrapper``,
whose weights are ``deep_supervision_weights``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "MarginPenalty",
    "EntropyPenalty",
    "PenalizedLoss",
    "check_knob",
    "deep_supervision_weights",
]


def check_knob(name: str, value) -> float:
    """``value`` as a float; a clear ``ValueError`` unless it is finite and ``>= 0``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _valid_mean(per_voxel: Tensor, target: Tensor | None, ignore_label: int | None) -> Tensor:
    """Mean of ``per_voxel`` (B, *spatial) over voxels whose ``target`` (B, 1, *spatial) is not
    ``ignore_label``."""
    if ignore_label is None or target is None:
        return per_voxel.mean()
    valid = (target[:, 0] != ignore_label).to(per_voxel.dtype)
    return (per_voxel * valid).sum() / valid.sum().clamp_min(1.0)


class _Penalty(nn.Module):
    """``forward(logits (B, K, *spatial), target (B, 1, *spatial)) -> scalar``."""

    knobs: tuple[str, ...] = ()

    def __init__(self, ignore_label: int | None = None):
        super().__init__()
        self.ignore_label = None if ignore_label is None else int(ignore_label)

    def per_voxel(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor | None = None) -> Tensor:
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        with torch.autocast(logits.device.type, enabled=False):
            return _valid_mean(self.per_voxel(z), target, self.ignore_label)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in (*self.knobs, "ignore_label"))


class MarginPenalty(_Penalty):
    """``alpha * mean relu(d - margin)`` over valid voxels and classes (MbLS's penalty)."""

    knobs = ("margin", "alpha")

    def __init__(self, margin: float = 10.0, alpha: float = 0.1, ignore_label: int | None = None):
        super().__init__(ignore_label)
        self.margin, self.alpha = check_knob("margin", margin), check_knob("alpha", alpha)

    def per_voxel(self, z: Tensor) -> Tensor:
        d = z.amax(dim=1, keepdim=True) - z
        return self.alpha * torch.relu(d - self.margin).mean(dim=1)


class EntropyPenalty(_Penalty):
    """``-beta * mean H(softmax(z))`` over valid voxels (ECP's penalty)."""

    knobs = ("beta",)

    def __init__(self, beta: float = 0.1, ignore_label: int | None = None):
        super().__init__(ignore_label)
        self.beta = check_knob("beta", beta)

    def per_voxel(self, z: Tensor) -> Tensor:
        log_s = torch.log_softmax(z, dim=1)
        return self.beta * (log_s.exp() * log_s).sum(dim=1)


class PenalizedLoss(nn.Module):
    """``loss(output, target) + penalty(output, target)`` for one deep-supervision output."""

    def __init__(self, loss: nn.Module, penalty: nn.Module):
        super().__init__()
        self.loss, self.penalty = loss, penalty

    def forward(self, net_output, target):
        return self.loss(net_output, target) + self.penalty(net_output, target)


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net v2's weights of its ``n_outputs`` deep-supervision outputs (full resolution first):
    ``w_i = 2^-i``, the lowest output's set to 0, normalised to sum 1 (``nnUNetTrainer._build_loss``
    without DDP; ``tests/test_nnunet_trainers.py`` checks them against nnU-Net's own)."""
    if not isinstance(n_outputs, int) or isinstance(n_outputs, bool) or n_outputs < 2:
        raise ValueError(
            f"n_outputs must be an int >= 2 (nnU-Net drops the lowest), got {n_outputs!r}"
        )
    w = [2.0**-i for i in range(n_outputs - 1)] + [0.0]
    return [x / sum(w) for x in w]
