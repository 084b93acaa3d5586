"""CE + Dice, the usual segmentation baseline, with the background choice made explicit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import PixelLoss
from ._inputs import Pixels, check_nonnegative

__all__ = ["DiceCELoss"]


class DiceCELoss(PixelLoss):
    """``lambda_ce * CE + lambda_dice * Dice``, the Dice term computed by ``monai.losses.DiceLoss``.

    Dice loss, per image and class (``batch=False``), then averaged: ``1 - (2 sum p g + smooth_nr) /
    (sum p + sum g + smooth_dr)`` with ``p = softmax(z)`` and ``g`` the one-hot labels. Without
    ignored pixels it equals ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``.

    Args:
        include_background: keep class 0 in the Dice average. Default True, as the official MbLS
            CE+Dice baseline and MONAI do (the official wrapper does it silently); pass False to
            score only the foreground classes, the usual choice when background dominates.
        ignore_index: ignored pixels are removed from both ``p`` and ``g`` (so from every sum of
            the Dice term) and from the CE mean.
    """

    def __init__(
        self,
        include_background: bool = True,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        squared_pred: bool = False,
        batch: bool = False,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        if not isinstance(include_background, bool):
            raise ValueError(
                f"include_background must be True or False, got {include_background!r}"
            )
        check_nonnegative(
            lambda_ce=lambda_ce, lambda_dice=lambda_dice, smooth_nr=smooth_nr, smooth_dr=smooth_dr
        )
        from monai.losses import DiceLoss

        self.include_background = include_background
        self.lambda_ce, self.lambda_dice = float(lambda_ce), float(lambda_dice)
        self.dice = DiceLoss(
            include_background=include_background,
            softmax=False,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )

    def _hparams(self):
        return ("include_background", "lambda_ce", "lambda_dice", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        probs = torch.softmax(px.logits, dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, px.index, 1.0)
        if px.valid is None:
            ce = F.cross_entropy(px.logits, px.target)
        else:
            ce = F.cross_entropy(px.logits, px.target, ignore_index=px.ignore_index)
            valid = px.valid.to(probs.dtype)
            probs, onehot = probs * valid, onehot * valid
        return self.lambda_ce * ce + self.lambda_dice * self.dice(probs, onehot)
