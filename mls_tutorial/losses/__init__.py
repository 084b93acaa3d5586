"""Segmentation losses for calibration: MbLS, every baseline of the paper, and newer ones.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits ``(N, K, *spatial)``
(0 to 3 spatial dims) and integer labels ``(N, *spatial)`` or ``(N, 1, *spatial)``; it returns
the mean over non-ignored pixels. Bad input raises ``ValueError`` naming the problem. Half
precision logits are upcast to float32 and autocast is switched off inside the loss.

    from mls_tutorial.losses import MarginLoss, build_loss, logit_distances
    loss_fn = build_loss("mbls", margin=10.0, alpha=0.1)

Names for :func:`build_loss`: ``ce``, ``ce_dice``, ``focal``, ``ls``, ``ecp``, ``svls``, ``mbls``,
``nacl``, and the newer ``cals`` (class-adaptive multipliers), ``acls``, ``mdca``, ``hl1ace``,
``sl1ace`` (``LOSS_NAMES``, from ``mls_tutorial.registry``: labels, knobs, their defaults and
ranges, families). Every loss builds with no argument. MONAI is imported only by
``DiceCELoss``, ``NACLLoss`` and the L1-ACE losses (their Dice term).

A loss with state that validation updates (``CALSLoss``) implements :class:`AdaptiveLoss`;
``fit`` drives it (``adaptive.py``).

Every loss also takes ``validate=True``: the value checks (finite logits, labels in range) cost
one fused reduction and one device sync per call; pass False in hot loops once the data are
trusted. On CUDA with Triton, ``MarginLoss`` runs as one fused kernel (``fused=False`` opts out).
Speed against plain CE: ``docs/benchmarks.md``.
"""

from __future__ import annotations

from torch import nn

from mls_tutorial.registry import LOSS_NAMES, spec

from ._base import PixelLoss
from .acls import ACLSLoss
from .adaptive import AdaptiveLoss, CALSLoss, is_adaptive
from .baselines import ConfidencePenaltyLoss, CrossEntropyLoss, FocalLoss, LabelSmoothingLoss
from .calibration_error import HardL1ACELoss, MDCALoss, SoftL1ACELoss, l1_ace
from .dice import DiceCELoss
from .margin import MarginLoss, equilibrium_distance, logit_distances
from .spatial import NACLLoss, SVLSLoss, svls_kernel

__all__ = [
    "equilibrium_distance",
    "LOSS_NAMES",
    "ACLSLoss",
    "AdaptiveLoss",
    "CALSLoss",
    "ConfidencePenaltyLoss",
    "CrossEntropyLoss",
    "DiceCELoss",
    "FocalLoss",
    "HardL1ACELoss",
    "LabelSmoothingLoss",
    "MDCALoss",
    "MarginLoss",
    "NACLLoss",
    "PixelLoss",
    "SVLSLoss",
    "SoftL1ACELoss",
    "build_loss",
    "is_adaptive",
    "l1_ace",
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
    "cals": CALSLoss,
    "acls": ACLSLoss,
    "mdca": MDCALoss,
    "hl1ace": HardL1ACELoss,
    "sl1ace": SoftL1ACELoss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """The loss called ``name`` (one of ``LOSS_NAMES``) built with ``kwargs``.

    >>> build_loss("mbls", margin=5.0)
    MarginLoss(margin=5.0, alpha=0.1, ignore_index=-100)
    """
    return _LOSSES[spec(name).name](**kwargs)
