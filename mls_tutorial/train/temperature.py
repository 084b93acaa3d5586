"""Post-hoc temperature scaling (Guo et al. 2017), the baseline users ask about.

``T* = argmin_{T > 0} mean_i -log softmax(z_i / T)_{y_i}`` over every voxel of the validation
volumes, found by L-BFGS on ``log T`` (so T stays positive) with float64 accumulation. The model
is unchanged; evaluate with ``evaluate(..., temperature=T*)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mls_tutorial.device import pick_device
from mls_tutorial.train import distributed as dist_utils
from mls_tutorial.train.evaluation import check_volumes, collect_logits


def optimal_temperature(
    logits: torch.Tensor, target: torch.Tensor, *, max_iter: int = 100, log_t_init: float = 0.0
) -> float:
    """The NLL-minimising temperature for voxel logits ``(M, K)`` and labels ``(M,)``."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (M, K) and target (M,), got {tuple(logits.shape)}, {tuple(target.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or inf")
    z = logits.detach().double()
    y = target.detach().long()
    log_t = torch.tensor([log_t_init], dtype=torch.float64, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * torch.exp(-log_t), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(torch.exp(log_t).item())
    if not math.isfinite(t) or t <= 0:
        raise RuntimeError(f"temperature scaling diverged (T={t})")
    return t


def fit_temperature(
    model: torch.nn.Module,
    volumes: Sequence[Any],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    amp: bool = True,
    max_voxels: int | None = 4_000_000,
    seed: int = 0,
) -> float:
    """Fit T on ``volumes`` (the validation set); returns T > 0.

    At most ``max_voxels`` voxels are used (a seeded uniform subsample beyond that), so memory
    stays bounded on large 3D data. Every rank computes the same T.
    """
    if not volumes:
        raise ValueError("volumes is empty: temperature scaling needs validation volumes")
    device = dist_utils.local_device(pick_device(device))
    z, y = collect_logits(model, volumes, device=device, batch_size=batch_size, amp=amp)
    check_volumes(volumes, z.shape[1])
    if max_voxels is not None and z.shape[0] > max_voxels:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(z.shape[0], generator=g)[:max_voxels].to(z.device)
        z, y = z[keep], y[keep]
    return optimal_temperature(z, y)
