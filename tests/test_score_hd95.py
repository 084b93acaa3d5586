"""HD95 in each class's bounding box (``metrics.hd95_per_class``, what ``score`` reports) equals
MONAI's full-volume HD95 and an independent scipy oracle, on blobs in a large background with
anisotropic spacing, blobs that touch the volume's border, and missing structures; ``--workers 2``
gives the numbers of one worker and ``--no-hd95`` leaves HD95 out."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_score import make_cases, write_folders

from mls_tutorial.cli import main
from mls_tutorial.metrics import hd95_per_class
from mls_tutorial.metrics.segmentation import volume_diagonal
from mls_tutorial.score import score_folder

SPACING = (0.7, 1.3, 3.1)
K = 6  # class 4: only in the label (missed); class 5: in neither


def blobs(seed: int, shape=(40, 33, 21)) -> tuple[np.ndarray, np.ndarray]:
    """Label and prediction: ellipsoids (class 1 touching the border), the prediction shifted."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    y, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for c in range(1, 5):
        centre = [0.0, 5.0, 3.0] if c == 1 else [rng.uniform(0.3, 0.7) * n for n in shape]
        radii = [rng.uniform(0.1, 0.2) * n for n in shape]
        shift = rng.normal(size=3)
        y[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radii, strict=True)) <= 1] = c
        if c != 4:
            d = sum(
                ((g - m - s) / r) ** 2
                for g, m, r, s in zip(grid, centre, radii, shift, strict=True)
            )
            pred[(d <= 1) & (rng.random(shape) < 0.97)] = c  # a few holes: inner surfaces
    return pred, y


def scipy_hd95(pred: np.ndarray, y: np.ndarray, c: int, spacing) -> float:
    """MONAI's definition from scratch: surface = mask minus its erosion (outside = 0);
    directed distances from one surface to the nearest voxel of the other (Euclidean, mm);
    the larger of the two 95th percentiles (linear interpolation)."""
    edges = [m ^ ndimage.binary_erosion(m) for m in (pred == c, y == c)]
    out = []
    for a, b in (edges, edges[::-1]):
        dist = ndimage.distance_transform_edt(~b, sampling=spacing)
        out.append(np.percentile(dist[a], 95))
    return float(max(out))


def monai_full_volume(pred: np.ndarray, y: np.ndarray, k: int, spacing) -> np.ndarray:
    from monai.metrics import compute_hausdorff_distance

    onehot = [
        torch.from_numpy(np.eye(k, dtype=np.float32)[a]).movedim(-1, 0)[None] for a in (pred, y)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            compute_hausdorff_distance(
                *onehot, include_background=False, percentile=95, spacing=list(spacing)
            )[0]
            .double()
            .numpy()
        )


@pytest.mark.parametrize("seed", [0, 1])
def test_bounding_box_hd95_equals_monai_full_volume_and_the_scipy_oracle(seed):
    pred, y = blobs(seed)
    hd = hd95_per_class(pred, y, K, spacing=SPACING)
    full = monai_full_volume(pred, y, K, SPACING)
    for c in (1, 2, 3):
        assert hd[c - 1] == full[c - 1]  # the same MONAI numbers, bit for bit
        assert hd[c - 1] == pytest.approx(scipy_hd95(pred, y, c, SPACING), rel=1e-6)
        assert hd[c - 1] > 0
    assert hd[3] == volume_diagonal(y.shape, SPACING)  # missed: the worst-case penalty
    assert np.isnan(hd[4])  # absent from both: nothing to score
    # the bounding box of class 1 touches the border: the crop is clipped, not padded wrong
    assert ndimage.find_objects(y)[0][0].start == 0


def test_two_dimensional_maps_and_torch_inputs_give_the_same_numbers():
    pred, y = blobs(2)
    p2, y2 = pred[:, :, 10], y[:, :, 10]
    hd = hd95_per_class(torch.from_numpy(p2), torch.from_numpy(y2), K, spacing=SPACING[:2])
    full = monai_full_volume(p2, y2, K, SPACING[:2])
    both = [c for c in range(1, K) if (p2 == c).any() and (y2 == c).any()]
    assert both and all(hd[c - 1] == full[c - 1] for c in both)


def test_bad_label_maps_are_refused_by_name():
    pred, y = blobs(3)
    with pytest.raises(ValueError, match=r"pred labels must be in \[0, 3\)"):
        hd95_per_class(pred, y, 3)
    with pytest.raises(ValueError, match="integer labels"):
        hd95_per_class(pred.astype(np.float32), y, K)
    with pytest.raises(ValueError, match="shape"):
        hd95_per_class(pred[:-1], y, K)


def test_two_workers_give_the_numbers_of_one_and_no_hd95_leaves_it_out(tmp_path):
    cases = make_cases(seed=30, n=3, power=2.0)
    pred, labels = write_folders(tmp_path, cases, "nnunet")
    one = score_folder(pred, labels, tmp_path / "one", progress=False)
    args = ["score", str(pred), str(labels), "--no-progress", "--workers", "2"]
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key in ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier"):
        assert two[key] == one[key], key
    assert two["per_volume"] == json.loads(json.dumps(one["per_volume"]))
    assert main([*args, "--no-hd95", "--out", str(tmp_path / "nohd")]) == 0
    nohd = json.loads((tmp_path / "nohd" / "metrics.json").read_text())
    assert np.isnan(nohd["hd95"]) and nohd["ece"] == one["ece"]
