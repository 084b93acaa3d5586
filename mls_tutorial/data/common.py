"""The data contract shared by every dataset: ``Volume``, ``DataBundle``, ``SliceDataset``.

A 2D task keeps whole volumes for evaluation, slices stacked first so a 2D model runs on
``volume.image[i:j]`` directly:

    image (S, C, H, W) float32,  label (S, H, W) int64,  prob (S, K, H, W) float32 or None,
    spacing (slice, row, col) in mm.

Helpers used by the loaders live here too: NIfTI reading that names the file on every error,
per-volume z-score ``(x - mean) / std``, centre crop/pad, and a seeded patient split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


def _check_tensor(name: str, x, ndim: int, dtype: torch.dtype) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {x.dtype}")


@dataclass
class Volume:
    """One evaluation volume of a 2D task (slices first); see the module docstring for shapes."""

    name: str
    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, float, float]
    prob: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor(f"Volume {self.name!r} image", self.image, 4, torch.float32)
        _check_tensor(f"Volume {self.name!r} label", self.label, 3, torch.int64)
        s, _, h, w = self.image.shape
        if tuple(self.label.shape) != (s, h, w):
            raise ValueError(
                f"Volume {self.name!r}: label shape {tuple(self.label.shape)} does not match "
                f"image shape {tuple(self.image.shape)} (expected {(s, h, w)})"
            )
        spacing = tuple(float(v) for v in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(
                f"Volume {self.name!r}: spacing must be 3 positive floats, got {spacing}"
            )
        self.spacing = spacing
        if self.prob is not None:
            _check_tensor(f"Volume {self.name!r} prob", self.prob, 4, torch.float32)
            if self.prob.shape[0] != s or tuple(self.prob.shape[2:]) != (h, w):
                raise ValueError(
                    f"Volume {self.name!r}: prob shape {tuple(self.prob.shape)} does not match "
                    f"image shape {tuple(self.image.shape)}"
                )

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])


class SliceDataset(Dataset):
    """2D training slices: ``ds[i] -> (image (C, H, W) float32, label (H, W) int64)``.

    The tensors are kept whole (``images``, ``labels`` stored as uint8, optional ``prob``) so that
    code needing the full set (a fast GPU loader, a plot) can use them without iterating.
    ``sources[i]`` names the volume or subject image ``i`` came from and ``positions[i]`` its slice
    index in that source (for split checks).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        prob: torch.Tensor | None = None,
        sources: list[str] | None = None,
        positions: list[int] | None = None,
    ) -> None:
        _check_tensor("images", images, 4, torch.float32)
        if not isinstance(labels, torch.Tensor) or labels.ndim != 3:
            raise ValueError("labels must be a (N, H, W) tensor")
        n, _, h, w = images.shape
        if tuple(labels.shape) != (n, h, w):
            raise ValueError(f"labels shape {tuple(labels.shape)} != {(n, h, w)} from images")
        if n == 0:
            raise ValueError("images is empty: a training set needs at least one slice")
        if int(labels.min()) < 0 or int(labels.max()) > 255:
            raise ValueError("labels must lie in [0, 255] to be stored as uint8")
        if prob is not None:
            _check_tensor("prob", prob, 4, torch.float32)
            if prob.shape[0] != n or tuple(prob.shape[2:]) != (h, w):
                raise ValueError(f"prob shape {tuple(prob.shape)} does not match images")
        for name, seq in (("sources", sources), ("positions", positions)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} images")
        self.images = images.contiguous()
        self.labels = labels.to(torch.uint8).contiguous()
        self.prob = prob
        self.sources = list(sources) if sources is not None else [""] * n
        self.positions = [int(p) for p in positions] if positions is not None else [-1] * n

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i].long()

    @classmethod
    def from_volumes(cls, volumes: list[Volume]) -> SliceDataset:
        """All slices of ``volumes`` as one training set (prob kept only if every volume has it)."""
        if not volumes:
            raise ValueError("volumes is empty: no training slices")
        has_prob = all(v.prob is not None for v in volumes)
        return cls(
            torch.cat([v.image for v in volumes]),
            torch.cat([v.label for v in volumes]),
            torch.cat([v.prob for v in volumes]) if has_prob else None,
            sources=[v.name for v in volumes for _ in range(v.num_slices)],
            positions=[i for v in volumes for i in range(v.num_slices)],
        )


@dataclass
class DataBundle:
    """Everything a training run needs from a dataset (the ``data`` contract).

    ``info`` (an addition to the contract, JSON-able) holds derived facts such as slice positions
    of each split; ``params`` holds only the parameters that rebuild the bundle.
    """

    train: Dataset
    val: list[Volume]
    test: list[Volume]
    num_classes: int
    in_channels: int
    class_names: tuple[str, ...]
    class_colors: tuple[str, ...]
    description: str
    params: dict
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        self.class_names = tuple(self.class_names)
        self.class_colors = tuple(self.class_colors)
        for name in ("class_names", "class_colors"):
            if len(getattr(self, name)) != self.num_classes:
                raise ValueError(
                    f"{name} needs {self.num_classes} entries, got {getattr(self, name)}"
                )
        for name in ("params", "info"):
            try:
                json.dumps(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"{name} must be JSON-serialisable: {err}") from err
        for split in ("val", "test"):
            for v in getattr(self, split):
                self._check_volume(split, v)
        if isinstance(self.train, SliceDataset):
            if self.train.images.shape[1] != self.in_channels:
                raise ValueError(
                    f"train images have {self.train.images.shape[1]} channels, "
                    f"expected in_channels={self.in_channels}"
                )
            if int(self.train.labels.max()) >= self.num_classes:
                raise ValueError(
                    f"train labels reach {int(self.train.labels.max())}, "
                    f"expected < num_classes={self.num_classes}"
                )

    def _check_volume(self, split: str, v: Volume) -> None:
        if not isinstance(v, Volume):
            raise ValueError(f"{split} must hold Volume objects, got {type(v).__name__}")
        if v.image.shape[1] != self.in_channels:
            raise ValueError(
                f"{split} volume {v.name!r} has {v.image.shape[1]} channels, "
                f"expected in_channels={self.in_channels}"
            )
        if v.label.numel() and (int(v.label.min()) < 0 or int(v.label.max()) >= self.num_classes):
            raise ValueError(
                f"{split} volume {v.name!r} has labels outside [0, {self.num_classes})"
            )
        if v.prob is not None and v.prob.shape[1] != self.num_classes:
            raise ValueError(
                f"{split} volume {v.name!r} prob has {v.prob.shape[1]} classes, "
                f"expected {self.num_classes}"
            )


# ----------------------------------------------------------------------------- loader helpers


def sample_labels(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per voxel from ``q`` ``(S, K, H, W)``: ``y = #{j < K-1: u >= cdf_j}``
    with ``u ~ U[0, 1)``; a class with ``q_k = 0`` is never drawn."""
    cdf = np.cumsum(q.astype(np.float64), axis=1)[:, :-1]
    u = rng.random((q.shape[0], 1, *q.shape[2:]))
    return (u >= cdf).sum(axis=1)


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """``(array, zooms)`` of a NIfTI file; any failure raises naming ``path``."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as err:  # nibabel raises many types for a damaged file
        raise ValueError(f"cannot read NIfTI file {path}: {type(err).__name__}: {err}") from err
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"NIfTI file {path} contains NaN or inf values")
    return arr, zooms


def label_array(arr: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """Check a mask holds integers in ``[0, num_classes)`` and return it as int64."""
    lab = np.rint(arr).astype(np.int64)
    if not np.array_equal(lab, arr):
        raise ValueError(f"mask {path} holds non-integer values")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(
            f"mask {path} has labels in [{lab.min()}, {lab.max()}], expected [0, {num_classes})"
        )
    return lab


def zscore(x: np.ndarray, axis=None) -> np.ndarray:
    """``(x - mean) / std`` over ``axis`` (whole volume by default); a constant input raises."""
    x = x.astype(np.float32)
    mean = x.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = x.std(axis=axis, keepdims=True, dtype=np.float64)
    if np.any(std == 0):
        raise ValueError("cannot z-score a constant image (std = 0)")
    return ((x - mean) / std).astype(np.float32)


def center_crop_or_pad(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop or zero-pad the last two axes of ``x`` to ``size`` (as MONAI's
    ``ResizeWithPadOrCrop``: crop start ``(n - m) // 2``, pad before ``(m - n) // 2``)."""
    out = x
    for axis, m in zip((-2, -1), size, strict=True):
        n = out.shape[axis]
        if n > m:
            start = (n - m) // 2
            out = np.take(out, np.arange(start, start + m), axis=axis)
        elif n < m:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((m - n) // 2, m - n - (m - n) // 2)
            out = np.pad(out, pad)
    return out


def check_size(size) -> tuple[int, int] | None:
    """``size`` as an ``(H, W)`` pair of positive ints (an int means square), or None."""
    if size is None:
        return None
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or (H, W) pair, got {size}")
    return size


def split_counts(n: int, split) -> tuple[int, int, int]:
    """Numbers of train/val/test items for fractions ``split``; each split gets at least one."""
    fr = np.asarray(split, dtype=np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split must be 3 non-negative fractions summing to 1, got {split}")
    if n < 3:
        raise ValueError(f"need at least 3 subjects to split into train/val/test, found {n}")
    n_val = max(1, int(round(fr[1] * n)))
    n_test = max(1, int(round(fr[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split {split} leaves no training subject out of {n}")
    return n_train, n_val, n_test


def seeded_split(items: list, split, seed: int) -> tuple[list, list, list]:
    """Shuffle ``items`` with ``numpy.random.default_rng(seed)`` and cut into train/val/test."""
    n_train, n_val, _ = split_counts(len(items), split)
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[i] for i in order]
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


def _squeeze_trailing(arr: np.ndarray, ndim: int) -> np.ndarray:
    while arr.ndim > ndim and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def volume_from_files(
    name: str, image_path: Path, label_path: Path, num_classes: int, size: tuple[int, int] | None
) -> Volume:
    """Read a NIfTI image ``(X, Y, Z[, C])`` and its mask ``(X, Y, Z)`` into a ``Volume``:
    slices along Z first, z-score per channel over the volume, spacing ``(zZ, zX, zY)``, then
    centre crop/pad in-plane to ``size`` (None keeps the native size)."""
    image_path, label_path = Path(image_path), Path(label_path)
    if not label_path.is_file():
        raise FileNotFoundError(f"image {image_path} has no mask: expected {label_path}")
    img, zooms = read_nifti(image_path)
    lab, _ = read_nifti(label_path)
    img = _squeeze_trailing(img, 3)
    img = img[..., None] if img.ndim == 3 else img
    lab = _squeeze_trailing(lab, 3)
    if img.ndim != 4:
        raise ValueError(f"image {image_path} must be 3D or 4D (X, Y, Z[, C]), got {img.shape}")
    if lab.shape != img.shape[:3]:
        raise ValueError(
            f"shape mismatch: image {image_path} is {img.shape[:3]} but mask {label_path} is {lab.shape}"
        )
    if len(zooms) < 3 or min(zooms[:3]) <= 0:
        raise ValueError(f"image {image_path} has invalid voxel sizes {zooms}")
    lab = label_array(lab, num_classes, label_path)
    try:
        img = zscore(img, axis=(0, 1, 2))
    except ValueError as err:
        raise ValueError(f"image {image_path}: {err}") from err
    image = np.ascontiguousarray(img.transpose(2, 3, 0, 1))
    label = np.ascontiguousarray(lab.transpose(2, 0, 1))
    spacing = (zooms[2], zooms[0], zooms[1])
    vol = Volume(name, torch.from_numpy(image), torch.from_numpy(label), spacing)
    return resize_volume(vol, size) if size is not None else vol


def resize_volume(vol: Volume, size: tuple[int, int]) -> Volume:
    """Centre crop/pad ``vol`` in-plane to ``size``; warns when cropping drops labelled voxels."""
    if tuple(vol.image.shape[-2:]) == tuple(size):
        return vol
    label = center_crop_or_pad(vol.label.numpy(), size)
    lost = int((vol.label > 0).sum()) - int((label > 0).sum())
    if lost > 0:
        import warnings

        warnings.warn(
            f"{vol.name}: cropping {tuple(vol.image.shape[-2:])} to {size} drops {lost} labelled "
            "voxels; pass a larger size",
            stacklevel=3,
        )
    image = center_crop_or_pad(vol.image.numpy(), size)
    prob = (
        None if vol.prob is None else torch.from_numpy(center_crop_or_pad(vol.prob.numpy(), size))
    )
    return Volume(vol.name, torch.from_numpy(image), torch.from_numpy(label), vol.spacing, prob)


def common_size(volumes: list[Volume], multiple: int = 16) -> tuple[int, int]:
    """The largest in-plane shape among ``volumes``, rounded up to a multiple of ``multiple``."""
    h = max(v.image.shape[-2] for v in volumes)
    w = max(v.image.shape[-1] for v in volumes)
    return (-(-h // multiple) * multiple, -(-w // multiple) * multiple)


def bundle_from_volumes(
    split_volumes: tuple[list[Volume], list[Volume], list[Volume]], size, **fields
) -> DataBundle:
    """A ``DataBundle`` whose training set is every slice of the train volumes; with
    ``size=None`` all volumes are padded to ``common_size``. Records that size in ``info``."""
    train, val, test = split_volumes
    if size is None:
        size = common_size(train + val + test)
        train, val, test = ([resize_volume(v, size) for v in vs] for vs in (train, val, test))
    info = dict(fields.pop("info", {}))
    info.update(
        size=list(size),
        volumes={
            k: [v.name for v in vs] for k, vs in (("train", train), ("val", val), ("test", test))
        },
    )
    return DataBundle(
        train=SliceDataset.from_volumes(train), val=val, test=test, info=info, **fields
    )
