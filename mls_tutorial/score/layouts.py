"""Readers for saved probability maps and their label maps, one layout per folder.

Layouts of ``PRED`` (detected per folder by ``detect_layout``):

- ``nnunet``: nnU-Net v2 ``--save_probabilities`` output, ``CASE.npz`` with key ``probabilities``
  of shape ``(C, Z, Y, X)`` (the image array in SimpleITK order, i.e. the NIfTI ``(X, Y, Z)``
  reversed), beside ``CASE.pkl`` (its properties) and ``CASE.nii.gz`` (the hard prediction).
  The ``.pkl`` is not unpickled (unpickling runs code); spacing comes from the label's header;
- ``nifti``: one NIfTI per case, channels last ``(X, Y, Z, C)`` (MONAI ``SaveImage``), or
  ``(X, Y, Z, 1, C)`` (a time axis of length 1, as ITK writes vector images);
- ``numpy``: ``CASE.npy`` of shape ``(C, X, Y, Z)``, the label's array as nibabel reads it,
  channel first (memory-mapped: a case is read piece by piece).

``LABELS`` holds ``CASE.nii.gz`` label maps (nnU-Net's ``labelsTr``), read with nibabel; voxel
spacing (mm) comes from their header. Case ids are file names without extensions and without a
trailing ``_0000`` (nnU-Net's channel suffix). ``read_probabilities`` returns the array in the
label's axis order ``(C, X, Y, Z)`` as a view (no copy): nnU-Net's array transposed.
A ``dataset.json`` in ``PRED`` (nnU-Net writes one) gives class names, and tells
region-based (sigmoid) models apart: a ``labels`` value that is a list of two or more labels
(``regions``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUTS = ("nnunet", "nifti", "numpy")
_NIFTI = (".nii.gz", ".nii")
_SUFFIX = re.compile(r"_0000$")


class ScoreInputError(ValueError):
    """Bad input to ``score``: the message names the case, the file and the likely cause."""


def case_id(path: str | Path) -> str:
    """``patient001_0000.nii.gz`` -> ``patient001``: extensions and ``_0000`` stripped."""
    name = Path(path).name
    for ext in (*_NIFTI, ".npz", ".npy", ".pkl"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return _SUFFIX.sub("", name)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_NIFTI))


def _files(folder: Path, ext: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(ext))


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ScoreInputError(f"{what} folder {folder} does not exist or is not a folder")
    return folder


def detect_layout(pred: str | Path) -> str:
    """``"nnunet"`` (``.npz`` files), ``"numpy"`` (``.npy``) or ``"nifti"`` (4D NIfTI only)."""
    folder = _folder(pred, "PRED")
    npz, npy, nii = _files(folder, ".npz"), _files(folder, ".npy"), _nifti_files(folder)
    if npz and npy:
        raise ScoreInputError(
            f"{folder} mixes .npz ({len(npz)}) and .npy ({len(npy)}) files: one layout per folder"
        )
    if npz:
        return "nnunet"
    if npy:
        return "numpy"
    if nii:
        return "nifti"
    raise ScoreInputError(
        f"{folder} holds no probability maps (.npz from nnU-Net --save_probabilities, .npy, or "
        "4D NIfTI): the folder is empty of them"
    )


def prediction_files(pred: str | Path, layout: str) -> dict[str, Path]:
    """Case id -> probability file of ``layout`` in ``pred``."""
    folder = _folder(pred, "PRED")
    if layout not in LAYOUTS:
        raise ScoreInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    files = {"nnunet": lambda: _files(folder, ".npz"), "numpy": lambda: _files(folder, ".npy")}
    paths = files.get(layout, lambda: _nifti_files(folder))()
    out: dict[str, Path] = {}
    for path in paths:
        cid = case_id(path)
        if cid in out:
            raise ScoreInputError(f"two files for case {cid!r}: {out[cid].name} and {path.name}")
        out[cid] = path
    if not out:
        raise ScoreInputError(f"{folder} holds no {layout} probability maps")
    return out


def label_files(labels: str | Path) -> dict[str, Path]:
    """Case id -> label map (``.nii.gz`` / ``.nii``) in ``labels``."""
    folder = _folder(labels, "LABELS")
    out = {case_id(p): p for p in _nifti_files(folder)}
    if not out:
        raise ScoreInputError(f"LABELS folder {folder} holds no .nii.gz label maps")
    return out


def read_label(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Integer label map (nibabel's ``(X, Y, Z)`` order, its file's integer dtype) and its spacing
    in mm from the header."""
    from mls_tutorial.data.common import read_nifti

    arr, zooms = read_nifti(path)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ScoreInputError(f"label map {path} has shape {arr.shape}: expected 3D (X, Y, Z)")
    if arr.dtype.kind == "f":
        lab = np.rint(arr)
        if not np.array_equal(lab, arr):
            raise ScoreInputError(f"label map {path} holds non-integer values")
        arr = lab.astype(np.int32)
    elif arr.dtype.kind not in "iu":
        raise ScoreInputError(f"label map {path} holds {arr.dtype} values, not integer labels")
    return arr, tuple(float(z) for z in zooms[:3])  # its own integer dtype: uint8 stays 1 byte


def read_probabilities(path: str | Path, layout: str) -> np.ndarray:
    """The probability array of one case as ``(C, X, Y, Z)`` in the label's axis order (a view)."""
    path = Path(path)
    if layout == "nnunet":
        import zipfile

        if not zipfile.is_zipfile(path):
            raise ScoreInputError(
                f"{path} is not a valid .npz (not a zip archive: truncated, or not written by "
                "numpy.savez / nnU-Net --save_probabilities)"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "probabilities" not in npz.files:
                    raise ScoreInputError(
                        f"{path} has no key 'probabilities' (keys: {npz.files}); nnU-Net writes it "
                        "with --save_probabilities"
                    )
                arr = npz["probabilities"]
        except ScoreInputError:
            raise
        except Exception as err:
            raise ScoreInputError(
                f"{path} is not a valid .npz (damaged: {type(err).__name__}: {err})"
            ) from err
        if arr.ndim != 4:
            raise ScoreInputError(f"{path}: probabilities have shape {arr.shape}, not (C, Z, Y, X)")
        return arr.transpose(0, 3, 2, 1)  # (C, Z, Y, X) -> (C, X, Y, Z), a view
    if layout == "numpy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as err:
            raise ScoreInputError(f"cannot read {path}: {type(err).__name__}: {err}") from err
        if arr.ndim != 4:
            raise ScoreInputError(f"{path}: probabilities have shape {arr.shape}, not (C, X, Y, Z)")
        return arr
    if layout == "nifti":
        import nibabel as nib

        try:
            arr = np.asanyarray(nib.load(str(path)).dataobj)
        except Exception as err:
            raise ScoreInputError(f"cannot read {path}: {type(err).__name__}: {err}") from err
        if arr.ndim == 5 and arr.shape[3] == 1:
            arr = arr[:, :, :, 0]
        if arr.ndim == 3:
            raise ScoreInputError(
                f"{path} is a 3D map {arr.shape}, not probabilities (X, Y, Z, C): a hard "
                "segmentation? Save the softmax output (nnU-Net: --save_probabilities; MONAI: "
                "SaveImage before AsDiscrete)"
            )
        if arr.ndim != 4:
            raise ScoreInputError(f"{path}: shape {arr.shape}, expected (X, Y, Z, C)")
        return np.moveaxis(arr, 3, 0)
    raise ScoreInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says: class names (index order) or, for a region-based model, its
    regions in channel order (name -> the label values they unite), ``regions_class_order`` and
    the ignore label."""

    class_names: tuple[str, ...] | None = None
    regions: dict[str, tuple[int, ...]] | None = None
    path: Path | None = None
    regions_class_order: tuple[int, ...] | None = None
    ignore: int | None = None


def _is_background(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return set(values) == {0}


def _regions(data: dict, items: list, path: Path) -> DatasetInfo:
    """nnU-Net v2's ``LabelManager``: every entry but ``background`` (0) and ``ignore`` is a
    region, in the order of ``labels``; channel i of the probabilities is region i."""
    try:
        regions = {
            str(name): tuple(int(x) for x in (value if isinstance(value, list) else [value]))
            for name, value in items
            if name != "ignore" and not _is_background(value)
        }
        order = data.get("regions_class_order")
        order = None if order is None else tuple(int(x) for x in order)
        ignore = data["labels"].get("ignore")
        ignore = None if ignore is None else int(ignore)
    except (TypeError, ValueError) as err:
        raise ScoreInputError(f"{path}: cannot read its regions: {err}") from err
    if order is not None and len(order) != len(regions):
        raise ScoreInputError(
            f"{path}: regions_class_order {list(order)} has {len(order)} entries for "
            f"{len(regions)} regions ({', '.join(regions)})"
        )
    return DatasetInfo(regions=regions, path=path, regions_class_order=order, ignore=ignore)


def read_dataset_json(folder: str | Path) -> DatasetInfo:
    """Class names from ``dataset.json`` (nnU-Net v2 ``{"name": index}`` or MSD
    ``{"index": "name"}``); regions when a label maps to a list of two or more values (nnU-Net
    v2's rule for region-based training, ``LabelManager.has_regions``)."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        return DatasetInfo()
    try:
        data = json.loads(path.read_text())
        labels = data["labels"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ScoreInputError(f"cannot read the labels of {path}: {err}") from err
    if not isinstance(labels, dict) or not labels:
        raise ScoreInputError(f"{path}: 'labels' must be a non-empty mapping, got {labels!r}")
    items = list(labels.items())
    if any(isinstance(v, list) and len(v) > 1 for _, v in items):
        return _regions(data, items, path)
    items = [(k, v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in items]
    try:
        if all(str(k).lstrip("-").isdigit() for k, _ in items):  # MSD: {"0": "background"}
            index = {int(k): str(v) for k, v in items}
        else:  # nnU-Net v2: {"background": 0}
            index = {int(v): str(k) for k, v in items}
    except (TypeError, ValueError) as err:
        raise ScoreInputError(
            f"{path}: labels {labels!r} are neither name->index nor index->name"
        ) from err
    if sorted(index) != list(range(len(index))):
        raise ScoreInputError(f"{path}: label indices {sorted(index)} are not 0..{len(index) - 1}")
    return DatasetInfo(class_names=tuple(index[i] for i in range(len(index))), path=path)


@dataclass
class Case:
    """One case: ``probabilities (C, *spatial)``, integer ``labels (*spatial)``, ``spacing``
    (mm per spatial axis), a ``name``, and optionally the true probabilities ``q`` (same shape
    as ``probabilities``; adds ``tce``, ``ece_true``, ``prob_gap``)."""

    probabilities: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...] | None = None
    name: str | None = None
    true_probabilities: np.ndarray | None = None


@dataclass(frozen=True)
class CaseFiles:
    """Where one case lies: its probability file (and layout) and its label map."""

    name: str
    prediction: Path
    label: Path
    layout: str

    def load(self) -> Case:
        labels, spacing = read_label(self.label)
        return Case(read_probabilities(self.prediction, self.layout), labels, spacing, self.name)


def match_cases(
    pred: str | Path, labels: str | Path, *, allow_missing: bool = False
) -> tuple[list[CaseFiles], list[str]]:
    """Pair every prediction with its label map; returns the pairs (sorted by id) and the ids of
    predictions without a label (an error unless ``allow_missing``)."""
    layout = detect_layout(pred)
    preds, labs = prediction_files(pred, layout), label_files(labels)
    missing = sorted(set(preds) - set(labs))
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise ScoreInputError(
            f"{len(missing)} case(s) in {pred} have no label map in {labels}: {shown} "
            "(pass --allow-missing to skip them)"
        )
    pairs = [CaseFiles(c, preds[c], labs[c], layout) for c in sorted(preds) if c in labs]
    if not pairs:
        raise ScoreInputError(f"no case of {pred} has a label map in {labels}")
    return pairs, missing


def parse_case_ids(values: Sequence[str] | None) -> list[str]:
    """``--val-cases``: ids, or files holding ids (one per line or separated by commas/spaces)."""
    ids: list[str] = []
    for value in values or ():
        path = Path(value)
        text = path.read_text() if path.is_file() else value
        ids += [case_id(x) for x in re.split(r"[\s,]+", text) if x]
    return list(dict.fromkeys(ids))


def split_cases(
    cases: Iterable[CaseFiles], val_ids: Sequence[str]
) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """``(val, reported)``: the cases named in ``val_ids`` and all the others (disjoint)."""
    cases = list(cases)
    known = {c.name for c in cases}
    unknown = [v for v in val_ids if v not in known]
    if unknown:
        raise ScoreInputError(f"--val-cases names case(s) not among the scored ones: {unknown}")
    val = [c for c in cases if c.name in set(val_ids)]
    rest = [c for c in cases if c.name not in set(val_ids)]
    if val_ids and not rest:
        raise ScoreInputError("every case is a --val-cases case: no case is left to report")
    return val, rest


def load_cases(cases: Iterable[CaseFiles]) -> Iterator[Case]:
    """Read cases one at a time (the generator keeps no reference to a case it has yielded)."""
    for files in cases:
        yield files.load()
