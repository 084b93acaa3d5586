"""Per-volume Dice and HD95 per class, backed by MONAI, with an explicit empty-structure policy.

Inputs are one volume of integer label maps, 2D ``(H, W)`` or 3D ``(D, H, W)``, numpy or torch,
``pred`` and ``target`` of the same shape with labels in ``[0, num_classes)``. The background
(class 0) is excluded unless ``include_background=True``: the result has ``K - 1`` (or K) entries.

Empty-structure policy (P = predicted voxels of a class, G = ground-truth voxels):

- both present: Dice ``2|P & G| / (|P| + |G|)``, HD95 from MONAI in mm;
- P and G both empty: Dice NaN, HD95 NaN (nothing to score: leave it out of means and count
  such cases apart, e.g. with ``np.isnan``);
- exactly one empty (a missed or a hallucinated structure): Dice 0, HD95 the diagonal of the
  volume's box in mm, ``||shape * spacing||`` (``one_empty="diagonal"``: more than any distance
  two voxels can have, a worst-case penalty), or NaN with ``one_empty="nan"``.

Never a silent Dice 1 / HD 0 for an absent or missed structure.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._inputs import as_tensor, check_int

ONE_EMPTY = ("diagonal", "nan")


def _label_maps(pred, target, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = check_int(num_classes, "num_classes", 2)
    p, t = as_tensor(pred, "pred"), as_tensor(target, "target")
    if tuple(p.shape) != tuple(t.shape):
        raise ValueError(f"pred shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
    if p.ndim not in (2, 3):
        raise ValueError(f"pred and target must be one 2D or 3D label map, got {p.ndim} dims")
    for name, x in (("pred", p), ("target", t)):
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= k):
            raise ValueError(
                f"{name} labels must be in [0, {k}), got [{int(x.min())}, {int(x.max())}]"
            )
    return p.long(), t.long().to(p.device)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(1, K, *spatial)`` float one-hot of a label map."""
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 0)[None].float()


def _presence(p, t, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: present in the prediction, present in the target."""
    k = num_classes
    in_p = torch.bincount(p.reshape(-1), minlength=k).cpu().numpy() > 0
    in_t = torch.bincount(t.reshape(-1), minlength=k).cpu().numpy() > 0
    return in_p, in_t


def dice_per_class(pred, target, num_classes: int, include_background: bool = False) -> np.ndarray:
    """Dice ``2|P_k ∩ G_k| / (|P_k| + |G_k|)`` per class (MONAI ``compute_dice``), float64.

    Both empty: NaN; exactly one empty: 0 (see the module docstring).
    """
    from monai.metrics import compute_dice

    p, t = _label_maps(pred, target, num_classes)
    dice = compute_dice(
        _one_hot(p, num_classes),
        _one_hot(t, num_classes),
        include_background=True,
        ignore_empty=False,
    )[0]
    dice = dice.double().cpu().numpy()
    in_p, in_t = _presence(p, t, num_classes)
    dice[~in_p & ~in_t] = np.nan
    dice[in_p ^ in_t] = 0.0
    return dice[0 if include_background else 1 :]


def dice_from_confusion(confusion, include_background: bool = False) -> np.ndarray:
    """Dice per class from a ``K x K`` confusion matrix of voxel counts ``confusion[pred, target]``
    (summable over pieces of a volume): ``2 C_kk / (sum_j C_kj + sum_i C_ik)``, float64.

    The empty-structure policy of ``dice_per_class``: both empty NaN, exactly one empty 0.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"confusion must be a K x K matrix with K >= 2, got shape {c.shape}")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("confusion must hold finite counts >= 0")
    n_pred, n_true = c.sum(1), c.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * np.diag(c) / (n_pred + n_true)
    dice[(n_pred > 0) ^ (n_true > 0)] = 0.0
    return dice[0 if include_background else 1 :]


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} finite values > 0 (mm per axis), got {spacing!r}")
    return values


def volume_diagonal(shape, spacing) -> float:
    """Diagonal of the volume's box in mm, ``||shape * spacing||``: more than any voxel distance."""
    return float(np.linalg.norm(np.asarray(shape) * np.asarray(spacing, dtype=np.float64)))


def _label_arrays(pred, target, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer label maps as numpy views (no copy), checked like ``_label_maps``."""
    k = check_int(num_classes, "num_classes", 2)
    out = []
    for name, x in (("pred", pred), ("target", target)):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        if not isinstance(x, np.ndarray):
            raise ValueError(
                f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}"
            )
        if x.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}")
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if lo < 0 or hi >= k:
            raise ValueError(f"{name} labels must be in [0, {k}), got [{lo}, {hi}]")
        out.append(x)
    p, t = out
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != target shape {t.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"pred and target must be one 2D or 3D label map, got {p.ndim} dims")
    return p, t


def class_boxes(labels: np.ndarray, num_classes: int, background: bool = False) -> list:
    """Bounding box (slices) of each class in a label map, None where it is absent: one pass
    (``scipy.ndimage.find_objects``); with ``background``, class 0 gets the whole map when
    present (else None)."""
    from scipy import ndimage

    boxes = [None, *ndimage.find_objects(labels, max_label=num_classes - 1)]
    if background and np.any(labels == 0):
        boxes[0] = tuple(slice(0, n) for n in labels.shape)
    return boxes


def _union_box(a, b, shape, pad: int = 1) -> tuple[slice, ...]:
    """The box of ``a`` and ``b`` together, ``pad`` voxels wider on each side, inside ``shape``."""
    boxes = [x for x in (a, b) if x is not None]
    return tuple(
        slice(
            max(0, min(x[d].start for x in boxes) - pad),
            min(n, max(x[d].stop for x in boxes) + pad),
        )
        for d, n in enumerate(shape)
    )


def hd95_per_class(
    pred,
    target,
    num_classes: int,
    spacing=None,
    include_background: bool = False,
    one_empty: str = "diagonal",
) -> np.ndarray:
    """Symmetric 95th-percentile Hausdorff distance per class in mm, float64.

    ``max(q95(d(dP, dG)), q95(d(dG, dP)))`` over surface voxels (MONAI
    ``compute_hausdorff_distance(percentile=95, spacing=spacing)``), computed per class inside
    the bounding box of P and G together, one voxel wider (``class_boxes``): every surface
    voxel and every distance between them lies in it, and MONAI crops to the same box itself,
    so the numbers are MONAI's full-volume ones, without a pass over the volume per class.
    The steps are MONAI's (``get_mask_edges``: erosion edges; ``get_surface_distance``: a k-d
    tree; ``torch.quantile`` of each direction, the larger), called on the box without its
    second search for the same box (the speed-up: ``benchmarks/bench_score.py``).
    ``spacing``: mm per axis of the label map (None: 1 mm). Both empty: NaN; exactly one
    empty: the volume diagonal in mm (``one_empty="diagonal"``) or NaN (``one_empty="nan"``);
    see the module docstring.
    """
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    if one_empty not in ONE_EMPTY:
        raise ValueError(f"one_empty must be one of {ONE_EMPTY}, got {one_empty!r}")
    p, t = _label_arrays(pred, target, num_classes)
    sp = _spacing(spacing, p.ndim)
    box_p, box_t = (class_boxes(x, num_classes, include_background) for x in (p, t))
    hd = np.full(num_classes, np.nan)
    for c in range(0 if include_background else 1, num_classes):
        if box_p[c] is None or box_t[c] is None:
            if one_empty == "diagonal" and (box_p[c] is None) != (box_t[c] is None):
                hd[c] = volume_diagonal(p.shape, sp)
            continue
        box = _union_box(box_p[c], box_t[c], p.shape)
        # MONAI's own steps, on the box already cropped (its crop would find the same box again)
        edges = get_mask_edges(p[box] == c, t[box] == c, crop=False)
        d = [get_surface_distance(a, b, spacing=list(sp)) for a, b in (edges, edges[::-1])]
        hd[c] = max(float(torch.quantile(torch.from_numpy(x), 0.95)) for x in d)
    return hd[0 if include_background else 1 :]
