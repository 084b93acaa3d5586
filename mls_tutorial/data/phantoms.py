"""Ellipsoid phantoms written in the real ACDC and Decathlon layouts (notebook 04's stand-in).

A phantom is a label map of ellipsoids drawn in millimetres (later parts over earlier ones) and
an image ``G_1 * intensity[label] + 0.15 n``, ``n ~ N(0, 1)``: so the anisotropic voxels of
cardiac MRI (1.5 x 1.5 mm in-plane, 8 mm between slices) are real and HD95 must use the spacing.

    <root>/ACDC/training/patientNNN/patientNNN_frame01.nii.gz (+ _gt), frame12 (end-systole)
    <root>/<task>/dataset.json, imagesTr/hippocampus_NNN.nii.gz, labelsTr/hippocampus_NNN.nii.gz
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: (class, centre offset in mm, radii in mm): MYO shell, LV inside, RV beside
CARDIAC = [(2, (0, 0, 0), (22, 22, 45)), (3, (0, 0, 0), (14, 14, 38)),
           (1, (-26, 6, 0), (11, 18, 40))]  # fmt: skip
#: anterior and posterior hippocampus
HIPPOCAMPUS = [(1, (-7, 0, 0), (9, 5, 5)), (2, (7, 0, 0), (9, 5, 5))]


def ellipsoid(grid, centre, radii) -> np.ndarray:
    """Boolean mask ``sum_i ((x_i - c_i) / r_i)^2 <= 1`` on a grid of mm coordinates."""
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def phantom(rng, shape, spacing, parts, intensities, noise=0.15):
    """``(image float32, label uint8)`` from ellipsoid ``parts`` (see the module docstring)."""
    from scipy.ndimage import gaussian_filter

    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    centre = np.array(shape) * np.array(spacing) / 2 + rng.uniform(-4, 4, 3)
    label = np.zeros(shape, np.uint8)
    for cls, offset, radii in parts:
        jitter = rng.uniform(0.85, 1.15, 3)
        label[ellipsoid(grid, centre + np.array(offset), np.array(radii) * jitter)] = cls
    image = np.asarray(intensities, dtype=np.float32)[label]
    image = gaussian_filter(image, sigma=1.0) + noise * rng.standard_normal(shape)
    return image.astype(np.float32), label


def write_nifti(array, spacing, path: Path) -> None:
    """``array`` as NIfTI with the affine ``diag(spacing, 1)`` (folders created)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def write_phantoms(root, n: int, size: int, seed: int, task: str = "Task04_Hippocampus") -> None:
    """``n`` ACDC-style patients (``size x size x 12``, two frames) and ``n`` Decathlon-style
    subjects (``size/2`` cubed, 1 mm) under ``root``, from ``seed``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    acdc_spacing, hip_spacing = (1.5, 1.5, 8.0), (1.0, 1.0, 1.0)
    for p in range(1, n + 1):
        for frame, scale in ((1, 1.0), (12, 0.8)):  # end-diastole, end-systole (smaller)
            parts = [(c, o, tuple(r * scale if c == 3 else r for r in rr)) for c, o, rr in CARDIAC]
            image, label = phantom(rng, (size, size, 12), acdc_spacing, parts, (0.2, 0.9, 0.4, 1.0))
            case = (
                root / "ACDC" / "training" / f"patient{p:03d}" / f"patient{p:03d}_frame{frame:02d}"
            )
            write_nifti(image, acdc_spacing, case.with_name(case.name + ".nii.gz"))
            write_nifti(label, acdc_spacing, case.with_name(case.name + "_gt.nii.gz"))
        image, label = phantom(
            rng, (size // 2, size // 2, size // 2), hip_spacing, HIPPOCAMPUS, (0.3, 0.8, 1.0)
        )
        write_nifti(image, hip_spacing, root / task / "imagesTr" / f"hippocampus_{p:03d}.nii.gz")
        write_nifti(label, hip_spacing, root / task / "labelsTr" / f"hippocampus_{p:03d}.nii.gz")
    names = [f"hippocampus_{p:03d}.nii.gz" for p in range(1, n + 1)]
    dataset = {
        "name": "Hippocampus (synthetic stand-in)",
        "description": "ellipsoid phantoms",
        "reference": "mls_tutorial notebook 04",
        "licence": "CC-BY-SA 4.0",
        "release": "0.0",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n,
        "numTest": 0,
        "test": [],
        "training": [{"image": f"./imagesTr/{x}", "label": f"./labelsTr/{x}"} for x in names],
    }
    (root / task / "dataset.json").write_text(json.dumps(dataset, indent=1))
