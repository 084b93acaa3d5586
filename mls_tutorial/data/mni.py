"""Bundled brain-tissue task from the MNI ICBM152 2009a template shipped inside nilearn's wheel.

No download: the 1 mm T1 and grey/white-matter maps are read with nibabel from
``nilearn/datasets/data`` and taken every other voxel, which equals nilearn's
``load_mni152_*_template(resolution=2)`` (its linear resampling lands on the 1 mm grid points).
Nothing here calls ``nilearn.datasets.fetch_*``.

Four MRBrainS-like classes with known true probabilities ``q`` (the tissue maps):

    brain = T1 / max(T1) > 0.2,   inside:  q_gm = GM,  q_wm = WM,  q_csf = max(1 - GM - WM, 0)
    (renormalised to sum 1), outside:  q = onehot(background).

Axial slices at 2 mm are cropped to H x W = 112 x 96 (96 x 112 as width x height, anterior up).
Slices holding at least 5% brain are cut into blocks of 10 separated by 2-slice gaps and the
blocks are dealt train, val, test, train, test, train from inferior to superior, so the splits
come from separate parts of the brain and every test block lies between two training blocks. Each simulated subject applies one seeded in-plane deformation (rotation +-10 deg,
scale +-10%, shift +-4 px, coarse elastic) identically to the T1 and to ``q``, then gamma
contrast, a smooth multiplicative bias field, Gaussian noise and a z-score over its slab.
Labels are ``argmax q`` (``labels="hard"``) or one categorical draw from ``q`` per subject and
voxel (``labels="sampled"``, simulated inter-rater variability); ``q`` is kept as ``Volume.prob``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .common import DataBundle, SliceDataset, Volume, read_nifti, sample_labels

CLASS_NAMES = ("background", "CSF / other brain", "grey matter", "white matter")
CLASS_COLORS = ("#000000", "#1f77b4", "#ff7f0e", "#2ca02c")
FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
BRAIN_THRESHOLD = 0.2  # on T1 / max(T1)
CROP = (112, 96)  # (rows = anterior->posterior, cols = x)
SPACING = (2.0, 2.0, 2.0)
MIN_BRAIN_FRACTION = 0.05  # a slice is used when brain fills >= 5% of the crop
BLOCK, GAP = 10, 2
PATTERN = ("train", "val", "test", "train", "test", "train")  # test lies between train blocks
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
# simulated subjects
ROTATION_DEG, SCALE, SHIFT_PX = 10.0, 0.10, 4.0
ELASTIC_GRID, ELASTIC_SIGMA_PX = 5, 1.5
GAMMA_LOG_RANGE = 0.3  # gamma = exp(U(-0.3, 0.3))
BIAS_COEF = 0.15  # log-bias = sum c_ijk z^i r^j c^k (degree <= 2), c ~ U(-0.15, 0.15)


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the bundled MNI data needs nilearn (pip install nilearn)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _read_2mm(key: str) -> np.ndarray:
    """One map at 2 mm, ``(x, y, z)``, scaled to max 1 (as nilearn's loaders do)."""
    path = _nilearn_data_dir() / FILES[key]
    if path.is_file():
        arr = read_nifti(path)[0].astype(np.float32)
        arr /= arr.max()
        return arr[::2, ::2, ::2]
    # a nilearn that moved its files: its own loaders read the same bundled data, offline
    from nilearn import datasets

    loader = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }[key]
    return np.asarray(loader(resolution=2).get_fdata(), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def load_template() -> dict[str, np.ndarray]:
    """The 2 mm template, display-oriented ``(z, row, col)`` = (inferior->superior,
    anterior->posterior, x), uncropped ``(95, 117, 99)``: ``t1`` and ``q`` ``(95, 4, 117, 99)``.
    Cached in-process; read-only arrays."""

    def orient(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, :])

    t1, gm, wm = (orient(_read_2mm(k)) for k in ("t1", "gm", "wm"))
    brain = t1 > BRAIN_THRESHOLD
    csf = np.clip(1.0 - gm - wm, 0.0, None)
    tissue = np.stack([csf, gm, wm], axis=1) * brain[:, None]
    total = tissue.sum(axis=1, keepdims=True)
    tissue = np.divide(tissue, total, out=np.zeros_like(tissue), where=total > 0)
    q = np.concatenate([(~brain)[:, None].astype(np.float32), tissue], axis=1).astype(np.float32)
    out = {"t1": t1.astype(np.float32), "q": q, "brain": brain}
    for a in out.values():
        a.setflags(write=False)
    return out


def _crop_box(shape: tuple[int, int]) -> tuple[slice, slice]:
    r0, c0 = (shape[0] - CROP[0]) // 2, (shape[1] - CROP[1]) // 2
    return slice(r0, r0 + CROP[0]), slice(c0, c0 + CROP[1])


def slice_splits() -> dict[str, list[int]]:
    """Axial positions (z index at 2 mm) of each split: blocks of ``BLOCK`` usable slices with
    ``GAP``-slice gaps, dealt in ``PATTERN`` order from inferior to superior."""
    tpl = load_template()
    rows, cols = _crop_box(tpl["brain"].shape[1:])
    frac = tpl["brain"][:, rows, cols].mean(axis=(1, 2))
    usable = np.flatnonzero(frac >= MIN_BRAIN_FRACTION)
    first, last = int(usable[0]), int(usable[-1])
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for b, start in enumerate(range(first, last + 1, BLOCK + GAP)):
        splits[PATTERN[b % len(PATTERN)]] += list(range(start, min(start + BLOCK, last + 1)))
    return splits


def _sampling_grid(rng: np.random.Generator, src_shape: tuple[int, int]) -> torch.Tensor:
    """``(1, H, W, 2)`` grid for ``grid_sample``: output pixel p -> source point
    ``R(theta) diag(1/s) p + shift + elastic(p) + centre`` (pixels), normalised to [-1, 1]."""
    h, w = CROP
    theta = math.radians(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = rng.uniform(1 - SCALE, 1 + SCALE, size=2)
    shift = rng.uniform(-SHIFT_PX, SHIFT_PX, size=2)
    coarse = rng.normal(0.0, ELASTIC_SIGMA_PX, size=(1, 2, ELASTIC_GRID, ELASTIC_GRID))
    elastic = F.interpolate(
        torch.from_numpy(coarse), size=(h, w), mode="bicubic", align_corners=True
    )
    elastic = elastic[0].numpy()
    r, c = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    rows, cols = _crop_box(src_shape)
    centre = (rows.start + (h - 1) / 2, cols.start + (w - 1) / 2)
    cos, sin = math.cos(theta), math.sin(theta)
    src_r = (cos * r - sin * c) / scale[0] + shift[0] + elastic[0] + centre[0]
    src_c = (sin * r + cos * c) / scale[1] + shift[1] + elastic[1] + centre[1]
    grid = np.stack([2 * src_c / (src_shape[1] - 1) - 1, 2 * src_r / (src_shape[0] - 1) - 1], -1)
    return torch.from_numpy(grid[None].astype(np.float32))


def _bias_field(rng: np.random.Generator, z: np.ndarray, n_z: int) -> np.ndarray:
    """``exp(sum c_ijk z^i r^j c^k)`` over degree 1..2 monomials, coordinates in [-1, 1]."""
    h, w = CROP
    zz = (2 * z / (n_z - 1) - 1).astype(np.float32)[:, None, None]
    rr = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
    cc = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
    terms = [zz, rr, cc, zz * zz, rr * rr, cc * cc, zz * rr, zz * cc, rr * cc]
    coef = rng.uniform(-BIAS_COEF, BIAS_COEF, size=len(terms)).astype(np.float32)
    return np.exp(sum(k * t for k, t in zip(coef, terms, strict=True)))


def simulate_subject(
    seed: int,
    split: str,
    index: int,
    slab: list[int],
    keep: list[int],
    labels: str,
    noise: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One simulated subject, returned on the slices ``slab[keep]``: ``(image (S, H, W),
    label (S, H, W) uint8, q (S, K, H, W))``. The image is simulated and z-scored over the
    whole usable slab ``slab`` (the same normalisation in every split). Three independent
    seeded streams (geometry, intensity, labels), so hard and sampled labels share images."""
    tpl = load_template()
    streams = np.random.SeedSequence([seed, SPLIT_CODES[split], index]).spawn(3)
    rng_geo, rng_int, rng_lab = (np.random.default_rng(s) for s in streams)
    grid = _sampling_grid(rng_geo, tpl["t1"].shape[1:])

    def warp(x: np.ndarray) -> np.ndarray:  # (S, C, h, w) -> (S, C, H, W), one grid for all
        g = grid.expand(x.shape[0], -1, -1, -1)
        src = torch.from_numpy(x)
        return F.grid_sample(
            src, g, mode="bilinear", padding_mode="border", align_corners=True
        ).numpy()

    z_keep = [slab[i] for i in keep]
    q = np.clip(warp(tpl["q"][z_keep]), 0.0, None)
    q /= q.sum(axis=1, keepdims=True)
    gamma = math.exp(rng_int.uniform(-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE))
    image = np.clip(warp(tpl["t1"][slab, None])[:, 0], 0.0, 1.0) ** gamma
    image *= _bias_field(rng_int, np.asarray(slab, dtype=np.float64), tpl["t1"].shape[0])
    sigma = rng_int.uniform(*noise)
    image += sigma * rng_int.standard_normal(image.shape, dtype=np.float32)
    mean, std = image.mean(dtype=np.float64), image.std(dtype=np.float64)
    image = (image[keep] - mean) / std
    label = q.argmax(axis=1) if labels == "hard" else sample_labels(q, rng_lab)
    return image.astype(np.float32), label.astype(np.uint8), q


def _check_params(n_train_subjects, n_val_subjects, n_test_subjects, labels, noise, seed):
    for name, v in (
        ("n_train_subjects", n_train_subjects),
        ("n_val_subjects", n_val_subjects),
        ("n_test_subjects", n_test_subjects),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if labels not in ("hard", "sampled"):
        raise ValueError(f"labels must be 'hard' or 'sampled', got {labels!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    try:
        lo, hi = (noise, noise) if isinstance(noise, int | float) else (float(v) for v in noise)
        ok = 0.0 <= lo <= hi < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"noise must be a std or (lo, hi) range with 0 <= lo <= hi < 1, got {noise!r}"
        )
    return float(lo), float(hi)


def build_mni(
    n_train_subjects: int = 2,
    n_val_subjects: int = 2,
    n_test_subjects: int = 4,
    labels: str = "sampled",
    noise=(0.01, 0.05),
    seed: int = 0,
) -> DataBundle:
    """The bundled MNI tissue task (see the module docstring).

    Defaults give the over-confident regime of the course (CE over-confident after 1000
    iterations of the tiny U-Net, notebooks 01-03): sampled labels and a small training set
    (29 slice positions x 2 subjects = 58 images). ``noise`` is a Gaussian std, or a
    ``(lo, hi)`` range a per-subject std is drawn from, on the T1 scaled to [0, 1].
    """
    lo, hi = _check_params(n_train_subjects, n_val_subjects, n_test_subjects, labels, noise, seed)
    splits = slice_splits()
    slab = sorted(z for zs in splits.values() for z in zs)
    counts = {"train": n_train_subjects, "val": n_val_subjects, "test": n_test_subjects}
    made = {}
    for split, n in counts.items():  # preallocated: the training arrays are the largest
        keep = [slab.index(z) for z in splits[split]]
        shape = (int(n), len(keep), *CROP)
        images, labels_, qs = (
            np.empty(shape, np.float32),
            np.empty(shape, np.uint8),
            np.empty((*shape[:2], 4, *CROP), np.float32),
        )
        for i in range(int(n)):
            images[i], labels_[i], qs[i] = simulate_subject(
                seed, split, i, slab, keep, labels, (lo, hi)
            )
        made[split] = images, labels_, qs
    vols = {
        split: [
            Volume(
                f"mni-{split}-{i:02d}",
                torch.from_numpy(im[:, None]),
                torch.from_numpy(lb.astype(np.int64)),
                SPACING,
                torch.from_numpy(q),
            )
            for i, (im, lb, q) in enumerate(zip(*made[split], strict=True))
        ]
        for split in ("val", "test")
    }
    images, labels_, qs = made["train"]
    n_img = images.shape[0] * images.shape[1]
    train = SliceDataset(
        torch.from_numpy(images.reshape(n_img, 1, *CROP)),
        torch.from_numpy(labels_.reshape(n_img, *CROP)),
        torch.from_numpy(qs.reshape(n_img, 4, *CROP)),
        sources=[f"mni-train-{i:02d}" for i in range(n_train_subjects) for _ in splits["train"]],
        positions=[z for _ in range(n_train_subjects) for z in splits["train"]],
    )
    params = {
        "n_train_subjects": int(n_train_subjects),
        "n_val_subjects": int(n_val_subjects),
        "n_test_subjects": int(n_test_subjects),
        "labels": labels,
        "noise": [lo, hi],
        "seed": int(seed),
    }
    n_sl = {k: len(v) for k, v in splits.items()}
    description = (
        f"MNI ICBM152 2009a brain tissue (bundled with nilearn, no download): 4 classes, "
        f"2 mm axial slices {CROP[0]}x{CROP[1]} (HxW); train {len(train)} images "
        f"({n_sl['train']} slices x {n_train_subjects} simulated subjects), val {n_val_subjects} "
        f"x {n_sl['val']} slices, test {n_test_subjects} x {n_sl['test']} slices; {labels} labels; "
        f"noise std {lo:g}-{hi:g}."
    )
    return DataBundle(
        train=train,
        val=vols["val"],
        test=vols["test"],
        num_classes=4,
        in_channels=1,
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        description=description,
        params=params,
        info={"slices": splits, "crop": list(CROP), "spacing_mm": list(SPACING)},
    )
