"""End to end with nnU-Net's own commands on CPU: a tiny synthetic 2D dataset in nnU-Net's raw
layout (non-square slices, anisotropic spacing), ``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train ... -tr nnUNetTrainerMbLS_1epochs_2iters_seed1_noval -device cpu`` (found
through ``nnUNet_extTrainer``), ``nnUNetv2_predict ... --save_probabilities``, then
``mls-tutorial score`` on its output. Runs in CI's nnU-Net venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from mls_tutorial.nnunet import trainer_folder  # noqa: E402
from mls_tutorial.nnunet.export import write_case  # noqa: E402

TRAINER = "nnUNetTrainerMbLS_1epochs_2iters_seed1_noval"
SPACING = (3.0, 0.9, 0.7)  # slice, row, col (mm)


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA torchvision beside a CPU torch raises RuntimeError
        return False
    return True


def _case(rng: np.random.Generator, slices=3, h=24, w=18):
    """A disk (1) and a bar (2) on background, intensities by class plus noise."""
    r, c = np.mgrid[:h, :w]
    label = np.zeros((slices, h, w), np.uint8)
    for s in range(slices):
        cy, cx, rad = rng.uniform(8, 16), rng.uniform(6, 12), rng.uniform(3, 6)
        label[s][(r - cy) ** 2 + (c - cx) ** 2 < rad**2] = 1
        x0 = int(rng.integers(1, w - 5))
        label[s][2:6, x0 : x0 + 4] = 2
    image = np.array([0.0, 1.0, 2.0])[label] + rng.normal(0, 0.3, label.shape)
    return image.astype(np.float32), label


def _raw(root: Path) -> Path:
    ds = root / "Dataset997_Tiny"
    rng = np.random.default_rng(0)
    names = {"Tr": [f"tiny_{i:02d}" for i in range(4)], "Ts": ["tiny_ts_00", "tiny_ts_01"]}
    for split, cases in names.items():
        for case in cases:
            write_case(ds / split, case, *_case(rng), SPACING)
    dataset = {
        "channel_names": {"0": "x"},
        "labels": {"background": 0, "disk": 1, "bar": 2},
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(dataset))
    return ds


def _run(cmd: list[str], env: dict, log: Path) -> None:
    bin_dir = Path(sys.executable).parent
    exe = [str(bin_dir / cmd[0]), *cmd[1:]]
    with log.open("a") as f:
        done = subprocess.run(exe, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"


def test_train_predict_score_with_nnunet_commands(tmp_path):
    if not _torchvision_importable():
        pytest.skip(
            "torchvision does not import beside this torch, and nnU-Net's trainer search needs "
            "it: install the matching CPU torchvision (CI: .ci/torchvision_cpu_shim.py)"
        )
    raw = tmp_path / "raw"
    ds = _raw(raw)
    env = {
        **os.environ,
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(tmp_path / "pre"),
        "nnUNet_results": str(tmp_path / "results"),
        "nnUNet_def_n_proc": "1",
        "nnUNet_compile": "0",
        "nnUNet_extTrainer": str(trainer_folder()),
    }
    env.pop("nnUNet_n_proc_DA", None)
    log = tmp_path / "nnunet.log"
    _run(
        ["nnUNetv2_plan_and_preprocess", "-d", "997", "-c", "2d", "-np", "1", "-npfp", "1"],
        env,
        log,
    )
    split = [{"train": ["tiny_00", "tiny_01", "tiny_02"], "val": ["tiny_03"]}]
    (tmp_path / "pre" / ds.name / "splits_final.json").write_text(json.dumps(split))
    env["nnUNet_n_proc_DA"] = "0"  # augmentation in the trainer's process (seeded)
    _run(["nnUNetv2_train", "997", "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, log)
    pred = tmp_path / "pred"
    predict = ["nnUNetv2_predict", "-i", str(ds / "imagesTs"), "-o", str(pred), "-d", "997"]
    predict += ["-c", "2d", "-f", "0", "-tr", TRAINER, "--save_probabilities", "--disable_tta"]
    _run([*predict, "-npp", "1", "-nps", "1", "-device", "cpu"], env, log)
    out = tmp_path / "score"
    score = ["mls-tutorial", "score", str(pred), str(ds / "labelsTs"), "--out", str(out)]
    _run([*score, "--val-cases", "tiny_ts_00", "--no-progress"], env, log)

    fold = tmp_path / "results" / ds.name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    train_log = next(fold.glob("training_log_*.txt")).read_text()
    assert f"{TRAINER}: + alpha * mean relu(d - margin)" in train_log
    assert "margin=10, alpha=0.1, epochs=1, iters=2, seed=1" in train_log
    debug = json.loads((fold / "debug.json").read_text())
    assert "MarginPenalty(margin=10.0, alpha=0.1" in debug["loss"]
    assert (fold / "checkpoint_final.pth").is_file()
    probs = np.load(pred / "tiny_ts_01.npz")["probabilities"]
    assert probs.shape == (3, 3, 24, 18)  # (C, slices, rows, cols)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_volumes"] == 1 and 0.0 <= metrics["dice"] <= 1.0
    assert metrics["temperature_scaled"]["temperature"] > 0
    assert (out / "summary.md").read_text().strip()
