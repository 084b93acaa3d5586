"""Checks of one case and the walk over its pieces, in the memory order of its probabilities.

``check_case`` checks shapes, dtypes and spacing before anything is read. ``Pieces`` walks a
case's probabilities ``(C, *spatial)`` along the spatial axis that is outermost in memory, a
slab of about ``entries / C`` voxels at a time, each slab copied contiguously (a ``.npy`` read
memory-mapped is read slab by slab); the labels and the argmax map are read and written in the
same voxel order. ``check_piece`` checks every value of a slab: finite, in [0, 1], sums 1 within
``sum_tolerance_for(dtype, K)``, labels in [0, K). float16 maps are accepted: each value is exact
in float32/float64, the sum tolerance is ``2 K eps(float16)`` and a saturated 0 is clipped at
float16's smallest normal (see ``core``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mls_tutorial.score.layouts import Case, ScoreInputError

#: float entries of the probabilities per piece (2^18: a few MiB of float64 temporaries)
PIECE_ENTRIES = 1 << 18


def as_case(item: Any, index: int) -> Case:
    """A ``Case`` from a ``Case``, a ``(probabilities, labels[, spacing[, name]])`` tuple, or an
    object whose ``load()`` reads one (``layouts.CaseFiles``: what a worker process is sent)."""
    if not isinstance(item, Case) and callable(getattr(item, "load", None)):
        item = item.load()
    if isinstance(item, Case):
        case = item
    elif isinstance(item, Sequence) and 2 <= len(item) <= 4:
        case = Case(*item)
    else:
        raise ScoreInputError(
            f"case {index}: expected (probabilities, labels, spacing) or a Case, got "
            f"{type(item).__name__}"
        )
    if case.name is None:
        case.name = f"case{index:03d}"
    return case


def _shape_message(name: str, probs_shape, label_shape) -> str:
    spatial, label = tuple(probs_shape[1:]), tuple(label_shape)
    text = (
        f"case {name}: probabilities have spatial shape {spatial} (array {tuple(probs_shape)}, "
        f"channel first) but the label map has shape {label}"
    )
    if spatial == label[::-1]:
        text += (
            ": the axes are reversed, the (Z, Y, X) order of SimpleITK/nnU-Net against the "
            "(X, Y, Z) order of nibabel; nnU-Net's .npz holds (C, Z, Y, X), a .npy must be "
            "(C, X, Y, Z)"
        )
    elif sorted(spatial) == sorted(label):
        text += ": the same sizes in another order, an axis-order mix-up"
    elif tuple(probs_shape[:-1]) == label or tuple(probs_shape[-1:]) + spatial[:-1] == label:
        text += ": the channel axis looks last; this layout wants the channel first"
    return text


def check_case(case: Case, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Shapes, dtypes and spacing of one case; returns ``(probabilities, labels, K)``."""
    p = case.probabilities
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p
    y = case.labels
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p.dtype.kind != "f":
        raise ScoreInputError(
            f"case {case.name}: probabilities must be floating point, got {p.dtype}"
        )
    if p.ndim < 2 or p.ndim > 4:
        raise ScoreInputError(
            f"case {case.name}: probabilities must be (C, *spatial) with 1 to 3 spatial axes, got "
            f"shape {p.shape}"
        )
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.array_equal(np.rint(y), y):
            y = y.astype(np.int64)
        else:
            raise ScoreInputError(f"case {case.name}: labels must be integers, got {y.dtype}")
    if tuple(p.shape[1:]) != tuple(y.shape):
        raise ScoreInputError(_shape_message(case.name, p.shape, y.shape))
    k = p.shape[0]
    if k < 2:
        raise ScoreInputError(
            f"case {case.name}: {k} channel; score needs K >= 2 class probabilities (a sigmoid "
            "map of one structure: stack (1 - p, p))"
        )
    if num_classes is not None and k != num_classes:
        raise ScoreInputError(
            f"case {case.name}: {k} channels, but the cases before had {num_classes}"
        )
    if case.spacing is not None:
        sp = np.asarray(case.spacing, dtype=np.float64).reshape(-1)
        if sp.size != y.ndim or not np.all(np.isfinite(sp) & (sp > 0)):
            raise ScoreInputError(
                f"case {case.name}: spacing {case.spacing!r} must be {y.ndim} values > 0 (mm)"
            )
    if case.true_probabilities is not None and tuple(case.true_probabilities.shape) != p.shape:
        raise ScoreInputError(
            f"case {case.name}: true probabilities {tuple(case.true_probabilities.shape)} != "
            f"probabilities {p.shape}"
        )
    return p, y, k


def sum_tolerance_for(dtype, num_classes: int) -> float:
    """Allowed ``|sum_k p_k - 1|``: 1e-3, or more for coarse dtypes (2 K eps)."""
    return max(1e-3, 2 * num_classes * float(np.finfo(dtype).eps))


def check_piece(name: str, pc: torch.Tensor, yc: torch.Tensor, k: int, tol: float) -> None:
    """Raise ``ScoreInputError`` naming the case for NaN/inf, values outside [0, 1], sums off 1
    (logits or sigmoid outputs saved by mistake) or labels outside [0, K)."""
    lo, hi = (float(v) for v in torch.aminmax(pc)) if pc.numel() else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # aminmax propagates NaN
        bad = int((~torch.isfinite(pc)).sum())
        raise ScoreInputError(f"case {name}: {bad} probability value(s) are NaN or inf")
    sums = pc.sum(0)
    off = float((sums - 1).abs_().max()) if sums.numel() else 0.0
    if lo < 0 or hi > 1 + tol or off > tol:
        text = (
            f"case {name}: the values are not probabilities: range [{lo:.4g}, {hi:.4g}], "
            f"class sums off 1 by up to {off:.4g} (tolerance {tol:.1e})"
        )
        if lo < 0 or hi > 1 + tol:
            text += (
                "; values outside [0, 1] are usually logits saved by mistake: save softmax outputs"
            )
        else:
            text += (
                "; channels in [0, 1] that do not sum to 1 are usually sigmoid outputs (nnU-Net "
                "region-based training): score each region as its own binary problem"
            )
        raise ScoreInputError(text)
    y_lo, y_hi = (int(v) for v in torch.aminmax(yc)) if yc.numel() else (0, 0)
    if y_lo < 0 or y_hi >= k:
        raise ScoreInputError(
            f"case {name}: labels in [{y_lo}, {y_hi}] lie outside [0, {k}) "
            f"for {k} probability channels"
        )


def permutation(k: int, background: int) -> list[int] | None:
    if not 0 <= background < k:
        raise ScoreInputError(f"background={background} is not a class index in [0, {k})")
    if background == 0:
        return None
    perm = list(range(k))
    perm[0], perm[background] = background, 0
    return perm


class Pieces:
    """Slabs of one case in the memory order of its probabilities ``p (C, *spatial)``.

    ``for index, pc, yc in pieces``: ``pc (C, n)`` float32 (float64 stays float64) and ``yc
    (n,)`` int64 torch tensors of slab ``index``; ``pieces.write(out, index, values)`` puts
    ``values (n,)`` into a spatial map ``out`` at the same voxels.
    """

    def __init__(self, p: np.ndarray, y: np.ndarray, entries: int = PIECE_ENTRIES):
        spatial = np.asarray(p.strides[1:])
        self.order = tuple(int(a) for a in np.argsort(-np.abs(spatial), kind="stable"))
        self.p = p.transpose(0, *(1 + a for a in self.order))
        self.y = y.transpose(self.order)
        shape = self.y.shape
        per_index = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        self.step = max(1, entries // max(1, p.shape[0] * per_index))
        self.n_axis = shape[0] if shape else 1

    def __len__(self) -> int:
        return -(-self.n_axis // self.step)

    def __iter__(self):
        k = self.p.shape[0]
        for lo in range(0, self.n_axis, self.step):
            index = slice(lo, lo + self.step)
            dtype = np.float64 if self.p.dtype == np.float64 else np.float32
            pc = np.array(self.p[:, index], dtype=dtype, order="C").reshape(k, -1)  # a copy
            yc = np.array(self.y[index], dtype=np.int64, order="C").reshape(-1)
            yield index, torch.from_numpy(pc), torch.from_numpy(yc)

    def take(self, arr: np.ndarray, index: slice) -> torch.Tensor:
        """Slab ``index`` of another array of the case: spatial (like the labels, ``(n,)``) or
        channel first (like the probabilities, ``(C, n)``), in the same voxel order."""
        arr = np.asarray(arr)
        if arr.ndim == self.y.ndim:
            view = arr.transpose(self.order)[index]
            return torch.from_numpy(np.array(view, order="C").reshape(-1))
        view = arr.transpose(0, *(1 + a for a in self.order))[:, index]
        return torch.from_numpy(np.array(view, order="C").reshape(arr.shape[0], -1))

    def write(self, out: np.ndarray, index: slice, values: np.ndarray) -> None:
        view = out.transpose(self.order)
        view[index] = values.reshape(view[index].shape)
