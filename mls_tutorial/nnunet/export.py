"""The bundled MNI task written as an nnU-Net v2 raw dataset.

    OUT/ (named DatasetNNN_Name, nnU-Net's convention)
      dataset.json          channel_names {"0": "T1"}, labels {class name: index}, numTraining
      imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz    the training and validation subjects
      imagesTs/CASE_0000.nii.gz, labelsTs/CASE.nii.gz    the test subjects
      splits_final.json     one fold: train = the training subjects, val = the validation ones

A case is one simulated subject, its axial slices stacked: the array ``(S, H, W)`` (slice, row,
col) is stored as NIfTI ``(W, H, S)`` with the voxel spacing in the affine, so nnU-Net's
SimpleITK reader sees ``(S, H, W)`` and its 2D configuration trains on the slices the course
trains on. Case ids ``mni_train_00``, ``mni_val_00``, ``mni_test_00``. The split is the course's
(``mls_tutorial.data.mni``): copy ``splits_final.json`` into ``$nnUNet_preprocessed/OUT.name/``
after ``nnUNetv2_plan_and_preprocess`` and nnU-Net's fold 0 trains on the training subjects
only, so the validation subjects stay unseen for temperature scaling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

__all__ = ["DATASET_NAME", "export_mni", "write_case"]

DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")


def write_case(folder: Path, case: str, image: np.ndarray, label: np.ndarray, spacing) -> None:
    """``image`` and ``label`` ``(S, H, W)`` with ``spacing`` (slice, row, col) in mm, written as
    ``imagesXx/CASE_0000.nii.gz`` (float32) and ``labelsXx/CASE.nii.gz`` (uint8) under ``folder``
    (``folder`` = the pair's suffix, e.g. ``OUT/imagesTr`` and ``OUT/labelsTr``)."""
    import nibabel as nib

    if image.shape != label.shape or image.ndim != 3:
        raise ValueError(
            f"{case}: image {image.shape} and label {label.shape} must be one (S, H, W)"
        )
    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    images, labels = folder.parent / f"images{folder.name}", folder.parent / f"labels{folder.name}"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    img = np.ascontiguousarray(image.transpose(2, 1, 0), dtype=np.float32)
    lab = np.ascontiguousarray(label.transpose(2, 1, 0), dtype=np.uint8)
    nib.save(nib.Nifti1Image(img, affine), str(images / f"{case}_0000.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(labels / f"{case}.nii.gz"))


def _check_out(out: Path) -> None:
    if not DATASET_NAME.match(out.name):
        raise ValueError(
            f"OUT must be a folder named DatasetNNN_Name (nnU-Net's convention), e.g. "
            f"$nnUNet_raw/Dataset501_MNI; got {out.name!r}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"OUT {out} exists and is not an empty folder: nothing written")


def _subjects(bundle) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Split -> [(case id, image (S, H, W), label (S, H, W))]: the training slices regrouped by
    the subject they came from, the validation and test volumes as they are."""
    train = bundle.train
    by_subject: dict[str, list[int]] = {}
    for i, source in enumerate(train.sources):
        by_subject.setdefault(source, []).append(i)
    cases = {"Tr": [], "Val": [], "Ts": []}
    for source, idx in by_subject.items():
        case = source.replace("mni-", "mni_").replace("-", "_")
        cases["Tr"].append((case, train.images[idx, 0].numpy(), train.labels[idx].numpy()))
    for key, vols in (("Val", bundle.val), ("Ts", bundle.test)):
        for v in vols:
            case = v.name.replace("mni-", "mni_").replace("-", "_")
            cases[key].append((case, v.image[:, 0].numpy(), v.label.numpy()))
    return cases


def export_mni(out: str | Path, **mni_params) -> dict:
    """Write the bundled MNI task (``build_mni(**mni_params)``, the course's defaults when empty)
    to ``out`` as an nnU-Net raw dataset (see the module docstring); returns dataset.json."""
    from mls_tutorial.data.mni import CLASS_NAMES, SPACING, build_mni

    out = Path(out)
    _check_out(out)
    bundle = build_mni(**mni_params)
    cases = _subjects(bundle)
    for key, folder in (("Tr", "Tr"), ("Val", "Tr"), ("Ts", "Ts")):
        for case, image, label in cases[key]:
            write_case(out / folder, case, image, label, SPACING)
    dataset = {
        "channel_names": {"0": "T1"},
        "labels": {name: i for i, name in enumerate(CLASS_NAMES)},
        "numTraining": len(cases["Tr"]) + len(cases["Val"]),
        "file_ending": ".nii.gz",
        "name": out.name,
        "description": bundle.description,
        "mls_tutorial_mni_params": bundle.params,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    split = {"train": [c for c, *_ in cases["Tr"]], "val": [c for c, *_ in cases["Val"]]}
    (out / "splits_final.json").write_text(json.dumps([split], indent=2) + "\n")
    return dataset
