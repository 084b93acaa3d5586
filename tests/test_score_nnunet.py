"""A real nnU-Net v2 round trip: nnU-Net's own ``export_prediction_from_logits`` writes the files
(``CASE.npz`` with ``probabilities`` (C, z, y, x) float32, ``CASE.pkl``, ``CASE.nii.gz``) and
``score`` reads them.

nnU-Net is optional (``pip install -e ".[nnunet]"``); CI runs this file in its own environment
(see ``.ci/run``), because nnunetv2 pulls a torchvision that cannot load beside the CPU torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

nnunetv2 = pytest.importorskip("nnunetv2")
sitk = pytest.importorskip("SimpleITK")

from nnunetv2.inference.export_prediction import export_prediction_from_logits  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from mls_tutorial.score import score_cases, score_folder  # noqa: E402

SHAPE_ZYX = (7, 12, 10)  # the image array in SimpleITK order: z, y, x (all different)
SPACING_XYZ = (0.9, 1.1, 3.5)  # SimpleITK spacing: x, y, z
BBOX = [[1, 6], [2, 11], [0, 9]]  # nnU-Net crops to the nonzero region; z, y, x
K = 3


def _plans() -> dict:
    spacing_zyx = list(SPACING_XYZ[::-1])
    return {
        "dataset_name": "Dataset999_Score",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing_zyx,
        "original_median_shape_after_transp": list(SHAPE_ZYX),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(SHAPE_ZYX),
                "median_image_size_in_voxels": list(SHAPE_ZYX),
                "spacing": spacing_zyx,
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0},
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": True,
            }
        },
    }


DATASET = {
    "labels": {"background": 0, "left": 1, "right": 2},
    "file_ending": ".nii.gz",
    "channel_names": {"0": "MRI"},
    "numTraining": 3,
}


def _export(folder, name, logits_cropped):
    shape_cropped = [hi - lo for lo, hi in BBOX]
    properties = {
        "spacing": list(SPACING_XYZ[::-1]),
        "shape_before_cropping": list(SHAPE_ZYX),
        "shape_after_cropping_and_before_resampling": shape_cropped,
        "bbox_used_for_cropping": BBOX,
        "sitk_stuff": {
            "spacing": SPACING_XYZ,
            "origin": (0.0, 0.0, 0.0),
            "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        },
    }
    plans = PlansManager(_plans())
    export_prediction_from_logits(
        torch.from_numpy(logits_cropped),
        properties,
        plans.get_configuration("3d_fullres"),
        plans,
        DATASET,
        str(folder / name),
        save_probabilities=True,
        num_threads_torch=1,
    )


def _write_label(folder, name, label_zyx):
    img = sitk.GetImageFromArray(label_zyx.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), True)


def test_score_reads_what_nnunet_v2_writes(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labelsTr"
    pred.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for i in range(3):
        name = f"case_{i:03d}"
        shape_cropped = [hi - lo for lo, hi in BBOX]
        logits = (rng.normal(size=(K, *shape_cropped)) * 3).astype(np.float32)
        _export(pred, name, logits)
        # the reference, independently: softmax in the crop, background 1 outside, (C, z, y, x)
        p = np.zeros((K, *SHAPE_ZYX), np.float32)
        p[0] = 1.0
        crop = (slice(None), *(slice(lo, hi) for lo, hi in BBOX))
        p[crop] = torch.softmax(torch.from_numpy(logits), 0).numpy()
        label = rng.integers(0, K, SHAPE_ZYX)
        _write_label(labels, name, label)
        expected.append((p.transpose(0, 3, 2, 1), label.transpose(2, 1, 0), SPACING_XYZ))
    npz = np.load(pred / "case_000.npz")
    assert npz["probabilities"].shape == (K, *SHAPE_ZYX)  # (C, z, y, x): nnU-Net's layout
    assert npz["probabilities"].dtype == np.float32
    assert (pred / "case_000.pkl").is_file() and (pred / "case_000.nii.gz").is_file()

    m = score_folder(pred, labels, tmp_path / "out", progress=False)
    ref = score_cases(expected, progress=False)
    assert m["source"]["layout"] == "nnunet" and m["n_volumes"] == 3
    for key in ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier"):
        assert m[key] == pytest.approx(ref[key], rel=1e-6), key
    # nnU-Net's own hard prediction (argmax, written by SimpleITK) gives the same Dice
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case_000.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / "case_000.nii.gz")))
    dice = [
        2 * np.sum((seg == c) & (label == c)) / (np.sum(seg == c) + np.sum(label == c))
        for c in (1, 2)
    ]
    row = m["per_volume"][0]
    assert [row["dice_per_class"][n] for n in ("class1", "class2")] == pytest.approx(dice)
    # HD95 in mm: the spacing came from the label's header, in the label's axis order
    assert m["hd95"] == pytest.approx(ref["hd95"], rel=1e-6)
