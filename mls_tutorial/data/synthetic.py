"""Synthetic multi-class shapes with ambiguous borders, for the fastest tests.

Each 2D image paints 3 to 6 random ellipses and rectangles (rotated, classes 1..K-1) on class 0.
The true class probabilities are the blurred one-hot maps ``q = G_blur * onehot`` (they sum to
1), the image is ``sum_k mu_k q_k + noise`` with ``mu_k = k / (K - 1)``, and labels are
``argmax q`` (``"hard"``) or one draw from ``q`` (``"sampled"``). Blur and noise make the border
pixels ambiguous, unlike MONAI's ``create_test_image_2d`` with ``noise_max=0``.
Volumes are ``slices`` independent images stacked, spacing (1, 1, 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import DataBundle, SliceDataset, Volume, check_size, sample_labels

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
COLORS = ("#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def shape_labels(rng: np.random.Generator, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """A crisp ``(H, W)`` label map of 3-6 rotated ellipses / rectangles painted in order."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    lab = np.zeros((h, w), dtype=np.int64)
    for _ in range(int(rng.integers(3, 7))):
        cls = int(rng.integers(1, num_classes))
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.08, 0.25, size=2) * min(h, w)
        a = rng.uniform(0, math.pi)
        u = ((yy - cy) * math.cos(a) + (xx - cx) * math.sin(a)) / ry
        v = (-(yy - cy) * math.sin(a) + (xx - cx) * math.cos(a)) / rx
        inside = u * u + v * v <= 1 if rng.random() < 0.5 else (abs(u) <= 1) & (abs(v) <= 1)
        lab[inside] = cls
    return lab


def synthetic_image(
    seed: int,
    split: str,
    index: int,
    size,
    num_classes: int,
    noise: float,
    blur: float,
    labels: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image (H, W), label (H, W), q (K, H, W))`` for one seeded image."""
    from scipy import ndimage

    rng_img, rng_lab = (
        np.random.default_rng(s)
        for s in np.random.SeedSequence([seed, SPLIT_CODES[split], index]).spawn(2)
    )
    crisp = shape_labels(rng_img, size, num_classes)
    onehot = (crisp[None] == np.arange(num_classes)[:, None, None]).astype(np.float64)
    q = ndimage.gaussian_filter(onehot, sigma=(0, blur, blur), mode="nearest") if blur else onehot
    q /= q.sum(axis=0, keepdims=True)
    mu = np.linspace(0.0, 1.0, num_classes)
    image = np.tensordot(mu, q, axes=1) + rng_img.normal(0.0, noise, size=crisp.shape)
    label = q.argmax(axis=0) if labels == "hard" else sample_labels(q[None], rng_lab)[0]
    return image.astype(np.float32), label.astype(np.int64), q.astype(np.float32)


def _stack(seed, split, indices, size, k, noise, blur, labels):
    made = [synthetic_image(seed, split, i, size, k, noise, blur, labels) for i in indices]
    return (
        torch.from_numpy(np.stack([m[0] for m in made])[:, None]),
        torch.from_numpy(np.stack([m[1] for m in made])),
        torch.from_numpy(np.stack([m[2] for m in made])),
    )


def build_synthetic(
    num_classes: int = 4,
    size=64,
    n_train: int = 64,
    n_val: int = 2,
    n_test: int = 2,
    slices: int = 8,
    noise: float = 0.15,
    blur: float = 1.5,
    labels: str = "hard",
    seed: int = 0,
) -> DataBundle:
    """Random shapes: ``n_train`` training images, ``n_val`` / ``n_test`` volumes of ``slices``."""
    size = check_size(size)
    for name, v, lo in (
        ("num_classes", num_classes, 2),
        ("n_train", n_train, 1),
        ("n_val", n_val, 1),
        ("n_test", n_test, 1),
        ("slices", slices, 1),
        ("seed", seed, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if num_classes > len(COLORS):
        raise ValueError(f"num_classes must be <= {len(COLORS)}, got {num_classes}")
    if not (noise >= 0 and blur >= 0):
        raise ValueError(f"noise and blur must be >= 0, got noise={noise!r}, blur={blur!r}")
    if labels not in ("hard", "sampled"):
        raise ValueError(f"labels must be 'hard' or 'sampled', got {labels!r}")
    args = (size, num_classes, float(noise), float(blur), labels)
    train = SliceDataset(*_stack(seed, "train", range(n_train), *args))
    vols = {}
    for split, n in (("val", n_val), ("test", n_test)):
        vols[split] = []
        for v in range(n):
            image, label, q = _stack(seed, split, range(v * slices, (v + 1) * slices), *args)
            vols[split].append(
                Volume(f"synthetic-{split}-{v:02d}", image, label, (1.0, 1.0, 1.0), q)
            )
    params = {
        "num_classes": int(num_classes),
        "size": list(size),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_test": int(n_test),
        "slices": int(slices),
        "noise": float(noise),
        "blur": float(blur),
        "labels": labels,
        "seed": int(seed),
    }
    return DataBundle(
        train=train,
        val=vols["val"],
        test=vols["test"],
        num_classes=num_classes,
        in_channels=1,
        class_names=("background",) + tuple(f"shape {k}" for k in range(1, num_classes)),
        class_colors=COLORS[:num_classes],
        description=(
            f"Synthetic shapes, {num_classes} classes, {size[0]}x{size[1]}, blur sigma {blur:g} px, "
            f"noise std {noise:g}, {labels} labels; train {n_train} images, val {n_val} and "
            f"test {n_test} volumes of {slices} slices."
        ),
        params=params,
    )
