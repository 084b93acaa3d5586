"""One pass per piece of a case: every calibration table ``score`` reports, at one temperature.

A piece is ``log p (K, n)`` float64 (``p`` clipped at its dtype's smallest normal), labels
``y (n,)`` and the argmax ``pred (n,)``. With ``z = log p / T`` (T = 1 as saved) and
``d_k = z_max - z_k`` (the logit distances), everything follows from ``d`` in float64:

    s_k  = exp(-d_k) / sum_j exp(-d_j)      (at T = 1: p_k / sum_j p_j, the same number)
    NLL  = log sum_j exp(-d_j) + d_y        (-log softmax(z)_y)

Each (voxel, class) pair goes to slot ``region, code, k, B - ceil(B s_k)`` of one flat table
(``code = 2 [k == pred] + [k == y]``, ``region`` 0 on the ground-truth foreground y != 0, 1 on
the background), so ONE count and ONE confidence-sum pass give both the per-case foreground
tables and the all-voxel tables of ``CalibrationMeter`` (loaded with ``load_state_dict``: the
same numbers its ``update`` gives), with the sums of ``s_k^2`` and of the NLL per region. The
logit distances go to the cells of ``LogitDistanceHistogram`` (rows "all" and "mean"): when its
boundaries are the grid ``j h`` with ``h`` a power of two (the default: 0.5), the cell is
``ceil(d / h)``, exact; otherwise ``bucketize``, as the histogram does.

The tensors live on ``device`` (the CPU by default; CUDA: ``case.score_device``); ``to("cpu")``
brings them back before a case's tables are sent or merged.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram


class Tables:
    """The tables of one temperature (None: as saved), summed over the pieces given to ``add``."""

    def __init__(
        self, k: int, n_bins: int, hist: LogitDistanceHistogram, temperature=None, device=None
    ):
        self.k, self.b, self.t = k, n_bins, temperature
        self.device = dev = torch.device("cpu" if device is None else device)
        self.size = 4 * k * (n_bins + 1)  # one region
        c_k = torch.arange(k, dtype=torch.float64, device=dev) * (n_bins + 1) + n_bins
        self.c_k = c_k.view(k, 1)
        self.code_inc = torch.tensor([k * (n_bins + 1), 2 * k * (n_bins + 1)], device=dev)
        self.code_inc = self.code_inc.view(2, 1)
        self.hist = hist
        bounds = hist._bounds
        h = hist.max_distance / hist.n_bins
        grid = h > 0 and math.log2(h).is_integer()
        self.step = h if grid and np.array_equal(bounds, np.arange(len(bounds)) * h) else None
        self.bounds = torch.as_tensor(bounds, device=dev)
        self.n_cells = len(bounds) + 1
        self.reset()

    def reset(self) -> None:
        # joint[slot, cell]: the calibration slot and the distance cell of every (voxel, class)
        dev = self.device
        self.joint = torch.zeros(2 * self.size * self.n_cells, dtype=torch.int64, device=dev)
        self.conf_t = torch.zeros(2 * self.size, dtype=torch.float64, device=dev)
        self.mean_cells = torch.zeros(self.n_cells, dtype=torch.int64, device=dev)
        self.sums = np.zeros((2, 2), np.float64)  # region x (sum s_k^2, NLL sum)
        self.n = np.zeros(2, np.int64)
        self.winners = 0  # one d = 0 per voxel that is not a distance (the argmax's own)
        self.truth = None

    def to(self, device) -> Tables:
        """Move the tensors to ``device`` (in place); returns self."""
        self.device = dev = torch.device(device)
        for name in ("c_k", "code_inc", "bounds", "joint", "conf_t", "mean_cells", "truth"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(dev))
        return self

    def _cells(self, d: torch.Tensor) -> torch.Tensor:
        if self.step is None:
            return torch.bucketize(d, self.bounds)
        return torch.ceil(d * (1.0 / self.step)).clamp_(0, self.n_cells - 1).long()

    def add(self, logp, logmax, y, pred, fg, q=None) -> None:
        """Add one piece: ``logp (K, n)`` float64, ``logmax (n,)``, labels, argmax, fg mask."""
        n = y.numel()
        d = torch.sub(logmax, logp)  # (K, n), exactly 0 at the argmax
        if self.t is not None:
            d /= self.t
        cells = self._cells(d)
        self.winners += n
        mean = self._cells(d.sum(0) / (self.k - 1))
        self.mean_cells.scatter_add_(0, mean, _ones(n, d.device))
        e = torch.exp(d.neg_())  # d is spent: e_k = exp(-d_k) <= 1, e_pred = 1
        total = e.sum(0)
        s = e.div_(total)
        nll = total.log_() + torch.gather(d, 0, y.view(1, n)).neg_().view(n)
        pos = torch.add(self.c_k, s, alpha=-self.b).long()  # k(B+1) + B - ceil(B s_k)
        pos.scatter_add_(0, torch.stack([y, pred]), self.code_inc.expand(2, n))
        bg = ~fg
        pos += bg.view(1, n) * self.size
        flat = pos.view(-1)
        self.conf_t.scatter_add_(0, flat, s.view(-1))
        joint = cells.add_(pos, alpha=self.n_cells).view(-1)
        self.joint.scatter_add_(0, joint, _ones(joint.numel(), d.device))
        sq = torch.linalg.vecdot(s, s, dim=0)
        for r, mask in enumerate((fg, bg)):
            self.sums[r] += [float(sq[mask].sum()), float(nll[mask].sum())]
            self.n[r] += int(mask.sum())
        if q is not None:
            from mls_tutorial.metrics import truth_table

            table = truth_table(s[None], q[None], fg[None], self.b)
            self.truth = table if self.truth is None else self.truth + table

    @property
    def count(self) -> np.ndarray:
        return self.joint.view(2 * self.size, self.n_cells).sum(1).cpu().numpy()

    @property
    def conf(self) -> np.ndarray:
        return self.conf_t.cpu().numpy()

    @property
    def cells(self) -> np.ndarray:
        """``(2, cells)``: rows "all" (every non-winning distance) and "mean"."""
        cells_all = self.joint.view(2 * self.size, self.n_cells).sum(0).clone()
        cells_all[0] -= self.winners
        return torch.stack([cells_all, self.mean_cells]).cpu().numpy()

    # ------------------------------------------------------------------ results
    def _state(self, regions) -> dict:
        k, b = self.k, self.b
        count = sum(self.count[r * self.size : (r + 1) * self.size] for r in regions)
        conf = sum(self.conf[r * self.size : (r + 1) * self.size] for r in regions)
        return {
            "count": torch.from_numpy(_increasing(count, k, b)),
            "conf_sum": torch.from_numpy(_increasing(conf, k, b)),
            "sums": torch.from_numpy(self.sums[list(regions)].sum(0)),
            "n_logit": int(self.n[list(regions)].sum()),
            "volumes": [],
        }

    def meter(self, region: str) -> CalibrationMeter:
        """A ``CalibrationMeter`` holding these tables (``"foreground"`` or ``"all"``)."""
        meter = CalibrationMeter(self.k, n_bins=self.b, region=region)
        regions = (0,) if region == "foreground" else (0, 1)
        meter.load_state_dict({"config": meter._config(), **self._state(regions)})
        return meter

    def add_to(self, other: Tables) -> None:
        """Add these tables into ``other`` (the pooled ones)."""
        other.joint += self.joint
        other.conf_t += self.conf_t
        other.mean_cells += self.mean_cells
        other.sums += self.sums
        other.n += self.n
        other.winners += self.winners

    def histogram(self) -> LogitDistanceHistogram:
        hist = LogitDistanceHistogram(**self.hist._config())
        hist.load_state_dict({"config": hist._config(), "cells": torch.from_numpy(self.cells)})
        return hist


def _ones(n: int, device) -> torch.Tensor:
    return torch.ones((), dtype=torch.int64, device=device).expand(n)


def _increasing(flat: np.ndarray, k: int, b: int) -> np.ndarray:
    """``(4, K, B)`` bins in increasing order from the slots ``B - ceil(B s)`` (slot B, a
    confidence of exactly 0, joins the first bin)."""
    t = flat.reshape(4, k, b + 1)[:, :, ::-1]  # index j <-> ceil(B s) = j
    out = t[:, :, 1:].copy()
    out[:, :, 0] += t[:, :, 0]
    return out
