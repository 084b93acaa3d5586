"""Medical Segmentation Decathlon (the user's own copy) through ``monai.apps.DecathlonDataset``:

    root/TaskXX_Name/dataset.json, imagesTr/*.nii.gz (X, Y, Z[, C]), labelsTr/*.nii.gz (X, Y, Z)

Only the labelled ``training`` list of ``dataset.json`` is used (MSD's test images have no
labels). MONAI shuffles it with ``seed``; the first fraction ``split[0]`` becomes train, then val,
then test. Class names come from ``dataset.json`` ``labels``, the channels from ``modality``.
Each case is z-scored per channel over the volume, slices along the third axis, spacing from the
header ``(z, x, y)``. ``download=False`` by default: nothing touches the network unless asked.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import bundle_from_volumes, check_size, split_counts, volume_from_files

PALETTE = (
    "#000000",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _case_name(path: str | Path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _sorted_map(d: dict, what: str, path: Path) -> list[str]:
    try:
        keys = sorted(int(k) for k in d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: '{what}' keys must be integers, got {list(d)}") from err
    if keys != list(range(len(keys))):
        raise ValueError(f"{path}: '{what}' keys must be 0..{len(keys) - 1}, got {keys}")
    return [str(d[str(k)] if str(k) in d else d[k]) for k in keys]


# the keys MONAI's DecathlonDataset reads (it raises a bare KeyError for a missing one)
REQUIRED_KEYS = (
    "name",
    "description",
    "reference",
    "licence",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numTest",
    "training",
)


def _check_dataset_json(path: Path) -> None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    missing = [k for k in REQUIRED_KEYS if k not in meta] if isinstance(meta, dict) else ["all"]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing} that MONAI's DecathlonDataset needs")


def build_decathlon(
    root: str,
    task: str,
    size=None,
    split=(0.7, 0.1, 0.2),
    seed: int = 0,
    download: bool = False,
    max_subjects: int | None = None,
):
    """A Decathlon task as a 2D task: train slices, val/test volumes (module docstring).

    ``size`` crops/pads in-plane (None pads to the largest shape, a multiple of 16);
    ``max_subjects`` keeps the first cases of MONAI's seeded order (large tasks do not fit in
    memory whole: Task01_BrainTumour is about 70 GB as float32).
    """
    size = check_size(size)
    root_p = Path(root).expanduser()
    task_dir = root_p / task
    if not download:
        if not task_dir.is_dir():
            raise FileNotFoundError(
                f"Decathlon task folder not found: {task_dir} (expected {task_dir}/dataset.json, "
                "imagesTr/, labelsTr/); pass download=True to fetch it with MONAI"
            )
        if not (task_dir / "dataset.json").is_file():
            raise FileNotFoundError(
                f"Decathlon dataset.json not found: {task_dir / 'dataset.json'}"
            )
        _check_dataset_json(task_dir / "dataset.json")
    else:
        root_p.mkdir(parents=True, exist_ok=True)
    from monai.apps import DecathlonDataset

    if task not in DecathlonDataset.resource:
        raise ValueError(f"unknown task={task!r}; MONAI knows {sorted(DecathlonDataset.resource)}")
    try:
        ds = DecathlonDataset(
            root_dir=root_p,
            task=task,
            section="training",
            download=download,
            seed=seed,
            val_frac=0.0,
            cache_rate=0.0,
            progress=False,
        )
    except (KeyError, ValueError) as err:
        raise ValueError(f"cannot read {task_dir / 'dataset.json'}: {err}") from err
    props = ds.get_properties(["labels", "modality"])
    class_names = _sorted_map(props["labels"], "labels", task_dir / "dataset.json")
    channels = _sorted_map(props["modality"], "modality", task_dir / "dataset.json")
    if len(class_names) > len(PALETTE):
        raise ValueError(f"{task}: {len(class_names)} classes, at most {len(PALETTE)} supported")
    items = list(ds.data)
    if max_subjects is not None:
        if int(max_subjects) < 3:
            raise ValueError(f"max_subjects must be >= 3, got {max_subjects!r}")
        items = items[: int(max_subjects)]
    n_train, n_val, _ = split_counts(len(items), split)
    parts = (items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :])
    k = len(class_names)
    volumes = tuple(
        [volume_from_files(_case_name(it["image"]), it["image"], it["label"], k, size) for it in p]
        for p in parts
    )
    for v in (v for vs in volumes for v in vs):
        if v.image.shape[1] != len(channels):
            raise ValueError(
                f"case {v.name} has {v.image.shape[1]} channels but dataset.json lists "
                f"{len(channels)} modalities {channels}"
            )
    root_s = str(root_p.resolve())
    return bundle_from_volumes(
        volumes,
        size,
        num_classes=k,
        in_channels=len(channels),
        class_names=tuple(class_names),
        class_colors=PALETTE[:k],
        description=(
            f"Medical Segmentation Decathlon {task} from {root_s}: {len(items)} labelled cases "
            f"split {[len(p) for p in parts]} (train/val/test), modalities {channels}."
        ),
        params={
            "root": root_s,
            "task": task,
            "size": None if size is None else list(size),
            "split": [float(s) for s in split],
            "seed": int(seed),
            "download": bool(download),
            "max_subjects": None if max_subjects is None else int(max_subjects),
        },
    )
