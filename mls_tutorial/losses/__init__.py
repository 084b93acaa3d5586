"""Segmentation losses for calibration: MbLS and every baseline of the paper.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits ``(N, K, *spatial)``
(0 to 3 spatial dims) and integer labels ``(N, *spatial)`` or ``(N, 1, *spatial)``; it returns
the mean over non-ignored pixels. Bad input raises ``ValueError`` naming the problem. Half
precision logits are upcast to float32 and autocast is switched off inside the loss.

    from mls_tutorial.losses import MarginLoss, build_loss, logit_distances
    loss_fn = build_loss("mbls", margin=10.0, alpha=0.1)

Names for :func:`build_loss`: ``ce``, ``ce_dice``, ``focal``, ``ls``, ``ecp``, ``svls``, ``mbls``,
``nacl`` (``LOSS_NAMES``). MONAI is imported only by ``DiceCELoss`` and ``NACLLoss``.

Every loss also takes ``validate=True``: the value checks (finite logits, labels in range) cost
one fused reduction and one device sync per call; pass False in hot loops once the data are
trusted. On CUDA with Triton, ``MarginLoss`` runs as one fused kernel (``fused=False`` opts out).
Speed against plain CE: ``docs/benchmarks.md``.
"""

from __future__ import annotations

from torch import nn

from ._base import PixelLoss
from .baselines import ConfidencePenaltyLoss, CrossEntropyLoss, FocalLoss, LabelSmoothingLoss
from .dice import DiceCELoss
from .margin import MarginLoss, logit_distances
from .spatial import NACLLoss, SVLSLoss, svls_kernel

__all__ = [
    "LOSS_NAMES",
    "ConfidencePenaltyLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "FocalLoss",
    "LabelSmoothingLoss",
    "MarginLoss",
    "NACLLoss",
    "PixelLoss",
    "SVLSLoss",
    "build_loss",
    "logit_distances",
    "svls_kernel",
]

_LOSSES: dict[str, type[PixelLoss]] = {
    "ce": CrossEntropyLoss,
    "ce_dice": DiceCELoss,
    "focal": FocalLoss,
    "ls": LabelSmoothingLoss,
    "ecp": ConfidencePenaltyLoss,
    "svls": SVLSLoss,
    "mbls": MarginLoss,
    "nacl": NACLLoss,
}
LOSS_NAMES: tuple[str, ...] = tuple(_LOSSES)


def build_loss(name: str, **kwargs) -> nn.Module:
    """The loss called ``name`` (one of ``LOSS_NAMES``) built with ``kwargs``.

    >>> build_loss("mbls", margin=5.0)
    MarginLoss(margin=5.0, alpha=0.1, ignore_index=-100)
    """
    try:
        cls = _LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss name {name!r}; valid names: {', '.join(LOSS_NAMES)}"
        ) from None
    return cls(**kwargs)
