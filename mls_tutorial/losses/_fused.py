"""MbLS in one Triton kernel, used on CUDA when Triton is installed (it comes with CUDA torch).

On a GPU these losses are bound by kernel launches, not by memory: the eager MbLS needs a few
dozen small kernels and a sync for the input checks. This kernel reads the logits and labels
once per pixel block and writes, in the same pass, the gradient for ``grad_out = 1`` and four
partial sums: the loss, the counted pixels, the non-finite logits and the labels out of range.
The input checks therefore cost nothing but the one sync that reads those sums
(``validate=False`` skips it). The backward is one multiply. Same formulas as
:class:`~mls_tutorial.losses.margin._MarginCrossEntropy`; float32 inside.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch: no Triton, the eager path is used
    triton = None

__all__ = ["usable", "margin_cross_entropy"]


def usable(logits: Tensor) -> bool:
    """True where the fused kernel can run: CUDA tensors (or Triton's CPU interpreter)."""
    if triton is None or logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    return logits.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _margin_ce_kernel(
        Z,
        Y,
        G,
        PART,
        S,
        margin,
        alpha_k,
        ignore_index,
        K: tl.constexpr,
        KP: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_IGNORE: tl.constexpr,
    ):
        pid = tl.program_id(0)
        n = tl.program_id(1).to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        smask = offs < S
        ks = tl.arange(0, KP)
        kmask = ks < K
        m2 = kmask[:, None] & smask[None, :]
        zoff = n * K * S + ks[:, None].to(tl.int64) * S + offs[None, :]
        z = tl.load(Z + zoff, mask=m2, other=0.0).to(tl.float32)
        y = tl.load(Y + n * S + offs, mask=smask, other=0)
        nonfinite = ((z != z) | (tl.abs(z) == float("inf"))) & m2

        zk = tl.where(kmask[:, None], z, float("-inf"))
        top = tl.max(zk, axis=0)
        e = tl.exp(zk - top[None, :])
        se = tl.sum(e, axis=0)
        lse = top + tl.log(se)
        p = e / se[None, :]

        in_range = (y >= 0) & (y < K)
        if HAS_IGNORE:
            ignored = y == ignore_index
        else:
            ignored = y != y
        valid = smask & in_range & (~ignored)
        bad_label = smask & (~in_range) & (~ignored)

        is_y = ks[:, None] == y[None, :]
        logp_y = tl.sum(tl.where(is_y, zk - lse[None, :], 0.0), axis=0)
        d = top[None, :] - zk
        over = (d > margin) & kmask[:, None]
        crossed = tl.sum(over.to(tl.float32), axis=0)
        pen = tl.sum(tl.where(over, d - margin, 0.0), axis=0)
        win = (zk == top[None, :]) & kmask[:, None]
        share = crossed / tl.sum(win.to(tl.float32), axis=0)

        g = p - is_y.to(tl.float32)
        g += alpha_k * (tl.where(win, share[None, :], 0.0) - over.to(tl.float32))
        g = tl.where(valid[None, :], g, 0.0)
        tl.store(G + zoff, g, mask=m2)

        loss = tl.where(valid, alpha_k * pen - logp_y, 0.0)
        base = (n * tl.num_programs(0) + pid) * 4
        tl.store(PART + base, tl.sum(loss, axis=0).to(tl.float64))
        tl.store(PART + base + 1, tl.sum(valid.to(tl.float32), axis=0).to(tl.float64))
        n_nonfinite = tl.sum(tl.sum(nonfinite.to(tl.float32), axis=0), axis=0)
        tl.store(PART + base + 2, n_nonfinite.to(tl.float64))
        tl.store(PART + base + 3, tl.sum(bad_label.to(tl.float32), axis=0).to(tl.float64))


class _FusedMarginCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, margin, alpha, ignore_index, validate):
        from ._inputs import raise_bad_labels

        z = logits.contiguous()
        y = target.contiguous()
        n, k = z.shape[:2]
        s = z[0, 0].numel()
        kp = triton.next_power_of_2(k)
        block = max(16, min(1024, triton.next_power_of_2(s), 4096 // kp))
        grid = (triton.cdiv(s, block), n)
        grad = torch.empty(z.shape, dtype=torch.float32, device=z.device)
        part = torch.empty(grid[0] * grid[1], 4, dtype=torch.float64, device=z.device)
        _margin_ce_kernel[grid](
            z,
            y,
            grad,
            part,
            s,
            float(margin),
            float(alpha) / k,
            0 if ignore_index is None else int(ignore_index),
            K=k,
            KP=kp,
            BLOCK=block,
            HAS_IGNORE=ignore_index is not None,
        )
        total = part.sum(dim=0)
        if validate:
            loss_sum, count, n_nonfinite, n_bad = total.tolist()
            if n_nonfinite:
                raise ValueError("logits contain NaN or inf")
            if n_bad:
                raise_bad_labels(target, k, ignore_index)
            if count == 0:
                raise ValueError(f"every target pixel equals ignore_index={ignore_index}")
        count = total[1]
        ctx.save_for_backward(grad, count)
        return (total[0] / count).to(torch.float32)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad, count = ctx.saved_tensors
        return grad * (grad_out / count).to(grad.dtype), None, None, None, None, None


def margin_cross_entropy(
    logits: Tensor,
    target: Tensor,
    margin: float,
    alpha: float,
    ignore_index: int | None,
    validate: bool,
) -> Tensor:
    """MbLS of checked-shape ``logits (N, K, *spatial)`` and ``target (N, *spatial)`` int64."""
    return _FusedMarginCrossEntropy.apply(logits, target, margin, alpha, ignore_index, validate)
