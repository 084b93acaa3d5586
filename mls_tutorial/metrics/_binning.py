"""The hot path of ``CalibrationMeter``: one batch of probabilities into flat bin tables.

Every (voxel, class) pair ``(v, k)`` adds 1 to ``count`` and ``s_k`` to ``conf`` at

    pos = code * K(B+1) + k (B+1) + (B - ceil(B s_k)),   code = 2 [k == pred_v] + [k == y_v]

so ONE scatter per table feeds both the classwise rows (all codes) and the top-label row (codes
2, 3: the predicted class, whose ``s_k`` is the confidence), and the hits (codes 1, 3 classwise,
code 3 top-label). ``B - ceil(B s)`` is ``trunc(C - B s)`` for an integer C: a single float64 add
and an integer cast; ``C - B s`` is exact in float64 for float32 ``s``, so the bin is exact; for
float64 ``s`` (softmax of logits is taken in float64) only a value within ~1e-14 of an edge
depends on rounding.
Masked voxels land in a second copy of the table (the dump), which is never read.

On CPU the batch is cut into pieces that stay in cache; each piece is checked (a free host read
on CPU) before it touches the tables. On CUDA the batch is one piece: one host sync per update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._inputs import raise_if_any

# CPU pieces: one thread works on 32K voxels at a time (they stay in cache); several threads get
# 1M-voxel pieces, since each op's parallel start-up would dominate small pieces (badly so on a
# busy machine: measured 4x slower with 64K pieces on 2 shared cores).
PIECE_VOXELS_ONE_THREAD, PIECE_VOXELS_THREADS = 1 << 15, 1 << 20
LANES_CUDA = 32  # copies of the tables on CUDA, to spread same-address atomic adds


@dataclass
class Spec:
    """What the tables mean: classes, bins, the scored region."""

    num_classes: int
    n_bins: int
    region: str = "all"
    ignore_index: int | None = None
    _consts: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:  # entries of the table proper (the dump follows)
        return 4 * self.num_classes * (self.n_bins + 1)

    def consts(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class float64 ``C_k`` and the code increments ``(K(B+1), 2K(B+1))`` on ``device``."""
        if device not in self._consts:
            k, s = self.num_classes, self.n_bins + 1
            c = (torch.arange(k, dtype=torch.float64) * s + self.n_bins).view(1, k, 1)
            codes = torch.tensor([k * s, 2 * k * s], dtype=torch.int64).view(1, 2, 1)
            self._consts[device] = (c.to(device), codes.to(device))
        return self._consts[device]


def new_tables(spec: Spec, device) -> dict[str, torch.Tensor]:
    """Zero tables: int64 ``count``, float64 ``conf`` (table + dump, one copy a lane), sums.

    On CUDA the voxels are spread over ``LANES_CUDA`` copies (lanes) of the tables, summed by
    ``fold``; elsewhere there is one lane.
    """
    lanes = lanes_for(torch.device(device))
    return {
        "count": torch.zeros(lanes * 2 * spec.size, dtype=torch.int64, device=device),
        "conf": torch.zeros(lanes * 2 * spec.size, dtype=torch.float64, device=device),
        "sums": torch.zeros(2, dtype=torch.float64, device=device),  # sum_k s_k^2, NLL
        "n_logit": torch.zeros((), dtype=torch.int64, device=device),
    }


def lanes_for(device: torch.device) -> int:
    return LANES_CUDA if device.type == "cuda" else 1


def fold(spec: Spec, tables: dict) -> dict[str, torch.Tensor]:
    """The tables with their lanes summed into one."""
    width = 2 * spec.size
    out = dict(tables)
    for key in ("count", "conf"):
        out[key] = tables[key].view(-1, width).sum(0)
    return out


def to_device(spec: Spec, tables: dict, device) -> dict[str, torch.Tensor]:
    """The same numbers in tables made for ``device`` (held in lane 0)."""
    folded, out = fold(spec, tables), new_tables(spec, device)
    for key, value in folded.items():
        target = out[key].view(-1)[: value.numel()]  # lane 0
        target += value.to(device).view(-1)
    return out


def first_argmax(p: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Index of the FIRST maximum over dim 1 (``sum_k sign(max - cummax_k)``), int64.

    Several times faster than ``torch.max(dim=1)`` on CPU for small K.
    """
    run = p[:, 0]
    pred = torch.sign(conf - run)
    for k in range(1, p.shape[1] - 1):
        run = torch.maximum(run, p[:, k])
        pred += torch.sign(conf - run)
    return pred.long()


def _pieces(n: int, s: int, device) -> list[tuple[slice, slice]]:
    """(rows, columns) slices of at most ``piece`` voxels on CPU; the whole batch elsewhere."""
    one = torch.get_num_threads() == 1
    piece = PIECE_VOXELS_ONE_THREAD if one else PIECE_VOXELS_THREADS
    if device.type != "cpu" or n * s <= piece:
        return [(slice(None), slice(None))]
    if s >= piece:
        return [
            (slice(i, i + 1), slice(j, j + piece)) for i in range(n) for j in range(0, s, piece)
        ]
    rows = piece // s
    return [(slice(i, i + rows), slice(None)) for i in range(0, n, rows)]


def accumulate(spec: Spec, tables: dict, scores: torch.Tensor, y: torch.Tensor, logits: bool):
    """Add ``scores (N, K, S)`` (logits or probabilities) and labels ``y (N, S)`` to ``tables``."""
    if y.numel() == 0:
        return
    pieces = _pieces(scores.shape[0], scores.shape[2], scores.device)
    for rows, cols in pieces:
        # a fresh table a piece keeps each float64 running sum short (smaller rounding error)
        part = tables if len(pieces) == 1 else new_tables(spec, scores.device)
        _piece(spec, part, scores[rows, :, cols], y[rows, cols], logits)
        if part is not tables:
            for key, value in part.items():
                tables[key] += value


def _check(spec: Spec, p, y_safe, conf, logits: bool) -> None:
    """Labels in range, finite logits / probabilities in [0, 1]: one host read."""
    lo, hi = torch.aminmax(y_safe)
    bad_label = (lo < 0) | (hi >= spec.num_classes)
    if logits:  # max propagates NaN; +inf logits give a NaN softmax
        bad_value, what = ~(conf <= 1).all(), "logits contain NaN or +inf"
    else:
        p_lo, p_hi = torch.aminmax(p)
        bad_value = ~((p_lo >= 0) & (p_hi <= 1))  # NaN fails both comparisons
        what = "probs must lie in [0, 1] (found a value outside it, or NaN)"
    ii = spec.ignore_index
    note = "" if ii is None else f" or equal ignore_index={ii}"
    msg = f"target labels must be in [0, {spec.num_classes}){note}"
    raise_if_any(torch.stack([bad_label, bad_value]), [msg, what])


def _keep(spec: Spec, y: torch.Tensor, pred: torch.Tensor):
    """Labels safe to gather (ignored -> 0) and the boolean mask of scored voxels (None: all)."""
    ii = spec.ignore_index
    keep = None if ii is None else y != ii
    if keep is not None and ii != 0:
        y = y * keep
    if spec.region != "all":
        fg = y != 0
        if spec.region == "union":
            fg |= pred != 0
        keep = fg if keep is None else keep & fg
    return y, keep


def _piece(spec: Spec, tables: dict, scores, y, logits: bool) -> None:
    # softmax in float64: exact for float32 logits up to float64 rounding, whatever the layout
    p = torch.softmax(scores, dim=1, dtype=torch.float64) if logits else scores
    conf = p.amax(dim=1)
    pred = first_argmax(p, conf)
    y_safe, keep = _keep(spec, y, pred)
    _check(spec, p, y_safe, conf, logits)

    c_k, code_inc = spec.consts(p.device)
    p64 = p if logits else p.to(torch.float64, copy=True)  # a copy we may modify
    pos = torch.add(c_k, p64, alpha=-spec.n_bins).long()  # k(B+1) + B - ceil(B s_k)
    n, k, s = pos.shape
    pos.scatter_add_(1, torch.stack([y_safe, pred], dim=1), code_inc.expand(n, 2, s))
    if keep is not None:
        pos += (~keep).unsqueeze(1) * spec.size  # masked voxels -> the dump copy
        p64 *= keep.unsqueeze(1)
    lanes = tables["count"].numel() // (2 * spec.size)
    if lanes > 1:  # neighbouring voxels add into different copies of the tables
        pos += (torch.arange(s, device=pos.device) % lanes * (2 * spec.size)).view(1, 1, s)
    flat = pos.view(-1)
    one = torch.ones((), dtype=torch.int64, device=flat.device)
    tables["count"].scatter_add_(0, flat, one.expand(flat.numel()))
    tables["conf"].scatter_add_(0, flat, p64.view(-1))
    tables["sums"][0] += torch.dot(p64.view(-1), p64.view(-1))
    if logits:
        # -log_softmax(z)_y = logsumexp(z) - z_y, logsumexp(z) = max(z) - log(s_pred)
        z_y = scores.gather(1, y_safe.unsqueeze(1)).squeeze(1).double()
        nll = scores.amax(dim=1).double() - z_y - conf.double().log()
        if keep is not None:
            nll = torch.where(keep, nll, 0.0)
        tables["sums"][1] += nll.sum()
        tables["n_logit"] += keep.sum() if keep is not None else y.numel()


def merge(count: np.ndarray, conf: np.ndarray, sums: np.ndarray, k: int, b: int) -> tuple:
    """Code tables -> ``(count, hits, conf_sum)`` of shape ``(1 + K, B)`` and the Brier sum.

    Row 0 is top-label (codes 2, 3), row ``1 + k`` classwise for class k (all codes).
    """
    c4 = code_bins(count, k, b)
    f4 = code_bins(conf, k, b)
    rows_count = np.concatenate([(c4[2] + c4[3]).sum(0, keepdims=True), c4.sum(0)])
    rows_hits = np.concatenate([c4[3].sum(0, keepdims=True), c4[1] + c4[3]])
    rows_conf = np.concatenate([(f4[2] + f4[3]).sum(0, keepdims=True), f4.sum(0)])
    n = int(rows_count[0].sum())
    brier = sums[0] - 2 * (f4[1] + f4[3]).sum() + n  # sum_k s_k^2 - 2 s_y + 1, summed
    return rows_count, rows_hits, rows_conf, brier


def code_bins(flat: np.ndarray, k: int, b: int) -> np.ndarray:
    """``(4, K, B)`` bins in increasing order from the reversed slots (slot B = confidence 0)."""
    t = flat[: 4 * k * (b + 1)].reshape(4, k, b + 1)[:, :, ::-1]  # slot j <-> ceil(B s) = j
    out = t[:, :, 1:].copy()
    out[:, :, 0] += t[:, :, 0]
    return out
