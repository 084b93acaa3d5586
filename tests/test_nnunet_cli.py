"""``mls-tutorial nnunet`` (path, export-mni) and the trainer folder's import rules; no nnU-Net
needed (the trainers themselves: tests/test_nnunet_trainers.py, tests/test_nnunet_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _imports import absolute_imports

from mls_tutorial.cli import main
from mls_tutorial.nnunet import ENV_VAR, env_has_folder, trainer_folder


def test_import_is_light():
    code = (
        "import sys, mls_tutorial, mls_tutorial.nnunet, mls_tutorial.nnunet.command;"
        "print([m for m in ('torch', 'nnunetv2', 'nibabel', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_trainer_folder_imports_only_nnunet_torch_and_the_penalties():
    stdlib = {"__future__", "functools", "random", "re", "math"}
    folder = trainer_folder()
    modules = sorted(folder.glob("*.py"))
    assert [p.name for p in modules] == ["__init__.py", "mls_calibration_trainers.py"]
    for path in modules:
        for name in absolute_imports(path.read_text()):
            top = name.split(".")[0]
            ok = top in stdlib | {"numpy", "torch", "nnunetv2"}
            assert ok or name == "mls_tutorial.nnunet.penalties", f"{path.name} imports {name}"
    penalties = folder.parent / "penalties.py"
    assert {n.split(".")[0] for n in absolute_imports(penalties.read_text())} <= stdlib | {"torch"}


def test_path_prints_the_folder_and_the_line_to_paste(capsys, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert main(["nnunet", "path"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(trainer_folder()) and trainer_folder().is_dir()
    assert f"export {ENV_VAR}={trainer_folder()}" in err and "does not name it yet" in err


def test_path_check_fails_until_the_variable_names_the_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert main(["nnunet", "path", "--check"]) == 1
    err = capsys.readouterr().err
    assert "nnunet: error:" in err and f"run: export {ENV_VAR}={trainer_folder()}" in err
    monkeypatch.setenv(ENV_VAR, f"{tmp_path}{__import__('os').pathsep}{trainer_folder()}")
    assert env_has_folder() and main(["nnunet", "path", "--check"]) == 0


def test_export_mni_writes_an_nnunet_raw_dataset(tmp_path, capsys):
    import nibabel as nib

    from mls_tutorial.data.mni import CLASS_NAMES, build_mni

    out = tmp_path / "Dataset501_MNI"
    assert main(["nnunet", "export-mni", str(out)]) == 0
    assert "nnUNetv2_plan_and_preprocess -d 501 -c 2d" in capsys.readouterr().out
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {n: i for i, n in enumerate(CLASS_NAMES)}
    assert dataset["channel_names"] == {"0": "T1"} and dataset["numTraining"] == 4
    split = json.loads((out / "splits_final.json").read_text())
    assert split == [
        {"train": ["mni_train_00", "mni_train_01"], "val": ["mni_val_00", "mni_val_01"]}
    ]
    tr = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert tr == [f"mni_{s}_{i:02d}_0000.nii.gz" for s in ("train", "val") for i in range(2)]
    assert len(list((out / "labelsTs").iterdir())) == 4
    bundle = build_mni()
    vol = bundle.test[3]
    img = nib.load(out / "imagesTs" / "mni_test_03_0000.nii.gz")
    lab = nib.load(out / "labelsTs" / "mni_test_03.nii.gz")
    assert img.header.get_zooms() == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(img.get_fdata().transpose(2, 1, 0), vol.image[:, 0].numpy())
    np.testing.assert_array_equal(np.asarray(lab.dataobj).transpose(2, 1, 0), vol.label.numpy())
    train0 = np.asarray(nib.load(out / "labelsTr" / "mni_train_00.nii.gz").dataobj)
    n = train0.shape[2]
    np.testing.assert_array_equal(train0.transpose(2, 1, 0), bundle.train.labels[:n].numpy())


@pytest.mark.parametrize("name", ["MNI", "Dataset5_MNI", "Dataset501"])
def test_export_mni_names_the_convention(name, tmp_path, capsys):
    assert main(["nnunet", "export-mni", str(tmp_path / name)]) == 1
    assert "DatasetNNN_Name" in capsys.readouterr().err


def test_export_mni_never_writes_into_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "Dataset501_MNI"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["nnunet", "export-mni", str(out)]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_deep_supervision_weights_formula_and_bad_counts():
    from mls_tutorial.nnunet.penalties import deep_supervision_weights

    # 5 outputs: 1, 1/2, 1/4, 1/8 and 0, over 15/8
    assert deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    assert deep_supervision_weights(2) == [1.0, 0.0]
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="n_outputs"):
            deep_supervision_weights(bad)
