"""Dice and HD95 per class against float64 / scipy references, and the empty-structure policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from mls_tutorial.metrics import dice_per_class, hd95_per_class


def ref_dice(pred: np.ndarray, target: np.ndarray, k: int) -> float:
    p, t = pred == k, target == k
    return 2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum())


def ref_hd95(pred: np.ndarray, target: np.ndarray, k: int, spacing) -> float:
    """Symmetric HD95 between surface voxels (mask minus its erosion), exact pairwise distances."""

    def surface(mask):
        return np.argwhere(mask & ~ndimage.binary_erosion(mask)) * np.asarray(spacing, float)

    a, b = surface(pred == k), surface(target == k)
    d = cdist(a, b)
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def blobs_3d():
    target = np.zeros((12, 20, 18), dtype=np.int64)
    target[2:9, 3:14, 4:12] = 1
    target[4:7, 6:10, 6:9] = 2  # class 2 inside class 1
    pred = np.zeros_like(target)
    pred[3:10, 5:15, 3:12] = 1
    pred[4:8, 5:10, 7:11] = 2
    pred[0, 0, 0] = 1  # a stray voxel: HD95 must still follow the 95th percentile
    return pred, target


def test_dice_matches_formula_2d_3d_numpy_and_torch():
    pred, target = blobs_3d()
    for p, t in ((pred, target), (torch.from_numpy(pred[5]), torch.from_numpy(target[5]))):
        got = dice_per_class(p, t, num_classes=3)
        p, t = np.asarray(p), np.asarray(t)
        expected = [ref_dice(p, t, k) for k in (1, 2)]
        np.testing.assert_allclose(got, expected, atol=1e-6)  # MONAI counts in float32
        full = dice_per_class(p, t, num_classes=3, include_background=True)
        assert full.shape == (3,) and full[0] == pytest.approx(ref_dice(p, t, 0), abs=1e-6)


@pytest.mark.parametrize("spacing", [None, (2.5, 0.8, 1.2)])
def test_hd95_matches_scipy_reference_in_mm(spacing):
    pred, target = blobs_3d()
    got = hd95_per_class(pred, target, num_classes=3, spacing=spacing)
    sp = spacing or (1.0, 1.0, 1.0)
    expected = [ref_hd95(pred, target, k, sp) for k in (1, 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.dtype == np.float64 and (got > 0).all()


def test_hd95_2d():
    pred, target = blobs_3d()
    got = hd95_per_class(pred[5], target[5], num_classes=3, spacing=(0.5, 2.0))
    expected = [ref_hd95(pred[5], target[5], k, (0.5, 2.0)) for k in (1, 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_empty_structure_policy():
    target = np.zeros((10, 12), dtype=np.int64)
    pred = np.zeros_like(target)
    target[2:5, 2:5] = 1  # class 1: missed by the prediction
    pred[6:8, 6:9] = 2  # class 2: hallucinated (absent from the target)
    # class 3: absent from both
    dice = dice_per_class(pred, target, num_classes=4)
    assert dice[0] == 0.0 and dice[1] == 0.0 and math.isnan(dice[2])
    hd = hd95_per_class(pred, target, num_classes=4, spacing=(2.0, 1.0))
    diagonal = math.hypot(10 * 2.0, 12 * 1.0)  # the box of the (10, 12) map at (2, 1) mm
    assert hd[0] == pytest.approx(diagonal) and hd[1] == pytest.approx(diagonal)
    assert math.isnan(hd[2])
    hd_nan = hd95_per_class(pred, target, num_classes=4, one_empty="nan")
    assert np.isnan(hd_nan).all()
    # never a silent Dice 1 / HD 0: an empty background is NaN too when included
    assert not np.any(dice == 1.0) and not np.any(hd == 0.0)
    one_voxel = hd95_per_class(np.ones((1, 1), int), np.zeros((1, 1), int), num_classes=2)
    assert one_voxel[0] == pytest.approx(math.sqrt(2))  # still a penalty, never 0


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((np.zeros((4, 4), int), np.zeros((4, 5), int), 3), {}, "shape"),
        ((np.zeros(4, int), np.zeros(4, int), 3), {}, "2D or 3D"),
        ((np.full((4, 4), 3), np.zeros((4, 4), int), 3), {}, "pred labels"),
        ((np.zeros((4, 4), int), np.full((4, 4), -1), 3), {}, "target labels"),
        ((np.zeros((4, 4)), np.zeros((4, 4), int), 3), {}, "integer"),
        ((np.zeros((4, 4), int), np.zeros((4, 4), int), 1), {}, "num_classes"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dice_per_class(*args, **kwargs)
    with pytest.raises(ValueError, match=match):
        hd95_per_class(*args, **kwargs)


def test_bad_spacing_and_policy():
    pred, target = blobs_3d()
    for spacing in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, math.nan, 1.0)):
        with pytest.raises(ValueError, match="spacing"):
            hd95_per_class(pred, target, num_classes=3, spacing=spacing)
    with pytest.raises(ValueError, match="one_empty"):
        hd95_per_class(pred, target, num_classes=3, one_empty="zero")


def test_dice_from_confusion_equals_dice_per_class_with_its_empty_policy():
    from mls_tutorial.metrics import dice_from_confusion

    rng = np.random.default_rng(3)
    pred, target = rng.integers(0, 3, (7, 6, 5)), rng.integers(0, 3, (7, 6, 5))
    pred[pred == 2] = 1  # class 2: in the target only (Dice 0); class 3: nowhere (NaN)
    confusion = np.bincount((pred * 4 + target).ravel(), minlength=16).reshape(4, 4)
    # float64 counts here, MONAI's float32 there
    np.testing.assert_allclose(
        dice_from_confusion(confusion), dice_per_class(pred, target, 4), rtol=1e-6, equal_nan=True
    )
    with pytest.raises(ValueError, match="K x K"):
        dice_from_confusion(np.ones((2, 3)))
