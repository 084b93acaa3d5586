"""ACLS, adaptive and conditional label smoothing (Park et al., ICCV 2023, ``cvlab-yonsei/ACLS``).

Per pixel, with logits ``z``, ``z_max = max_j z_j`` and the winner(s) ``j* = argmax z``,

    L = CE + alpha * (pos_lambda * sum_pixels relu(z_max - m)^2 / P
                      + neg_lambda * sum_pixels sum_{j != j*} relu(sg(z_max) - z_j - m)^2 / (P (K - 1)))

over the ``P`` counted pixels, ``sg`` = stop-gradient. The first term bounds the winning logit
itself; the second is a squared MbLS-like penalty on the distances that pulls only the losers up
(the winner is detached). As in the official ``calibrate/losses/acls.py``: a pixel with tied
winners counts the first term once per tied class (the gradient is shared among them, as
autograd of ``amax`` does; the official ``max`` gives it to one of them), and tied classes are
left out of the second term (their distance is 0 < m anyway). Our choice: ignored pixels are left
out of both terms and of ``P`` (the official code leaves them out of CE only).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import PixelLoss
from ._inputs import Pixels, check_nonnegative

__all__ = ["ACLSLoss"]


class _ACLSCrossEntropy(torch.autograd.Function):
    """The ACLS value summed over counted pixels / count, with a written-out backward.

    With ``c`` = grad / count (0 on ignored pixels), ``r_k = relu(z_max - z_k - m)`` and
    ``u = relu(z_max - m)``:

        dL/dz_k = c (p_k - 1[k = y]) - c a_neg 2 r_k + c a_pos 2 u 1[k = winner]

    with ``a_pos = alpha pos_lambda`` and ``a_neg = alpha neg_lambda / (K - 1)``. ``r_k = 0`` on
    the winners when ``m >= 0``, so the loser mask of the second term is implicit.
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, margin, a_pos, a_neg):
        logp = torch.log_softmax(logits, dim=1)
        top = logits.amax(dim=1, keepdim=True)
        r = torch.sub(top, logits).sub_(margin).clamp_min_(0.0)
        u = (top - margin).clamp_min_(0.0)
        winner = torch.eq(logits, top).to(logits.dtype)
        ties = winner.sum(dim=1, keepdim=True)
        if valid is not None:
            r = r.mul_(valid)
            u = u.mul_(valid)
        neg = torch.vdot(r.reshape(-1), r.reshape(-1)) if r.is_contiguous() else (r * r).sum()
        pos = (ties * u * u).sum()
        nll = logp.gather(1, index)
        ce_sum = -(nll.sum() if valid is None else torch.where(valid, nll, 0.0).sum())
        ctx.save_for_backward(logp, r, winner.mul_(u), index, weight)
        ctx.count, ctx.a_pos, ctx.a_neg = count, a_pos, a_neg
        return (ce_sum + a_pos * pos + a_neg * neg) / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, r, winner_u, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.exp(logp).mul_(c)
        grad.addcmul_(r, c, value=-2.0 * ctx.a_neg)
        grad.addcmul_(winner_u, c, value=2.0 * ctx.a_pos)
        grad.scatter_add_(1, index, (-c).expand(index.shape))
        return grad, None, None, None, None, None, None, None


class ACLSLoss(PixelLoss):
    """ACLS: ``CE + alpha (pos_lambda * pos + neg_lambda * neg)`` (module docstring).

    Args:
        alpha: weight of the regulariser (official default 0.1).
        pos_lambda: weight of ``relu(z_max - m)^2`` (official 1.0).
        neg_lambda: weight of ``relu(sg(z_max) - z_j - m)^2`` (official 0.1).
        margin: ``m >= 0`` (official 10).
        ignore_index, validate: see :class:`~mls_tutorial.losses.PixelLoss`.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        pos_lambda: float = 1.0,
        neg_lambda: float = 0.1,
        margin: float = 10.0,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        check_nonnegative(alpha=alpha, pos_lambda=pos_lambda, neg_lambda=neg_lambda, margin=margin)
        self.alpha, self.pos_lambda = float(alpha), float(pos_lambda)
        self.neg_lambda, self.margin = float(neg_lambda), float(margin)

    def _hparams(self):
        return ("alpha", "pos_lambda", "neg_lambda", "margin", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        a_pos = self.alpha * self.pos_lambda
        a_neg = self.alpha * self.neg_lambda / (px.num_classes - 1)
        return _ACLSCrossEntropy.apply(
            px.logits, px.index, px.valid, px.count, px.weight(), self.margin, a_pos, a_neg
        )
