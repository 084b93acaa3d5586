"""Cross entropy and the pixel-wise calibration baselines of the paper: LS, ECP, focal loss.

Notation per pixel: logits ``z``, ``p = softmax(z)``, label ``y``, ``K`` classes; every loss is
the mean over counted (non-ignored) pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import PixelLoss
from ._inputs import Pixels, check_nonnegative

__all__ = ["CrossEntropyLoss", "LabelSmoothingLoss", "ConfidencePenaltyLoss", "FocalLoss"]


def _cross_entropy(px: Pixels) -> Tensor:
    if px.valid is None:  # no ignored pixel: nothing to mask
        return F.cross_entropy(px.logits, px.target)
    return F.cross_entropy(px.logits, px.target, ignore_index=px.ignore_index)


class CrossEntropyLoss(PixelLoss):
    """``CE = mean of -log p_y`` (torch's kernel, with the shared input checks)."""

    def loss(self, px: Pixels) -> Tensor:
        return _cross_entropy(px)


class _LabelSmoothedCrossEntropy(torch.autograd.Function):
    """``-sum_k q_k log p_k`` with ``q = (1-a) onehot(y) + a/K``, summed over counted pixels / count.

    Gradient ``c (p - q)`` (``c`` = grad / count, 0 on ignored pixels), written out: one
    ``log_softmax``, one gather, one sum forward; exp, two in-place ops and a scatter backward.
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, alpha):
        logp = torch.log_softmax(logits, dim=1)
        k = logp.shape[1]
        nll = logp.gather(1, index)
        if valid is None:
            picked, total = nll.sum(), logp.sum()
        else:
            picked = torch.where(valid, nll, 0.0).sum()
            total = torch.where(valid, logp.sum(dim=1, keepdim=True), 0.0).sum()
        ctx.save_for_backward(logp, index, weight)
        ctx.count, ctx.alpha = count, alpha
        return -((1 - alpha) * picked + (alpha / k) * total) / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, index, weight = ctx.saved_tensors
        a = ctx.alpha
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.exp(logp).sub_(a / logp.shape[1]).mul_(c)
        grad.scatter_add_(1, index, (c * (a - 1)).expand(index.shape))
        return grad, None, None, None, None, None


class LabelSmoothingLoss(PixelLoss):
    """LS: cross entropy against ``(1 - alpha) onehot(y) + alpha / K``.

    Exactly ``L_LS = (1-alpha) L_CE + (alpha/K) sum_k d_k + alpha (LSE(z) - max z)``, the last
    term in ``[0, alpha log K]``: a linear penalty on the logit distances plus a bounded term.
    Same value as ``F.cross_entropy(..., label_smoothing=alpha)``, with a hand-written backward.
    """

    def __init__(self, alpha: float = 0.1, ignore_index: int | None = -100, validate: bool = True):
        super().__init__(ignore_index, validate)
        check_nonnegative(alpha=alpha)
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def _hparams(self):
        return ("alpha", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        return _LabelSmoothedCrossEntropy.apply(
            px.logits, px.index, px.valid, px.count, px.weight(), self.alpha
        )


class _EntropyPenalisedCrossEntropy(torch.autograd.Function):
    """``sum over counted pixels of (-log p_y - beta H(p))`` / count, ``H = -sum_k p_k log p_k``.

    With ``n = -H`` per pixel, ``dn/dz_j = p_j (log p_j - n)``, so the gradient is
    ``c p (1 + beta (log p - n)) - c onehot(y)``, ``c`` = grad / count (0 on ignored pixels).
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, beta):
        logp = torch.log_softmax(logits, dim=1)
        p = torch.exp(logp)
        neg_entropy = (p * logp).sum(dim=1, keepdim=True)
        per_pixel = beta * neg_entropy - logp.gather(1, index)
        total = per_pixel.sum() if valid is None else torch.where(valid, per_pixel, 0.0).sum()
        ctx.save_for_backward(logp, p, neg_entropy, index, weight)
        ctx.count, ctx.beta = count, beta
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, p, neg_entropy, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.sub(logp, neg_entropy).mul_(ctx.beta).add_(1.0).mul_(p).mul_(c)
        grad.scatter_add_(1, index, (-c).expand(index.shape))
        return grad, None, None, None, None, None


class ConfidencePenaltyLoss(PixelLoss):
    """ECP (Pereyra et al. 2017): ``CE - beta * H(p)``, ``H(p) = -sum_k p_k log p_k``.

    The entropy is summed over classes (the paper's definition). The official MbLS code averages
    it over classes too, i.e. uses ``H / K``: pass ``entropy_average=True`` to match it (or,
    equivalently, ``beta = beta_official / K``).
    """

    def __init__(
        self,
        beta: float = 0.1,
        ignore_index: int | None = -100,
        entropy_average: bool = False,
        validate: bool = True,
    ):
        super().__init__(ignore_index, validate)
        check_nonnegative(beta=beta)
        self.beta = float(beta)
        self.entropy_average = bool(entropy_average)

    def _hparams(self):
        return ("beta", "entropy_average", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        beta = self.beta / px.num_classes if self.entropy_average else self.beta
        return _EntropyPenalisedCrossEntropy.apply(
            px.logits, px.index, px.valid, px.count, px.weight(), beta
        )


class _FocalLoss(torch.autograd.Function):
    """``sum over counted pixels of -(1 - p_y)^gamma log p_y`` / count.

    With ``l = log p_y`` and ``u = 1 - p_y``, ``f(l) = -u^gamma l`` has
    ``f'(l) = -u^gamma + gamma u^(gamma-1) p_y l``, and ``dl/dz = onehot(y) - p``: the gradient
    is ``c f' (onehot(y) - p)`` (per-pixel work on ``(N, 1, *spatial)`` only, then one pass).
    ``u`` is computed as ``-expm1(l)`` and kept >= the smallest normal float, so that
    ``gamma < 1`` has a finite gradient where ``p_y`` rounds to 1.
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, gamma):
        logp = torch.log_softmax(logits, dim=1)
        lp = logp.gather(1, index)
        u = (-torch.expm1(lp)).clamp_min_(torch.finfo(lp.dtype).tiny)
        u_pow = u.pow(gamma)
        per_pixel = -u_pow * lp
        total = per_pixel.sum() if valid is None else torch.where(valid, per_pixel, 0.0).sum()
        slope = gamma * u.pow(gamma - 1) * torch.exp(lp) * lp - u_pow  # f'(l)
        ctx.save_for_backward(logp, slope, index, weight)
        ctx.count = count
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, slope, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        s = c * slope
        grad = torch.exp(logp).mul_(-s)
        grad.scatter_add_(1, index, s)
        return grad, None, None, None, None, None


class FocalLoss(PixelLoss):
    """Focal loss (Lin et al. 2017): mean of ``-(1 - p_y)^gamma log p_y`` (a mean, not a sum)."""

    def __init__(self, gamma: float = 3.0, ignore_index: int | None = -100, validate: bool = True):
        super().__init__(ignore_index, validate)
        check_nonnegative(gamma=gamma)
        self.gamma = float(gamma)

    def _hparams(self):
        return ("gamma", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        return _FocalLoss.apply(px.logits, px.index, px.valid, px.count, px.weight(), self.gamma)
