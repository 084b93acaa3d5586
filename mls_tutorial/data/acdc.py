"""ACDC cardiac MRI (the user's own copy) in its published layout:

    root/{training,testing}/patientNNN/patientNNN_frameNN.nii.gz
    root/{training,testing}/patientNNN/patientNNN_frameNN_gt.nii.gz   (0 bg, 1 RV, 2 MYO, 3 LV)

``root`` may also be a folder holding the ``patientNNN`` folders directly. Every ``_frameNN``
image (the ED and ES frames; ``_4d`` files are ignored) becomes one ``Volume`` named
``patientNNN_frameNN``, z-scored over the volume, slices along the NIfTI third axis, spacing from
the header zooms ``(z, x, y)``, centre cropped/padded in-plane to ``size``. Patients (never frames)
are split into train/val/test by ``split`` fractions with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .common import bundle_from_volumes, check_size, seeded_split, volume_from_files

CLASS_NAMES = ("background", "right ventricle", "myocardium", "left ventricle")
CLASS_COLORS = ("#000000", "#d62728", "#2ca02c", "#1f77b4")
PATIENT_RE = re.compile(r"^patient\d{3}$")
FRAME_RE = re.compile(r"^(patient\d{3}_frame\d{2})(\.nii(?:\.gz)?)$")


def find_cases(root: str | Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """``{patient: [(name, image, mask), ...]}``; raises naming what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ACDC root folder not found: {root}")
    parts = [root / s for s in ("training", "testing") if (root / s).is_dir()] or [root]
    patients = sorted(
        (p for part in parts for p in part.iterdir() if p.is_dir() and PATIENT_RE.match(p.name)),
        key=lambda p: p.name,
    )
    if not patients:
        raise FileNotFoundError(
            f"no ACDC patient folders under {root}: expected "
            f"{root}/training/patientNNN/patientNNN_frameNN.nii.gz"
        )
    cases: dict[str, list[tuple[str, Path, Path]]] = {}
    for p in patients:
        frames = []
        for f in sorted(p.iterdir()):
            m = FRAME_RE.match(f.name)
            if m:
                mask = f.with_name(f"{m.group(1)}_gt{m.group(2)}")
                if not mask.is_file():
                    raise FileNotFoundError(f"image {f} has no mask: expected {mask}")
                frames.append((m.group(1), f, mask))
        if not frames:
            raise FileNotFoundError(f"patient folder {p} holds no patientNNN_frameNN.nii.gz image")
        if p.name in cases:
            raise ValueError(f"patient {p.name} appears twice under {root}")
        cases[p.name] = frames
    return cases


def build_acdc(
    root: str,
    size=(192, 192),
    split=(0.7, 0.1, 0.2),
    seed: int = 0,
    max_patients: int | None = None,
):
    """ACDC as a 4-class 2D task: train slices, val/test volumes (see the module docstring).

    ``size=None`` pads every volume to the largest in-plane shape (a multiple of 16) instead of
    cropping; ``max_patients`` keeps the first patients by name (a quick look at a large copy).
    """
    size = check_size(size)
    cases = find_cases(root)
    patients = sorted(cases)
    if max_patients is not None:
        if int(max_patients) < 3:
            raise ValueError(f"max_patients must be >= 3, got {max_patients!r}")
        patients = patients[: int(max_patients)]
    splits = seeded_split(patients, split, seed)
    volumes = tuple(
        [volume_from_files(name, img, gt, 4, size) for pat in pats for name, img, gt in cases[pat]]
        for pats in splits
    )
    root_s = str(Path(root).expanduser().resolve())
    return bundle_from_volumes(
        volumes,
        size,
        num_classes=4,
        in_channels=1,
        class_names=CLASS_NAMES,
        class_colors=CLASS_COLORS,
        description=(
            f"ACDC cine MRI from {root_s}: {len(patients)} patients split "
            f"{[len(s) for s in splits]} (train/val/test), ED and ES frames, 4 classes."
        ),
        params={
            "root": root_s,
            "size": None if size is None else list(size),
            "split": [float(s) for s in split],
            "seed": int(seed),
            "max_patients": None if max_patients is None else int(max_patients),
        },
        info={
            "patients": {k: list(s) for k, s in zip(("train", "val", "test"), splits, strict=True)}
        },
    )
