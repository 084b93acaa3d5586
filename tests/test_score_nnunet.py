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


def _export(folder, name, logits_cropped, dataset=DATASET):
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
        dataset,
        str(folder / name),
        save_probabilities=True,
        num_threads_torch=1,
    )


def _write_label(folder, name, label_zyx):
    img = sitk.GetImageFromArray(label_zyx.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(folder / f"{name}.nii.gz"), True)


def _nnunet_folders(tmp_path, n=3, informative=False):
    """nnU-Net's own export of ``n`` cases, their labels, and the arrays score must read.
    ``informative``: labels are the argmax but for 30% random ones inside the crop, so that a
    fitted temperature is finite."""
    pred, labels = tmp_path / "pred", tmp_path / "labelsTr"
    pred.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for i in range(n):
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
        if informative:  # outside the crop p is a saturated background: label it so
            noise = np.zeros(SHAPE_ZYX, bool)
            noise[crop[1:]] = rng.random(shape_cropped) < 0.3
            label = np.where(noise, label, p.argmax(0))
        _write_label(labels, name, label)
        expected.append((p.transpose(0, 3, 2, 1), label.transpose(2, 1, 0), SPACING_XYZ))
    return pred, labels, expected


def test_score_reads_what_nnunet_v2_writes(tmp_path):
    pred, labels, expected = _nnunet_folders(tmp_path)
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


def test_nnunet_merges_the_calibrated_maps_into_its_own_segmentation(tmp_path):
    """nnU-Net's ensembling code (``merge_files``: its .pkl reader, ``average_probabilities``,
    the label manager's argmax and SimpleITK writer) reads what --write-calibrated wrote."""
    from nnunetv2.ensembling.ensemble import average_probabilities, merge_files
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    pred, labels, _ = _nnunet_folders(tmp_path, n=4, informative=True)
    cal = tmp_path / "calibrated"
    m = score_folder(pred, labels, tmp_path / "out", val_cases=["case_000"],
                     write_calibrated=cal, progress=False)  # fmt: skip
    t = m["temperature_scaled"]["temperature"]
    assert 0.2 < t < 5
    for name in ("case_001", "case_003"):
        probs = average_probabilities([str(cal / f"{name}.npz")])
        raw = np.load(pred / f"{name}.npz")["probabilities"].astype(np.float64)
        ref = np.exp(np.log(np.maximum(raw, np.finfo(np.float32).tiny)) / t)
        ref /= ref.sum(0)
        assert probs.shape == raw.shape and probs.dtype == np.float32
        np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-7)
        label_manager = PlansManager(_plans()).get_label_manager(DATASET)
        merge_files([str(cal / f"{name}.npz")], str(tmp_path / name), ".nii.gz", SimpleITKIO(),
                    label_manager)  # fmt: skip
        merged = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{name}.nii.gz")))
        np.testing.assert_array_equal(merged, original)  # temperature keeps the argmax


REGION_DATASET = {
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": [3]},
    "regions_class_order": [1, 2, 3],
    "file_ending": ".nii.gz",
    "channel_names": {"0": "MRI"},
    "numTraining": 3,
}


def test_score_reads_a_region_based_export_and_agrees_with_nnunets_label_manager(tmp_path):
    """nnU-Net writes sigmoid region probabilities (zero outside the crop) and its segmentation
    by ``regions_class_order``; score's per-region numbers equal those of the arrays built here,
    and its per-region Dice equals the Dice of nnU-Net's own segmentation turned into regions
    by nnU-Net's own transform (the predicted regions are nested, so the two agree)."""
    import json

    from batchgeneratorsv2.transforms.utils.seg_to_regions import (
        ConvertSegmentationToRegionsTransform,
    )
    from nnunetv2.ensembling.ensemble import merge_files
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from mls_tutorial.score import read_dataset_json
    from mls_tutorial.score.regions import score_region_cases

    label_manager = PlansManager(_plans()).get_label_manager(REGION_DATASET)
    assert label_manager.has_regions and label_manager.num_segmentation_heads == 3
    to_regions = ConvertSegmentationToRegionsTransform(label_manager.foreground_regions)
    pred, labels = tmp_path / "pred", tmp_path / "labelsTr"
    pred.mkdir()
    labels.mkdir()
    (pred / "dataset.json").write_text(json.dumps(REGION_DATASET))  # nnUNetv2_predict's copy
    rng = np.random.default_rng(3)
    crop = (slice(None), *(slice(lo, hi) for lo, hi in BBOX))
    expected, dice_nnunet = [], []
    for i in range(3):
        name = f"case_{i:03d}"
        base = rng.normal(size=[hi - lo for lo, hi in BBOX]) * 3
        logits = np.stack([base + 2, base, base - 2]).astype(np.float32)  # nested regions
        _export(pred, name, logits, REGION_DATASET)
        p = np.zeros((3, *SHAPE_ZYX), np.float32)  # the reference, independently
        p[crop] = torch.sigmoid(torch.from_numpy(logits)).numpy()
        label = np.zeros(SHAPE_ZYX, np.int64)
        label[crop[1:]] = (rng.random(base.shape)[None] < p[crop]).sum(0)
        _write_label(labels, name, label)
        expected.append((p.transpose(0, 3, 2, 1), label.transpose(2, 1, 0), SPACING_XYZ, name))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{name}.nii.gz")))
        got, ref = (to_regions(segmentation=torch.from_numpy(a[None].astype(np.int16)))
                    ["segmentation"].numpy() for a in (seg, label))  # fmt: skip
        dice_nnunet.append(
            2 * (got & ref).sum((1, 2, 3)) / (got.sum((1, 2, 3)) + ref.sum((1, 2, 3)))
        )
    with np.load(pred / "case_000.npz") as npz:
        assert npz["probabilities"].shape == (3, *SHAPE_ZYX)  # one sigmoid channel per region
    regions = read_dataset_json(pred).regions
    assert list(regions.values()) == label_manager.foreground_regions  # channel order
    m = score_folder(pred, labels, tmp_path / "out", progress=False)
    ref = score_region_cases(expected, read_dataset_json(pred).regions, progress=False)
    assert m["data"]["class_names"] == ["whole tumor", "tumor core", "enhancing"]
    for name in m["regions"]:
        for key in ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier"):
            assert m["regions"][name][key] == pytest.approx(ref["regions"][name][key], rel=1e-6)
    dice = np.mean(dice_nnunet, 0)
    for r, name in enumerate(m["regions"]):
        assert m["regions"][name]["dice"] == pytest.approx(dice[r], rel=1e-12), name
    # --write-calibrated: nnU-Net's ensembling code reads the scaled sigmoid maps and, by
    # regions_class_order, writes the segmentation it wrote first (T keeps p > 0.5)
    cal = tmp_path / "calibrated"
    m = score_folder(pred, labels, tmp_path / "out_ts", val_cases=["case_000"],
                     write_calibrated=cal, progress=False)  # fmt: skip
    assert len(set(m["temperature_scaled"]["temperature"].values())) == 3  # one T per region
    for name in ("case_001", "case_002"):
        merge_files([str(cal / f"{name}.npz")], str(tmp_path / name), ".nii.gz", SimpleITKIO(),
                    label_manager)  # fmt: skip
        merged = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / f"{name}.nii.gz")))
        np.testing.assert_array_equal(merged, original)
