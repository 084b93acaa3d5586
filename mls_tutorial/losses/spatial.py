"""Losses whose soft target looks at the neighbourhood of each pixel: SVLS and NACL (2D and 3D)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import PixelLoss
from ._inputs import Pixels, check_nonnegative

__all__ = ["svls_kernel", "SVLSLoss", "NACLLoss"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def svls_kernel(kernel_size: int = 3, sigma: float = 1.0, spatial_dims: int = 2) -> Tensor:
    """The official SVLS weights (Islam & Glocker, IPMI 2021), float64, shape ``(k,) * dims``.

    A Gaussian of std ``sigma`` on the ``k^dims`` grid, normalised; its centre weight is replaced
    by the sum of all the other weights, then the whole is normalised again, so the centre is
    1/2. In 2D with sigma 1, 3x3: centre 0.5, 4-neighbours 0.0778, diagonals 0.0472.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 3, got {kernel_size!r}")
    check_nonnegative(sigma=sigma)
    if sigma == 0:
        raise ValueError("sigma must be > 0, got 0")
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    grids = torch.meshgrid(*([offsets] * spatial_dims), indexing="ij")
    gauss = torch.exp(-sum(g**2 for g in grids) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    centre = (kernel_size // 2,) * spatial_dims
    gauss[centre] = 0.0
    gauss[centre] = gauss.sum()
    return gauss / gauss.sum()


def _replicate_pad(x: Tensor, r: int) -> Tensor:
    """Pad the spatial dims (2:) of ``x`` by ``r`` on each side, repeating the edge values."""
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        x = x.index_select(axis, torch.arange(-r, n + r, device=x.device).clamp_(0, n - 1))
    return x


class _SoftTargetCrossEntropy(torch.autograd.Function):
    """``-sum_k q_k log p_k`` summed over pixels and divided by ``count``.

    ``q`` sums to 1 over classes on counted pixels and is 0 on ignored ones, so the gradient is
    ``c (p - q)`` with ``c`` = grad / count on counted pixels and 0 elsewhere.
    """

    @staticmethod
    def forward(ctx, logits, q, count, weight):
        logp = torch.log_softmax(logits, dim=1)
        if q.is_contiguous() and logp.is_contiguous():
            total = torch.vdot(q.view(-1), logp.view(-1))
        else:
            total = (q * logp).sum()
        ctx.save_for_backward(logp, q, weight)
        ctx.count = count
        return -total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, q, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.exp(logp).mul_(c)
        grad.addcmul_(q, c, value=-1.0)
        return grad, None, None, None


class SVLSLoss(PixelLoss):
    """Spatially varying label smoothing: CE against ``q = svls_kernel * onehot(y)`` (2D, 3D).

    The one-hot labels are padded by replication (as the official code does) and filtered class
    by class with :func:`svls_kernel`, whose size is honoured (the official code ignores it).
    Ignored pixels have no class: they contribute nothing, and the weights of their neighbours
    are renormalised over the non-ignored pixels of the window.
    """

    def __init__(
        self,
        sigma: float = 1.0,
        kernel_size: int = 3,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        svls_kernel(kernel_size, sigma, 1)  # checks the arguments
        self.sigma = float(sigma)
        self.kernel_size = kernel_size
        self._kernels: dict[tuple, Tensor] = {}

    def _hparams(self):
        return ("sigma", "kernel_size", "ignore_index")

    def kernel(self, spatial_dims: int, like: Tensor) -> Tensor:
        key = (spatial_dims, like.dtype, like.device)
        if key not in self._kernels:
            k = svls_kernel(self.kernel_size, self.sigma, spatial_dims)
            self._kernels[key] = k.to(like)
        return self._kernels[key]

    def soft_target(self, px: Pixels) -> Tensor:
        """``q`` of shape ``(N, K, *spatial)``: sums to 1 on counted pixels, 0 on ignored ones."""
        dims = px.spatial_dims
        if dims not in (2, 3):
            raise ValueError(
                f"SVLSLoss needs 2 or 3 spatial dims, got logits {tuple(px.logits.shape)}"
            )
        logits, k, r = px.logits, px.num_classes, self.kernel_size // 2
        kernel = self.kernel(dims, logits)
        with torch.no_grad():
            # one-hot of the edge-replicated labels, built channels-last: the depthwise conv is
            # several times faster in that layout on CPU
            index = _replicate_pad(px.index, r)
            src = 1.0 if px.valid is None else _replicate_pad(px.valid, r).to(logits.dtype)
            shape = (index.shape[0], k, *index.shape[2:])
            layout = torch.channels_last if dims == 2 else torch.channels_last_3d
            onehot = torch.empty(
                shape, dtype=logits.dtype, device=logits.device, memory_format=layout
            )
            onehot.zero_().scatter_(1, index, src)
            q = _CONV[dims](onehot, kernel.expand(k, 1, *kernel.shape), groups=k)
            if logits.is_contiguous():
                q = q.contiguous()
            if px.valid is not None:  # renormalise over the non-ignored part of each window
                norm = q.sum(dim=1, keepdim=True).clamp_min_(torch.finfo(q.dtype).tiny)
                q = q.div_(norm).mul_(px.valid)
        return q

    def loss(self, px: Pixels) -> Tensor:
        q = self.soft_target(px)
        return _SoftTargetCrossEntropy.apply(px.logits, q, px.count, px.weight())


class NACLLoss(PixelLoss):
    """NACL (Murugesan et al. 2023), ``monai.losses.NACLLoss`` behind the common calling convention.

    ``CE + alpha * mean over pixels and classes of |tau - z|`` (``distance_type="l2"``: squared),
    ``tau`` = the one-hot labels filtered by a mean (or Gaussian) window: the class shares around
    each pixel. The MONAI module is built on first use for the number of classes and spatial dims
    of the logits (2D or 3D). Without ignored pixels the value is MONAI's own. With ignored
    pixels, they have no class in ``tau`` (like MONAI's zero padding outside the image) and are
    left out of both means.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        kernel_size: int = 3,
        kernel_ops: str = "mean",
        distance_type: str = "l1",
        sigma: float = 1.0,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        check_nonnegative(alpha=alpha, sigma=sigma)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        if kernel_ops not in ("mean", "gaussian"):
            raise ValueError(f"kernel_ops must be 'mean' or 'gaussian', got {kernel_ops!r}")
        if distance_type not in ("l1", "l2"):
            raise ValueError(f"distance_type must be 'l1' or 'l2', got {distance_type!r}")
        self.alpha, self.sigma = float(alpha), float(sigma)
        self.kernel_size, self.kernel_ops, self.distance_type = (
            kernel_size,
            kernel_ops,
            distance_type,
        )
        self._monai: dict[tuple[int, int], torch.nn.Module] = {}

    def _hparams(self):
        return ("alpha", "kernel_size", "kernel_ops", "distance_type", "sigma", "ignore_index")

    def monai_loss(self, num_classes: int, spatial_dims: int) -> torch.nn.Module:
        """The ``monai.losses.NACLLoss`` used for this number of classes and spatial dims."""
        key = (num_classes, spatial_dims)
        if key not in self._monai:
            from monai.losses import NACLLoss as MonaiNACL

            self._monai[key] = MonaiNACL(
                classes=num_classes,
                dim=spatial_dims,
                kernel_size=self.kernel_size,
                kernel_ops=self.kernel_ops,
                distance_type=self.distance_type,
                alpha=self.alpha,
                sigma=self.sigma,
            )
        return self._monai[key]

    def loss(self, px: Pixels) -> Tensor:
        if px.spatial_dims not in (2, 3):
            raise ValueError(
                f"NACLLoss needs 2 or 3 spatial dims, got logits {tuple(px.logits.shape)}"
            )
        nacl = self.monai_loss(px.num_classes, px.spatial_dims)
        if px.valid is None:
            return nacl(px.logits, px.target)
        valid = px.valid.to(px.logits.dtype)
        with torch.no_grad():
            onehot = torch.zeros_like(px.logits).scatter_(1, px.index, valid)
            tau = nacl.svls_layer(onehot)
        diff = (tau - px.logits).abs() if self.distance_type == "l1" else (tau - px.logits) ** 2
        penalty = (diff * valid).sum() / (px.count * px.num_classes)
        ce = F.cross_entropy(px.logits, px.target, ignore_index=px.ignore_index)
        return ce + self.alpha * penalty
