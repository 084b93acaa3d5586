"""Logit distances and the margin-based label smoothing loss (MbLS, Liu et al. CVPR 2022).

Per pixel, with logits ``z`` and ``K`` classes, the logit distances are ``d_k = max_j z_j - z_k``
(the winner is the predicted argmax, so no label is needed). MbLS is

    L = CE + alpha * mean over pixels and classes of relu(d_k - margin)

which is the official code's normalisation. The paper writes ``lambda * sum_k relu(d_k - m)``
(a sum over classes), so ``alpha = K * lambda_paper``. With ``margin = 0`` it is exactly the
linear penalty ``CE + alpha * mean(d)``, to which label smoothing is equivalent up to a bounded
term (see ``LabelSmoothingLoss``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import _fused
from ._base import PixelLoss
from ._inputs import Pixels, check_logits, check_nonnegative, no_autocast, squeeze_target

__all__ = ["equilibrium_distance", "logit_distances", "MarginLoss"]


def logit_distances(logits: Tensor) -> Tensor:
    """``d_k = max_j z_j - z_k >= 0`` over the class dim (dim 1); same shape as ``logits``.

    Half-precision logits are upcast to float32 first. Differentiable.
    """
    logits = check_logits(logits)
    with no_autocast(logits):
        return logits.amax(dim=1, keepdim=True) - logits


def equilibrium_distance(alpha: float, num_classes: int, margin: float = 0.0) -> float:
    """Where CE plus a penalty of weight ``alpha/K`` per distance stops the distances.

    Along equal non-winning distances ``d``, CE pulls each up with ``s_k = e^-d / (1 + (K-1)
    e^-d)`` and the linear penalty (LS, or MbLS with ``margin=0``) pushes down with ``alpha/K``;
    they balance at

        d_eq = log(K / alpha - K + 1) = log((1 - alpha + alpha/K) / (alpha/K))   (0 once alpha >= 1)

    A margin only pushes distances above ``m`` and never below, so MbLS settles at
    ``max(m, d_eq)``: the weight moves it only while ``d_eq > m`` (roughly ``alpha/K < e^-m``).
    The confidence there is ``1 / (1 + (K-1) e^-d)``.
    """
    check_nonnegative(margin=margin)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    k = num_classes
    d_eq = math.log(k / alpha - k + 1) if alpha < 1 else 0.0
    return max(float(margin), d_eq)


class _MarginCrossEntropy(torch.autograd.Function):
    """CE + alpha/K * sum relu(d - m), summed over counted pixels and divided by their count.

    One ``log_softmax`` serves both terms: ``d_k = max_j log p_j - log p_k`` because the
    log-sum-exp cancels, and ``d_k > m`` iff ``log p_k < max log p - m``. The backward is written
    out: with ``c`` = grad / count (zero on ignored pixels) and ``M_k = 1[d_k > m]``,

        dL/dz_k = c (p_k - 1[k = y]) + c alpha/K (-M_k + 1[k = winner] sum_j M_j)

    (ties for the winner share its part evenly, as autograd of ``amax`` does). It costs a few
    elementwise passes instead of autograd through max, subtract and relu.
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, margin, alpha):
        logp = torch.log_softmax(logits, dim=1)
        k = logp.shape[1]
        top = logp.amax(dim=1, keepdim=True)
        thr = top - margin  # finite: margin is checked finite
        below = thr if valid is None else thr.masked_fill(~valid, -math.inf)
        mask = torch.lt(logp, below, out=torch.empty_like(logp))  # 1[d_k > m], 0 when ignored
        crossed = mask.sum(dim=1, keepdim=True)
        nll = logp.gather(1, index)
        ce_sum = -(nll.sum() if valid is None else torch.where(valid, nll, 0.0).sum())
        # sum over masked (thr - log p_k) = sum(crossed * thr) - <mask, log p>
        if mask.is_contiguous() and logp.is_contiguous():
            inner = torch.vdot(mask.view(-1), logp.view(-1))
        else:
            inner = (mask * logp).sum()
        pen_sum = ((crossed * thr).sum() - inner).clamp_min(0.0)
        if ctx.needs_input_grad[0]:
            winner = torch.eq(logp, top, out=torch.empty_like(logp))
            share = crossed / winner.sum(dim=1, keepdim=True)
            mask.addcmul_(winner, share, value=-1.0)  # M - (sum_j M_j / ties) 1[winner]
            ctx.save_for_backward(logp, mask, index, weight)
            ctx.count, ctx.alpha = count, alpha
        return (ce_sum + (alpha / k) * pen_sum) / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, margin_grad, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.exp(logp).mul_(c)
        grad.addcmul_(margin_grad, c, value=-ctx.alpha / logp.shape[1])
        grad.scatter_add_(1, index, (-c).expand(index.shape))
        return grad, None, None, None, None, None, None


class MarginLoss(PixelLoss):
    """MbLS: ``CE + alpha * mean_{pixels, classes} relu(d_k - margin)``, ``d = logit_distances``.

    Args:
        margin: tolerance ``m >= 0`` on the logit distances (paper default 10; grid {0,3,5,8,10}).
        alpha: weight of the penalty (official normalisation: ``alpha = K * lambda_paper``).
        ignore_index: label left out of both terms (None: none).
        validate: see :class:`~mls_tutorial.losses.PixelLoss`.
        fused: use the one-kernel Triton version (``losses/_fused.py``) on CUDA; None: whenever
            Triton is installed, False: never (the eager path, as on CPU).
    """

    def __init__(
        self,
        margin: float = 10.0,
        alpha: float = 0.1,
        ignore_index: int | None = -100,
        validate: bool = True,
        fused: bool | None = None,
    ) -> None:
        super().__init__(ignore_index, validate)
        check_nonnegative(margin=margin, alpha=alpha)
        self.margin = float(margin)
        self.alpha = float(alpha)
        self.fused = fused

    def _hparams(self):
        return ("margin", "alpha", "ignore_index")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.fused is False or not _fused.usable(logits):
            return super().forward(logits, target)
        check_logits(logits)  # the kernel reads half precision itself and computes in float32
        target = squeeze_target(logits, target)
        return _fused.margin_cross_entropy(
            logits, target, self.margin, self.alpha, self.ignore_index, self.validate
        )

    def loss(self, px: Pixels) -> Tensor:
        return _MarginCrossEntropy.apply(
            px.logits, px.index, px.valid, px.count, px.weight(), self.margin, self.alpha
        )
