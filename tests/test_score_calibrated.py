"""``--write-calibrated DIR``: the temperature-scaled probabilities of every reported case in the
input's own layout, read back by ``score``: its numbers are the first run's temperature-scaled
ones (up to the float32 rounding of the written maps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_score import make_cases, write_folders

from mls_tutorial.cli import main
from mls_tutorial.score import ScoreInputError, score_folder
from mls_tutorial.score.output import MANIFEST


def _folders(tmp_path, layout):
    val = make_cases(seed=40, n=2, power=3.0)  # over-confident: T well above 1
    rep = [(f"rep{i}", p, y, q) for i, (_, p, y, q) in enumerate(make_cases(41, n=2, power=2.5))]
    return write_folders(tmp_path, val + rep, layout)


@pytest.mark.parametrize("layout", ["nnunet", "nifti", "numpy"])
def test_scoring_the_written_maps_gives_the_temperature_scaled_numbers(tmp_path, layout):
    pred, labels = _folders(tmp_path, layout)
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "A": 1, "B": 2}}))
    cal = tmp_path / "calibrated"
    first = score_folder(
        pred, labels, tmp_path / "out", val_cases=["case00", "case01"], write_calibrated=cal,
        progress=False,
    )  # fmt: skip
    ts = first["temperature_scaled"]
    assert ts["temperature"] > 1.5 and first["source"]["calibrated_dir"] == str(cal)
    again = score_folder(cal, labels, tmp_path / "again", progress=False)
    assert again["source"]["layout"] == layout
    assert [r["name"] for r in again["per_volume"]] == ["rep0", "rep1"]  # reported cases only
    for key in ("ece", "cece", "gap", "nll", "brier", "ece_all"):
        assert again[key] == pytest.approx(ts[key], rel=1e-4, abs=1e-6), key
    assert again["dice"] == first["dice"] and again["hd95"] == first["hd95"]  # argmax unchanged
    assert list(again["per_class"]) == ["A", "B"]  # dataset.json came along
    names = sorted(p.name for p in cal.iterdir())
    if layout == "nnunet":
        assert names == sorted([MANIFEST, "dataset.json"] + [
            f"rep{i}.{ext}" for i in range(2) for ext in ("npz", "pkl", "nii.gz")])  # fmt: skip
        for ext in ("pkl", "nii.gz"):  # nnU-Net's properties and argmax, byte for byte
            assert (cal / f"rep0.{ext}").read_bytes() == (pred / f"rep0.{ext}").read_bytes()
        with np.load(cal / "rep0.npz") as npz:
            assert npz["probabilities"].dtype == np.float32
            assert npz["probabilities"].flags.c_contiguous  # (C, Z, Y, X) as nnU-Net writes


def test_write_calibrated_refuses_its_input_folder_and_needs_val_cases(tmp_path, capsys):
    pred, labels = _folders(tmp_path, "numpy")
    with pytest.raises(ScoreInputError, match="lies inside the input folder"):
        score_folder(pred, labels, tmp_path / "out", val_cases=["case00"],
                     write_calibrated=pred / "cal", progress=False)  # fmt: skip
    args = ["score", str(pred), str(labels), "--out", str(tmp_path / "out")]
    assert main([*args, "--write-calibrated", str(tmp_path / "cal")]) == 1
    assert "--write-calibrated needs --val-cases" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (pred / "cal").exists()
    args += ["--val-cases", "case00", "--no-progress", "--write-calibrated", str(tmp_path / "cal")]
    assert main(args) == 0
    assert "temperature-scaled probabilities written to" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cal").glob("*.npy")) == [
        "case01.npy", "rep0.npy", "rep1.npy"]  # fmt: skip
