"""`score`'s output folder and bad input (issues 28, 29): a re-score replaces only score's own
files (the user's files keep their bytes), a failure or Ctrl-C at any point leaves OUT as it was,
and every bad input gets a clear message naming the file or the flag."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_score import make_cases, write_folders, write_label

from mls_tutorial.cli import main
from mls_tutorial.score import OUTPUT_FILES, ScoreInputError, score_cases, score_folder
from mls_tutorial.score import output as output_mod
from mls_tutorial.score.output import MANIFEST

USER_FILES = {"notes.txt": b"my notes\n", "mine/a.txt": bytes(range(256))}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _add_user_files(out: Path) -> None:
    for name, data in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


@pytest.fixture
def scored(tmp_path):
    """A folder scored once, the user's files added, then the predictions changed."""
    cases = make_cases(seed=20, n=2, power=2.0)
    pred, labels = write_folders(tmp_path, cases)
    out = tmp_path / "out"
    first = score_folder(pred, labels, out, progress=False)
    _add_user_files(out)
    np.save(pred / "case00.npy", make_cases(seed=21, n=1, power=4.0)[0][1])
    return pred, labels, out, first


def test_a_rescore_replaces_only_scores_files_and_keeps_the_users(scored):
    pred, labels, out, first = scored
    second = score_folder(pred, labels, out, progress=False)
    assert second["ece"] != first["ece"]
    assert json.loads((out / "metrics.json").read_text())["ece"] == second["ece"]
    for name, data in USER_FILES.items():
        assert (out / name).read_bytes() == data
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted([*manifest, MANIFEST]) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_FILES, "mine", "notes.txt"])


@pytest.mark.parametrize("where", ["scoring", "figures", "moving", "signal"])
def test_an_interrupted_rescore_leaves_out_as_it_was(scored, monkeypatch, where):
    pred, labels, out, _ = scored
    before = _snapshot(out)
    if where == "scoring":
        monkeypatch.setattr(
            "mls_tutorial.score.folder.score_cases", lambda *a, **k: _raise(KeyboardInterrupt)
        )
    elif where == "figures":
        monkeypatch.setattr(
            "mls_tutorial.report.calibration_figures", lambda *a, **k: _raise(KeyboardInterrupt)
        )
    else:  # the third file move: an error, or a real Ctrl-C (SIGINT), which is held until the
        calls, rename = [], Path.rename  # moves end and then undoes them

        def flaky(self, target):
            calls.append(self)
            if len(calls) == 3:
                if where == "moving":
                    raise OSError("disk gone")
                os.kill(os.getpid(), signal.SIGINT)
            return rename(self, target)

        monkeypatch.setattr(output_mod.Path, "rename", flaky)
    with pytest.raises((KeyboardInterrupt, OSError)):
        score_folder(pred, labels, out, progress=False)
    monkeypatch.undo()
    assert _snapshot(out) == before  # score's old files and the user's, nothing staged left


def _raise(exc):
    raise exc


def test_cli_ctrl_c_says_what_score_left(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "mls_tutorial.score.score_folder", lambda *a, **k: _raise(KeyboardInterrupt)
    )
    code = main(["score", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 130 and "score interrupted" in err and "left as it was" in err
    assert "resume" not in err


def test_out_dot_is_the_current_folder(tmp_path, monkeypatch, capsys):
    pred, labels = write_folders(tmp_path, make_cases(seed=22, n=1))
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["score", str(pred), str(labels), "--out", ".", "--no-progress"]) == 0
    assert (here / "metrics.json").is_file()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    monkeypatch.chdir(tmp_path / "busy")
    assert main(["score", str(pred), str(labels), "--out", "."]) == 1
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'busy'} is a non-empty folder" in err and "x.txt" in err
    assert "empty name" not in err and sorted(os.listdir(".")) == ["x.txt"]


def test_an_out_of_unrelated_files_is_refused_untouched(tmp_path):
    pred, labels = write_folders(tmp_path, make_cases(seed=23, n=1))
    out = tmp_path / "mine"
    _add_user_files(out)
    (out / "summary.md").write_text("the user's own summary")
    before = _snapshot(out)
    with pytest.raises(ScoreInputError, match="non-empty folder that no earlier `score` wrote"):
        score_folder(pred, labels, out, progress=False)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["mine", "notes.txt", "summary.md"]
    )


def test_a_score_file_the_user_edited_is_not_overwritten(scored):
    pred, labels, out, _ = scored
    (out / "summary.md").write_text("edited by hand")
    with pytest.raises(ScoreInputError, match="summary.md changed since score wrote it"):
        score_folder(pred, labels, out, progress=False)
    assert (out / "summary.md").read_text() == "edited by hand"


def test_an_output_written_before_manifests_is_replaced_keeping_user_files(scored):
    pred, labels, out, _ = scored
    (out / MANIFEST).unlink()  # as an older score left it: metrics.json with a "score" key
    score_folder(pred, labels, out, progress=False)
    assert all((out / n).read_bytes() == d for n, d in USER_FILES.items())
    assert (out / MANIFEST).is_file()


# ------------------------------------------------------------------------------ bad input


def _npz_folder(tmp_path, write):
    ((_, p, y, _),) = make_cases(seed=24, n=1)
    pred = tmp_path / "pred"
    pred.mkdir()
    write(pred / "a.npz", p)
    write_label(tmp_path / "labels", "a", y)
    return pred, tmp_path / "labels"


def _truncated(path, p):
    np.savez(path, probabilities=p.transpose(0, 3, 2, 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "write",
    [lambda path, p: path.write_bytes(b"not a zip at all" * 10), _truncated],
    ids=["not-zip", "truncated"],
)
def test_a_damaged_npz_is_named_and_called_not_valid(tmp_path, write):
    pred, labels = _npz_folder(tmp_path, write)
    with pytest.raises(ScoreInputError, match=r"a\.npz is not a valid \.npz") as err:
        score_folder(pred, labels, tmp_path / "out", progress=False)
    assert "allow_pickle" not in str(err.value) and not (tmp_path / "out").exists()


def test_an_npz_with_another_key_names_the_file_and_its_keys(tmp_path):
    pred, labels = _npz_folder(tmp_path, lambda path, p: np.savez(path, softmax=p))
    with pytest.raises(ScoreInputError, match=r"a\.npz has no key 'probabilities'.*'softmax'"):
        score_folder(pred, labels, tmp_path / "out", progress=False)


@pytest.mark.parametrize("layout", ["nnunet", "numpy"])
def test_float16_maps_are_accepted_and_read_exactly(tmp_path, layout):
    """Decision: float16 maps are scored, not refused. Every float16 value is exact in float64,
    the sums may be off 1 by 2 K float16 eps, and a saturated 0 is clipped at float16's
    smallest normal (reported in ``score.dtypes`` / ``log_clip``)."""
    cases = [(n, p.astype(np.float16), y, q) for n, p, y, q in make_cases(seed=25, n=2, power=1.5)]
    pred, labels = write_folders(tmp_path, cases, layout)
    m = score_folder(pred, labels, tmp_path / "out", progress=False)
    direct = score_cases([(p, y) for _, p, y, _ in cases], progress=False, hd95=False)
    assert m["score"]["dtypes"] == ["float16"]
    for key in ("ece", "cece", "gap", "nll", "brier", "ece_all", "dice"):
        assert m[key] == pytest.approx(direct[key], rel=1e-12), key  # read in memory order


def test_val_cases_naming_a_missing_case_or_every_case_are_one_line_errors(tmp_path, capsys):
    pred, labels = write_folders(tmp_path, make_cases(seed=26, n=2))
    out = tmp_path / "out"
    assert main(["score", str(pred), str(labels), "--out", str(out), "--val-cases", "zz"]) == 1
    err = capsys.readouterr().err.strip()
    assert "--val-cases" in err and "'zz'" in err and len(err.splitlines()) == 1
    args = ["score", str(pred), str(labels), "--out", str(out), "--val-cases", "case00", "case01"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "every case is a --val-cases case" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_allow_missing_names_the_skipped_cases_on_the_console_and_in_the_summary(tmp_path, capsys):
    pred, labels = write_folders(tmp_path, make_cases(seed=27, n=3))
    (labels / "case01.nii.gz").unlink()
    out = tmp_path / "out"
    args = ["score", str(pred), str(labels), "--out", str(out), "--allow-missing", "--no-progress"]
    assert main(args) == 0
    line = "Skipped 1 case without a label map (--allow-missing): case01."
    assert line in capsys.readouterr().out
    assert line in (out / "summary.md").read_text()


def test_progress_bars_over_cases_and_within_a_large_case(tmp_path, monkeypatch, capsys):
    pred, labels = write_folders(tmp_path, make_cases(seed=28, n=2))
    monkeypatch.setattr("mls_tutorial.score.case.LARGE_CASE_ENTRIES", 0)  # every case is large
    score_folder(pred, labels, tmp_path / "out", progress=True, hd95=False)
    err = capsys.readouterr().err
    assert "score: 100%" in err and "2/2" in err  # over the cases
    assert "case00:" in err and "slab" in err  # within one
