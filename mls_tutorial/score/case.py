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

``device`` (``score_device``: CPU by default, or CUDA): each piece is moved there and the tables
and confusion matrices live there (the same float64 sums, in another order on CUDA: the same
numbers within float tolerance); the argmax map is written back to the CPU for HD95 (MONAI, on
the CPU) and the ``CaseScore`` returned holds CPU arrays only, whatever the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mls_tutorial.device import pick_device
from mls_tutorial.metrics import LogitDistanceHistogram
from mls_tutorial.metrics.distances import DEFAULT_MARGINS
from mls_tutorial.score.checks import (
    PIECE_ENTRIES,
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
#: float entries per piece on CUDA: larger pieces, fewer kernel launches (float64 temporaries of
#: a few hundred MiB at most)
CUDA_PIECE_ENTRIES = 1 << 22


def score_device(name: str | torch.device | None = None) -> torch.device:
    """The device ``score`` computes on: None or ``"cpu"`` the CPU (the default), ``"auto"``
    CUDA when present (else the CPU), ``"cuda"``/``"cuda:N"`` checked usable. CPU or CUDA only:
    the tables add up in float64, which MPS does not have."""
    if name is None:
        return torch.device("cpu")
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = pick_device(name)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(name)!r}: score runs on cpu or cuda (float64 tables)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={str(name)!r}: {torch.cuda.device_count()} CUDA device(s)")
    return dev


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

    def __init__(self, case, p, y, k: int, perm, device: torch.device):
        self.k, self.perm, self.device = k, perm, device
        self.inv = None if perm is None else torch.from_numpy(np.argsort(perm)).to(device)
        self.tiny, self.tol = float(np.finfo(p.dtype).tiny), sum_tolerance_for(p.dtype, k)
        self.pred = np.empty(y.shape, np.uint8 if k <= 256 else np.int32)
        self.labels = y if perm is None else np.empty(y.shape, self.pred.dtype)
        self.confusion = torch.zeros(k * k, dtype=torch.int64, device=device)
        self.bayes = None if case.true_probabilities is None else torch.zeros_like(self.confusion)
        self.sat = {"voxels": 0, "saturated": 0, "zero_entries": 0, "entries": 0}
        self.sat["dtype"] = str(p.dtype)

    def piece(self, case, pieces, idx, pc, yc, tables) -> None:
        k, perm, dev = self.k, self.perm, self.device
        pc, yc = pc.to(dev), yc.to(dev)
        check_piece(case.name, pc, yc, k, self.tol)
        q_all = case.true_probabilities
        q = None if q_all is None else pieces.take(q_all, idx).to(dev, torch.float64)
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
        pieces.write(self.pred, idx, pc_pred.cpu().numpy())
        if perm is not None:
            pieces.write(self.labels, idx, yc.cpu().numpy())
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
    device: str | torch.device | None = None,
) -> CaseScore:
    """Score one case (a ``Case``, a tuple or a ``CaseFiles``); see the module docstring."""
    from tqdm.auto import tqdm

    from mls_tutorial.metrics import hd95_per_class

    dev = score_device(device)
    case = as_case(item, index)
    p, y, k = check_case(case, num_classes)
    hist = distance_histogram(k, margins)
    tables = [Tables(k, n_bins, hist, t, device=dev) for t in temperatures]
    walk = _Walk(case, p, y, k, permutation(k, background), dev)
    pieces = Pieces(p, y, PIECE_ENTRIES if dev.type == "cpu" else CUDA_PIECE_ENTRIES)
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
    return CaseScore(  # on the CPU: what a worker sends back, what CaseMerge adds
        name=name,
        k=k,
        tables=[t.to("cpu") for t in tables],
        confusion=walk.confusion.view(k, k).cpu().numpy(),
        bayes_confusion=None if bayes is None else bayes.view(k, k).cpu().numpy(),
        hd95=hd,
        sat=walk.sat,
    )
