"""Differentiable calibration errors as training losses: MDCA and the hard / soft L1-ACE.

**MDCA** (Hebbalaguppe et al., CVPR 2022): ``CE + beta * (1/K) sum_k |mean s_k - mean 1[y = k]|``,
the means over the counted pixels of the batch (``s = softmax(z)``): each class's average
confidence should match its frequency.

**L1-ACE** (Barfoot et al., MICCAI 2024, ``cai4cai/Average-Calibration-Losses``,
``sacros/losses/``), auxiliary to Dice + CE as in their configs:
``ace_weight * L1ACE + dice_weight * Dice + ce_weight * CE`` (0.33 each). Per image ``n`` and class
``k``, the probabilities ``s_k`` of the image's counted pixels are put into ``num_bins`` equal bins
of ``[0, 1]``; per bin, ``|mean s_k - mean 1[y = k]|``; the bins are averaged, then the images and
classes. *Hard* binning (``"hl1ace"``): each pixel in the bin ``(b_{i-1}, b_i]`` holding it
(``torch.bucketize``), gradient only through ``mean s_k``. *Soft* binning (``"sl1ace"``): each
pixel is split between the two nearest bin centres with linear weights (all of it to the first
or last bin outside the centres), the weights differentiable too.

As in the official code: a bin holding no pixel (soft: total weight below ``empty_weight``) is
left out of its bin average (the official NaN bins); a class absent from an image's labels scores 0 for that image but
still counts in the average over images and classes (``ignore_empty_classes=True``; False:
scored like the others); the Dice term is MONAI's ``DiceLoss(softmax=True, squared_pred=True,
smooth_nr=0, smooth_dr=1e-5)`` per image and class, background included. Our choices: ignored
pixels are in no bin, no Dice sum and no CE mean, and an image with every pixel ignored scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import PixelLoss
from ._inputs import Pixels, check_nonnegative
from .dice import DiceCELoss

__all__ = ["HardL1ACELoss", "MDCALoss", "SoftL1ACELoss", "l1_ace"]


class _MDCACrossEntropy(torch.autograd.Function):
    """``CE + (beta/K) sum_k |S_k - F_k|``, ``S_k`` = mean over counted pixels of ``s_k``.

    With ``sigma_k = sign(S_k - F_k)`` and ``c`` = grad / count (0 on ignored pixels),
    ``dS_k/dz_j = s_k (1[k = j] - s_j) / count`` per pixel, so

        dL/dz_j = c (s_j - 1[j = y]) + c (beta/K) s_j (sigma_j - sum_k sigma_k s_k).
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, beta):
        logp = torch.log_softmax(logits, dim=1)
        s = torch.exp(logp)
        k = s.shape[1]
        dims = [0] + list(range(2, s.dim()))
        if valid is None:
            s_sum = s.sum(dim=dims)
            f_sum = torch.bincount(index.reshape(-1), minlength=k).to(s.dtype)
        else:
            s_sum = torch.where(valid, s, 0.0).sum(dim=dims)
            f_sum = torch.bincount(index.reshape(-1), valid.reshape(-1).to(s.dtype), minlength=k)
        gap = (s_sum - f_sum.to(s.dtype)) / count
        nll = logp.gather(1, index)
        ce_sum = -(nll.sum() if valid is None else torch.where(valid, nll, 0.0).sum())
        ctx.save_for_backward(s, torch.sign(gap), index, weight)
        ctx.count, ctx.beta = count, beta
        return ce_sum / count + beta * gap.abs().mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        s, sign, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        k = s.shape[1]
        b = ctx.beta / k
        shape = (1, k) + (1,) * (s.dim() - 2)
        inner = torch.einsum("nk...,k->n...", s, sign).unsqueeze(1)  # sum_k sigma_k s_k
        grad = torch.sub((1.0 + b * sign).view(shape), inner, alpha=b).mul_(s).mul_(c)
        grad.scatter_add_(1, index, (-c).expand(index.shape))
        return grad, None, None, None, None, None


class MDCALoss(PixelLoss):
    """MDCA: ``CE + beta * (1/K) sum_k |mean softmax_k - mean 1[y = k]|`` over the batch's pixels.

    Args:
        beta: weight of the calibration term (official grid {1, 5, 10}; default 1).
        ignore_index, validate: see :class:`~mls_tutorial.losses.PixelLoss`.
    """

    def __init__(self, beta: float = 1.0, ignore_index: int | None = -100, validate: bool = True):
        super().__init__(ignore_index, validate)
        check_nonnegative(beta=beta)
        self.beta = float(beta)

    def _hparams(self):
        return ("beta", "ignore_index")

    def loss(self, px: Pixels) -> Tensor:
        return _MDCACrossEntropy.apply(
            px.logits, px.index, px.valid, px.count, px.weight(), self.beta
        )


# ------------------------------------------------------------------------------------ L1-ACE
def _bin_edges(num_bins: int, like: Tensor) -> Tensor:
    """The official edges ``linspace(0, 1 + eps_float32, num_bins + 1)`` (computed in float32)."""
    eps = torch.finfo(torch.float32).eps
    return torch.linspace(0.0, 1.0 + eps, num_bins + 1, device=like.device).to(like.dtype)


def _hard_bins(p: Tensor, num_bins: int) -> list[tuple[Tensor, Tensor]]:
    """Each value's bin ``(b_{i-1}, b_i]`` with weight 1: ``[(index, weight)]``."""
    edges = _bin_edges(num_bins, p)
    idx = torch.bucketize(p.detach().contiguous(), edges[1:]).clamp_(max=num_bins - 1)
    return [(idx, torch.ones_like(p))]


def _soft_bins(p: Tensor, num_bins: int) -> list[tuple[Tensor, Tensor]]:
    """Linear weights to the two nearest bin centres, differentiable in ``p``:
    ``[(lower bin, its weight), (upper bin, its weight)]``."""
    centres = _bin_edges(2 * num_bins, p)[1::2].contiguous()  # official half-bin boundaries
    right = torch.bucketize(
        p.detach().contiguous(), centres
    )  # centres[right-1] < p <= centres[right]
    lo = (right - 1).clamp_(0, num_bins - 1)
    hi = right.clamp_(0, num_bins - 1)
    gap = centres[hi] - centres[lo]
    inside = gap > 0  # outside the centres lo == hi: all the weight to that bin
    w_hi = torch.where(inside, (p - centres[lo]) / torch.where(inside, gap, 1.0), 0.0)
    return [(lo, 1.0 - w_hi), (hi, w_hi)]


def l1_ace(
    probs: Tensor,
    onehot: Tensor,
    valid: Tensor | None = None,
    num_bins: int = 20,
    soft: bool = False,
    empty_weight: float = 0.01,
) -> Tensor:
    """Per image and class L1 average calibration error, ``(N, K)``; differentiable in ``probs``.

    ``probs`` and ``onehot`` ``(N, K, *spatial)``; ``valid`` ``(N, 1, *spatial)`` bool (None: all
    pixels count). A bin is empty when its (soft) count is 0 (hard) or below ``empty_weight``
    (soft) and is left out of the average over bins; a row with no non-empty bin gives 0.
    """
    n, k = probs.shape[:2]
    p = probs.reshape(n, k, -1)
    g = onehot.reshape(n, k, -1).to(p.dtype)
    w_pix = torch.ones_like(p[:, :1]) if valid is None else valid.reshape(n, 1, -1).to(p.dtype)
    base = torch.arange(n * k, device=p.device).view(n, k, 1) * num_bins
    totals = p.new_zeros(3, n * k * num_bins)  # per bin: weight, weighted p, weighted g
    for idx, w in (_soft_bins if soft else _hard_bins)(p, num_bins):
        w = w * w_pix
        src = torch.stack([w, w * p, w * g]).reshape(3, -1)
        totals = totals.index_add(1, (base + idx).reshape(-1), src)
    weight, sum_p, sum_g = totals.view(3, n, k, num_bins).unbind(0)
    full = (weight > 0) & (weight >= empty_weight) if soft else weight > 0
    safe = torch.where(full, weight, 1.0)
    gap = torch.where(full, (sum_p - sum_g).abs() / safe, 0.0)
    n_full = full.sum(-1)
    return torch.where(n_full > 0, gap.sum(-1) / n_full.clamp_min(1), 0.0)


class _L1ACELoss(PixelLoss):
    """``ace_weight * L1-ACE + dice_weight * Dice + ce_weight * CE`` (module docstring)."""

    soft = False

    def __init__(
        self,
        ace_weight: float = 0.33,
        dice_weight: float = 0.33,
        ce_weight: float = 0.33,
        num_bins: int = 20,
        include_background: bool = True,
        ignore_empty_classes: bool = True,
        empty_weight: float = 0.01,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        check_nonnegative(ace_weight=ace_weight, dice_weight=dice_weight, ce_weight=ce_weight)
        check_nonnegative(empty_weight=empty_weight)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
        for name, value in (
            ("include_background", include_background),
            ("ignore_empty_classes", ignore_empty_classes),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        self.ace_weight, self.num_bins = float(ace_weight), num_bins
        self.include_background, self.ignore_empty_classes = (
            include_background,
            ignore_empty_classes,
        )
        self.empty_weight = float(empty_weight)
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            lambda_ce=ce_weight,
            lambda_dice=dice_weight,
            smooth_nr=0.0,
            smooth_dr=1e-5,
            squared_pred=True,
        )

    def _hparams(self):
        return ("ace_weight", "num_bins", "include_background", "ignore_index")

    def ace(self, px: Pixels) -> Tensor:
        """The L1-ACE term alone (mean over images and classes)."""
        probs = torch.softmax(px.logits, dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, px.index, 1.0)
        if px.valid is not None:
            onehot = onehot * px.valid
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        per = l1_ace(probs, onehot, px.valid, self.num_bins, self.soft, self.empty_weight)
        if self.ignore_empty_classes:
            present = onehot.flatten(2).sum(-1) > 0
            per = torch.where(present, per, 0.0)
        return per.mean()

    def loss(self, px: Pixels) -> Tensor:
        return self.ace_weight * self.ace(px) + self.dice_ce.loss(px)


class HardL1ACELoss(_L1ACELoss):
    """Hard-binned L1-ACE + Dice + CE (``"hl1ace"``). ``empty_weight`` is unused (soft only).

    Args:
        ace_weight, dice_weight, ce_weight: weights of the three terms (official 0.33 each).
        num_bins: bins of [0, 1] (official 20).
        include_background: keep class 0 in the ACE and Dice averages (official True).
        ignore_empty_classes: a class absent from an image scores 0 there (official True).
        empty_weight: soft binning only: bins with less total weight are empty (official 0.01).
        ignore_index, validate: see :class:`~mls_tutorial.losses.PixelLoss`.
    """

    soft = False


class SoftL1ACELoss(_L1ACELoss):
    """Soft-binned L1-ACE + Dice + CE (``"sl1ace"``); arguments as :class:`HardL1ACELoss`."""

    soft = True
