"""Random float64 logits and labels for the loss tests (one helper, shared by the loss test files)."""

from __future__ import annotations

import torch

IGNORE = -100


def make(shape, seed=0, scale=4.0, ignore_frac=0.0):
    """Logits ``(N, K, *spatial)`` ~ N(0, scale^2) in float64 and labels in [0, K); a share
    ``ignore_frac`` of the labels set to ``IGNORE`` (never the first pixel)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if ignore_frac:
        drop = torch.rand(y.shape, generator=g) < ignore_frac
        drop.view(-1)[0] = False
        y = y.masked_fill(drop, IGNORE)
    return z, y
