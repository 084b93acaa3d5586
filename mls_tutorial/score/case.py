"""Score one case: its calibration tables at each temperature, Dice, HD95, saturation counts.

``score_case`` reads the case piece by piece (``checks.Pieces``). Per piece, with ``p`` the
saved probabilities (float32; float64 kept; float16 upcast exactly):

    log p  = log(max(p, tiny))   tiny: the smallest normal number of p's dtype, so that a
                                 saturated p = 0 gives a finite log (and no NaN)
    pred   = argmax_k p_k        (the first maximum; the argmax of log p / T for every T)

and ``tables.Tables.add`` takes ``log p`` as the logits at each temperature. The argmax map is
kept (int16 or less) for Dice (a confusion matrix summed over pieces) and HD95 (per class in
its bounding box, ``metrics.hd95_per_class``), computed after the probabilities are released.
The result (``CaseScore``) holds only small arrays: it is what a worker process sends back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mls_tutorial.metrics import LogitDistanceHistogram
from mls_tutorial.metrics.distances import DEFAULT_MARGINS
from mls_tutorial.score.checks import (
    Pieces,
    as_case,
    check_case,
    check_piece,
    permutation,
    sum_tolerance_for,
)
from mls_tutorial.score.tables import Tables

#: a case with more probability entries than this gets its own progress bar
LARGE_CASE_ENTRIES = 1 << 27


@dataclass
class CaseScore:
    """What one case contributes: tables per temperature, confusion matrices, Dice/HD95."""

    name: str
    k: int
    tables: list[Tables]
    confusion: np.ndarray  # (K, K) voxel counts [pred, label]
    bayes_confusion: np.ndarray | None  # [pred, argmax q], with true probabilities only
    hd95: np.ndarray  # (K - 1,) mm
    sat: dict = field(default_factory=dict)


def distance_histogram(k: int, margins) -> LogitDistanceHistogram:
    return LogitDistanceHistogram(k, margins=sorted({*DEFAULT_MARGINS, *margins}))


class _Walk:
    """The per-piece state of one case: argmax map, confusion matrices, saturation counts."""

    def __init__(self, case, p, y, k: int, perm):
        self.k, self.perm = k, perm
        self.inv = None if perm is None else torch.from_numpy(np.argsort(perm))
        self.tiny, self.tol = float(np.finfo(p.dtype).tiny), sum_tolerance_for(p.dtype, k)
        self.pred = np.empty(y.shape, np.uint8 if k <= 256 else np.int32)
        self.labels = y if perm is None else np.empty(y.shape, self.pred.dtype)
        self.confusion = torch.zeros(k * k, dtype=torch.int64)
        self.bayes = None if case.true_probabilities is None else torch.zeros_like(self.confusion)
        self.sat = {"voxels": 0, "saturated": 0, "zero_entries": 0, "entries": 0}
        self.sat["dtype"] = str(p.dtype)

    def piece(self, case, pieces, idx, pc, yc, tables) -> None:
        k, perm = self.k, self.perm
        check_piece(case.name, pc, yc, k, self.tol)
        q_all = case.true_probabilities
        q = None if q_all is None else pieces.take(q_all, idx).double()
        if perm is not None:
            pc, yc = pc[perm], self.inv[yc]
            q = None if q is None else q[perm]
        conf, pc_pred = pc.max(0)
        logp = pc.double().clamp_min(self.tiny).log_()
        logmax = logp.gather(0, pc_pred.view(1, -1)).view(-1)
        fg = yc != 0
        for t in tables:
            t.add(logp, logmax, yc, pc_pred, fg, q)
        self.confusion += torch.bincount(pc_pred * k + yc, minlength=k * k)
        pieces.write(self.pred, idx, pc_pred.numpy())
        if perm is not None:
            pieces.write(self.labels, idx, yc.numpy())
        if q is not None:
            self.bayes += torch.bincount(pc_pred * k + q.argmax(0), minlength=k * k)
        self.sat["saturated"] += int((conf == 1).sum())
        self.sat["zero_entries"] += pc.numel() - int(torch.count_nonzero(pc))
        self.sat["voxels"] += yc.numel()
        self.sat["entries"] += pc.numel()


def score_case(
    item,
    index: int = 0,
    *,
    temperatures=(None,),
    background: int = 0,
    n_bins: int = 15,
    margins=(),
    hd95: bool = True,
    num_classes: int | None = None,
    progress: bool = False,
) -> CaseScore:
    """Score one case (a ``Case``, a tuple or a ``CaseFiles``); see the module docstring."""
    from tqdm.auto import tqdm

    from mls_tutorial.metrics import hd95_per_class

    case = as_case(item, index)
    p, y, k = check_case(case, num_classes)
    hist = distance_histogram(k, margins)
    tables = [Tables(k, n_bins, hist, t) for t in temperatures]
    walk = _Walk(case, p, y, k, permutation(k, background))
    pieces = Pieces(p, y)
    large = progress and p.size > LARGE_CASE_ENTRIES
    bar = tqdm(pieces, desc=case.name, unit="slab", leave=False, disable=not large)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: one thread each; cases in parallel: --workers
    try:
        for idx, pc, yc in bar:
            walk.piece(case, pieces, idx, pc, yc, tables)
    finally:
        torch.set_num_threads(threads)
    name, spacing = case.name, case.spacing
    del case, p, y, pieces, bar  # the probabilities may go now
    spacing = None if spacing is None else tuple(float(s) for s in spacing)
    hd = np.full(k - 1, np.nan)
    if hd95:
        hd = hd95_per_class(walk.pred, walk.labels, k, spacing=spacing)
    bayes = walk.bayes
    return CaseScore(
        name=name,
        k=k,
        tables=tables,
        confusion=walk.confusion.view(k, k).numpy(),
        bayes_confusion=None if bayes is None else bayes.view(k, k).numpy(),
        hd95=hd,
        sat=walk.sat,
    )
