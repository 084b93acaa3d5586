"""Streaming histogram of logit distances, the paper's central picture.

Per voxel, ``d_k = max_j z_j - z_k`` (winner = predicted argmax; needs no label). Two summaries:
``"all"``: the K - 1 distances of the non-winning classes; ``"mean"``: their per-voxel mean
``sum_k d_k / (K - 1)``. Bins are equal width on ``[0, max_distance]``, right-closed with 0 in the
first bin; distances above ``max_distance`` are counted in ``overflow``.

Exactness: the state is a table of int64 counts per cell between consecutive *boundaries*, the
union of the bin edges and the ``margins`` given at construction. A distance goes to its cell by
exact comparison with the float64 boundaries (``torch.bucketize``), so ``count_above(m)`` (the
number of distances ``d > m``) is exact for every boundary ``m``, whatever the bin width.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._inputs import (
    all_reduce_copy,
    as_tensor,
    check_int,
    per_voxel_shape,
    raise_if_any,
)

DEFAULT_MARGINS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20)
SUMMARIES = ("all", "mean")


class LogitDistanceHistogram:
    """Streaming histogram of logit distances with exact counts above given margins.

    Args:
        num_classes: K >= 2.
        max_distance: upper end of the binned range (> 0); larger distances go to ``overflow``.
        n_bins: number of equal-width bins on ``[0, max_distance]``.
        margins: distances ``m >= 0`` at which ``fraction_above`` must be exact (the bin edges
            are always exact too).
        device: where the counts live; by default the device of the first input.
    """

    def __init__(
        self,
        num_classes: int,
        max_distance: float = 40.0,
        n_bins: int = 80,
        margins=DEFAULT_MARGINS,
        device: str | torch.device | None = None,
    ):
        self.num_classes = check_int(num_classes, "num_classes", 2)
        self.n_bins = check_int(n_bins, "n_bins", 1)
        self.max_distance = float(max_distance)
        if not (math.isfinite(self.max_distance) and self.max_distance > 0):
            raise ValueError(f"max_distance must be finite and > 0, got {max_distance!r}")
        m = np.asarray(margins, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(m) & (m >= 0)):
            raise ValueError(f"margins must be finite and >= 0, got {margins!r}")
        self.margins = tuple(float(x) for x in m)
        self.edges = np.linspace(0.0, self.max_distance, self.n_bins + 1)
        self._bounds = np.unique(np.concatenate([self.edges, m]))
        upper = np.append(self._bounds, np.inf)  # cell i holds (bounds[i-1], bounds[i]]
        self._cell_bin = np.searchsorted(self.edges[1:], upper, side="left")  # n_bins: overflow
        self._cells = len(upper)
        self.device = None if device is None else torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Forget every voxel seen so far."""
        size = 2 * self._cells + 1  # rows "all" and "mean", then the dump slot
        self._counts = torch.zeros(size, dtype=torch.int64, device=self.device or "cpu")
        self._placed = self.device is not None

    def update(self, logits, mask=None) -> None:
        """Add logits ``(N, K, *spatial)``; ``mask`` (bool, ``(N, *spatial)``) selects voxels."""
        z = as_tensor(logits, "logits")
        if not z.is_floating_point() or not 2 <= z.ndim <= 5 or z.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must be floating point with shape (N, {self.num_classes}, *spatial) "
                f"(0 to 3 spatial dims), got {z.dtype} {tuple(z.shape)}"
            )
        if mask is not None:
            mask = per_voxel_shape(as_tensor(mask, "mask"), z.shape, "logits", "mask")
            if mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
        if not self._placed:
            self._counts, self._placed = self._counts.to(z.device), True
        dev = self._counts.device
        n, k = z.shape[:2]
        z = z.to(dev).reshape(n, k, -1)
        z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        top, pred = z.max(dim=1, keepdim=True)
        raise_if_any((~torch.isfinite(top)).any().view(1), ["logits contain NaN or +inf"])
        d = (top - z).contiguous()  # logits' precision (channels-last too); compared in float64
        bounds = torch.as_tensor(self._bounds, device=dev)
        dump = 2 * self._cells
        cells = torch.bucketize(d.double(), bounds).scatter_(1, pred, dump)  # winner: no distance
        mean = (d.sum(1) / (k - 1)).double()
        mean_cells = torch.bucketize(mean, bounds).add_(self._cells)
        if mask is not None:
            keep = mask.to(dev).reshape(n, -1)
            cells.masked_fill_(~keep.unsqueeze(1), dump)
            mean_cells.masked_fill_(~keep, dump)
        flat = torch.cat([cells.reshape(-1), mean_cells.reshape(-1)])
        one = torch.ones((), dtype=torch.int64, device=dev)
        self._counts.scatter_add_(0, flat, one.expand(flat.numel()))

    # ---------------------------------------------------------------- results
    def _cell_counts(self, summary: str) -> np.ndarray:
        if summary not in SUMMARIES:
            raise ValueError(f"summary must be one of {SUMMARIES}, got {summary!r}")
        counts = all_reduce_copy(self._counts).cpu().numpy()
        row = SUMMARIES.index(summary)
        return counts[row * self._cells : (row + 1) * self._cells]

    def histogram(self, summary: str = "all") -> dict:
        """``edges`` (n_bins + 1), ``counts`` (n_bins, int64), ``overflow``, ``n``, ``summary``."""
        cells = self._cell_counts(summary)
        binned = np.bincount(self._cell_bin, weights=cells, minlength=self.n_bins + 1)
        binned = np.rint(binned).astype(np.int64)
        return {
            "edges": self.edges.copy(),
            "counts": binned[: self.n_bins],
            "overflow": int(binned[self.n_bins]),
            "n": int(cells.sum()),
            "summary": summary,
        }

    def count_above(self, margin: float, summary: str = "all") -> int:
        """Exact number of distances ``d > margin``; ``margin`` must be a margin or a bin edge."""
        margin = float(margin)
        if not (math.isfinite(margin) and margin >= 0):
            raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
        j = np.flatnonzero(self._bounds == margin)
        if j.size == 0:
            width = self.max_distance / self.n_bins
            raise ValueError(
                f"margin={margin} is not exact here: exact margins are {self.margins} and the bin "
                f"edges k * {width:g} up to {self.max_distance:g}; pass it in margins=..."
            )
        return int(self._cell_counts(summary)[j[0] + 1 :].sum())

    def fraction_above(self, margin: float, summary: str = "all") -> float:
        """Exact fraction of distances ``d > margin`` (NaN when nothing was seen)."""
        above = self.count_above(margin, summary)
        n = int(self._cell_counts(summary).sum())
        return above / n if n else math.nan

    # ---------------------------------------------------------- serialisation
    def _config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "max_distance": self.max_distance,
            "n_bins": self.n_bins,
            "margins": list(self.margins),
        }

    def state_dict(self) -> dict:
        """Config and the local cell counts (int64 CPU tensor, rows all/mean)."""
        cells = self._counts[: 2 * self._cells].cpu().view(2, self._cells).clone()
        return {"config": self._config(), "cells": cells}

    def load_state_dict(self, state: dict) -> None:
        """Replace the counts by ``state`` (from ``state_dict``); the config must match."""
        config = dict(state.get("config", {}))
        config["margins"] = [float(x) for x in config.get("margins", [])]
        if config != self._config():
            raise ValueError(f"state config {state.get('config')} != histogram {self._config()}")
        cells = torch.as_tensor(state["cells"], dtype=torch.int64)
        if tuple(cells.shape) != (2, self._cells):
            raise ValueError(
                f"state['cells'] has shape {tuple(cells.shape)}, not (2, {self._cells})"
            )
        self._counts.zero_()
        self._counts[: 2 * self._cells] = cells.reshape(-1).to(self._counts.device)

    def to_dict(self) -> dict:
        """JSON-serialisable dict; ``LogitDistanceHistogram.from_dict`` rebuilds it."""
        state = self.state_dict()
        return {"type": "LogitDistanceHistogram", **state, "cells": state["cells"].tolist()}

    @classmethod
    def from_dict(cls, data: dict, device=None) -> LogitDistanceHistogram:
        """Rebuild a histogram from ``to_dict()`` output."""
        if data.get("type") != "LogitDistanceHistogram" or "config" not in data:
            raise ValueError("data is not a LogitDistanceHistogram.to_dict() dict")
        hist = cls(**data["config"], device=device)
        hist.load_state_dict(data)
        return hist


def distance_summary(logits, margins=(5.0,)) -> dict:
    """Exact summary of the non-winning logit distances of ``logits``, for every voxel.

    ``logits``: ``(N, K, *spatial)`` or an iterable of such chunks (e.g. one per volume). Per
    voxel, ``d_k = max_j z_j - z_k`` in the logits' precision (as the histogram computes them);
    the winner's own ``d = 0`` is left out, so ``n = voxels * (K - 1)``. Returns ``n``,
    ``voxels``, ``mean`` (float64 mean of the ``n`` distances), ``max`` and ``share_above``
    ``{m: share of d > m}`` for each margin (exact comparisons, like ``count_above``).
    """
    margins = tuple(float(m) for m in np.asarray(margins, dtype=np.float64).reshape(-1))
    if not all(math.isfinite(m) and m >= 0 for m in margins):
        raise ValueError(f"margins must be finite and >= 0, got {margins!r}")
    chunks = [logits] if isinstance(logits, torch.Tensor | np.ndarray) else list(logits)
    if not chunks:
        raise ValueError("logits: no chunk given")
    total, voxels, n, top_d = 0.0, 0, 0, 0.0
    above = dict.fromkeys(margins, 0)
    k_seen = None
    for chunk in chunks:
        z = as_tensor(chunk, "logits")
        if not z.is_floating_point() or not 2 <= z.ndim <= 5 or z.shape[1] < 2:
            raise ValueError(
                "logits must be floating point with shape (N, K, *spatial), K >= 2, "
                f"got {z.dtype} {tuple(z.shape)}"
            )
        if k_seen is not None and z.shape[1] != k_seen:
            raise ValueError(f"chunks disagree on K: {k_seen} and {z.shape[1]}")
        k_seen = z.shape[1]
        if z.numel() == 0:
            continue
        z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        z = z.reshape(z.shape[0], k_seen, -1)
        top = z.max(dim=1, keepdim=True).values
        raise_if_any((~torch.isfinite(z)).any().view(1), ["logits contain NaN or inf"])
        d = (top - z).double()  # the winner's d is exactly 0 and m >= 0: it adds nothing
        total += float(d.sum())
        voxels += z.shape[0] * z.shape[2]
        n += z.shape[0] * z.shape[2] * (k_seen - 1)
        top_d = max(top_d, float(d.max()))
        for m in margins:
            above[m] += int((d > m).sum())
    if n == 0:
        raise ValueError("logits hold no voxel")
    return {
        "n": n,
        "voxels": voxels,
        "mean": total / n,
        "max": top_d,
        "share_above": {m: above[m] / n for m in margins},
    }
