"""Shipped runs: found by exact config, copied (never silently over anything), checked by
sha256, rebuilt atomically, verified by retraining; and the real shipped set matches the code."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _tiny_runs import BASE

from mls_tutorial import shipping
from mls_tutorial.runs import (
    FIGURES,
    METRICS_FILE,
    NO_TRAIN_ENV,
    SHIPPED_FILE,
    WEIGHTS_FILE,
    TrainingForbidden,
    find_runs,
    load_or_train,
    normalize_config,
    run_name,
    shipped,
)
from mls_tutorial.runs.course import READERS, course_configs

CE, CE_TS = {**BASE, "loss": "ce"}, {**BASE, "loss": "ce", "temperature_scaling": True}


def _quiet(**kw):
    return dict(device="cpu", progress=False, figures=False, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of two tiny shipped runs (CE and CE + TS), made by ``rebuild`` itself."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(shipped.STORE_ENV, str(root))
        shipping.rebuild([CE, CE_TS], progress=False, log=None)
    return root


@pytest.fixture
def use_store(store, monkeypatch):
    monkeypatch.setenv(shipped.STORE_ENV, str(store))
    return store


def test_rebuild_writes_a_manifest_with_hashes_versions_and_one_copy_of_the_weights(store):
    man = json.loads((store / shipped.MANIFEST).read_text())
    assert [p.name for p in store.iterdir() if p.name.startswith("set-")] == [man["set"]]
    assert {"torch", "monai", "numpy", "mls_tutorial", "device", "threads", "date"} <= set(
        man["made"]
    )
    ce, ts = sorted(man["runs"], key=lambda e: e["config"]["temperature_scaling"])
    assert ce["name"] == run_name(CE) and ts["name"] == run_name(CE_TS)
    assert set(ce["files"]) == set(shipped.FILES)
    assert WEIGHTS_FILE not in ts["files"] and ts["weights_of"] == ce["name"]
    for entry in (ce, ts):
        for name, info in entry["files"].items():
            path = store / man["set"] / entry["name"] / name
            assert info["sha256"] == shipped.sha256(path) and info["bytes"] == path.stat().st_size
    assert not list((store / man["set"] / ce["name"]).glob("checkpoint.pt"))
    weights = torch.load(store / man["set"] / ce["name"] / WEIGHTS_FILE, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())


def test_a_shipped_run_is_copied_in_and_works_downstream(use_store, tmp_path):
    logs = []
    run = load_or_train(CE, tmp_path, log=logs.append, **_quiet())
    assert logs == [f"[shipped] CE: copied the project's run to {run.path}"]
    assert run.cached and (run.path / SHIPPED_FILE).is_file()
    assert [r.name for r in find_runs(tmp_path)] == [run.name]
    model = run.load_model("cpu")  # from weights.pt: no checkpoint shipped
    assert sum(p.numel() for p in model.parameters()) > 0
    again = []
    load_or_train(CE, tmp_path, log=again.append, **_quiet())
    assert again[0].startswith("[cached]")  # the copy is now an ordinary finished run
    ts = load_or_train(CE_TS, tmp_path, log=None, **_quiet())  # the TS run gets its base's weights
    assert (ts.path / WEIGHTS_FILE).read_bytes() == (run.path / WEIGHTS_FILE).read_bytes()
    drawn = load_or_train(CE, tmp_path / "b", device="cpu", progress=False, log=None)
    assert all((drawn.path / name).is_file() for name in FIGURES)  # figures=True draws them


def test_any_config_difference_means_training(use_store, tmp_path):
    for change in ({"iterations": 5}, {"seed": 2}, {"lr": 2e-3}, {"amp": False}):
        assert shipped.find({**CE, **change}) is None, change
    assert shipped.find(CE)["name"] == run_name(CE)
    logs = []
    load_or_train({**CE, "seed": 2}, tmp_path, log=logs.append, **_quiet())
    assert logs[0].startswith("[train]")


def test_force_and_no_shipped_train_and_keep_the_copy_aside(use_store, tmp_path):
    copy = load_or_train(CE, tmp_path, log=None, **_quiet())
    logs = []
    own = load_or_train(CE, tmp_path, use_shipped=False, log=logs.append, **_quiet())
    assert any(m.startswith("[train]") for m in logs) and any("moved to" in m for m in logs)
    assert own.path == copy.path and not (own.path / SHIPPED_FILE).exists()
    assert len(list((tmp_path / ".replaced").iterdir())) == 1  # the shipped copy, kept
    logs.clear()
    load_or_train(CE, tmp_path, use_shipped=False, log=logs.append, **_quiet())
    assert logs[0].startswith("[cached]")  # a run trained here is used, shipped or not
    logs.clear()
    load_or_train(CE, tmp_path, force=True, log=logs.append, **_quiet())
    assert any(m.startswith("[train]") for m in logs)


def test_an_unfinished_folder_is_moved_aside_not_overwritten(use_store, tmp_path):
    first = load_or_train(CE, tmp_path, log=None, **_quiet())
    (first.path / METRICS_FILE).unlink()  # an interrupted run's folder
    (first.path / "notes.txt").write_text("mine")
    logs = []
    load_or_train(CE, tmp_path, log=logs.append, **_quiet())
    assert any("moved to" in m for m in logs), logs
    (kept,) = (tmp_path / ".replaced").iterdir()
    assert (kept / "notes.txt").read_text() == "mine"


def test_a_corrupt_shipped_file_names_itself_and_the_rebuild(store, tmp_path, monkeypatch):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    man = json.loads((bad / shipped.MANIFEST).read_text())
    target = bad / man["set"] / run_name(CE) / METRICS_FILE
    good = target.read_text()
    target.write_text(good.replace('"dice"', '"dice" ', 1))
    monkeypatch.setenv(shipped.STORE_ENV, str(bad))
    with pytest.raises(shipped.ShippedRunError, match=r"metrics\.json.*--no-shipped.*--rebuild"):
        load_or_train(CE, tmp_path / "runs", log=None, **_quiet())
    assert not (tmp_path / "runs" / run_name(CE)).exists()  # nothing half-copied
    target.write_text(good)
    (bad / man["set"] / run_name(CE) / WEIGHTS_FILE).unlink()
    with pytest.raises(shipped.ShippedRunError, match="missing.*--no-shipped.*--rebuild"):
        load_or_train(CE, tmp_path / "runs", log=None, **_quiet())
    run = load_or_train(CE, tmp_path / "runs", use_shipped=False, log=None, **_quiet())
    assert not (run.path / SHIPPED_FILE).exists()  # what the message suggests works


def test_an_unreadable_manifest_stops_only_the_shipped_configs(store, tmp_path, monkeypatch):
    bad = tmp_path / "store"
    shutil.copytree(store, bad)
    (bad / shipped.MANIFEST).write_text('{"runs": [')  # truncated
    monkeypatch.setenv(shipped.STORE_ENV, str(bad))
    other = {**CE, "seed": 5}  # not shipped: trains, with a warning naming the manifest
    with pytest.warns(UserWarning, match=r"manifest\.json is unreadable.*ce-mna-s5-.* is trained"):
        run = load_or_train(other, tmp_path / "runs", log=None, **_quiet())
    assert (run.path / METRICS_FILE).is_file() and not (run.path / SHIPPED_FILE).exists()
    with pytest.raises(
        shipped.ShippedRunError, match=r"manifest\.json is unreadable.*--no-shipped"
    ):
        load_or_train(CE, tmp_path / "runs", log=None, **_quiet())  # shipped: its files unproven
    assert not (tmp_path / "runs" / run_name(CE)).exists()


def test_no_train_forbids_training_and_names_the_run(use_store, tmp_path, monkeypatch):
    monkeypatch.setenv(NO_TRAIN_ENV, "1")
    assert load_or_train(CE_TS, tmp_path, log=None, **_quiet()).cached  # shipped: fine
    with pytest.raises(TrainingForbidden, match=r"CE \(ce-mna-s7-.*shipped --rebuild"):
        load_or_train({**CE, "seed": 7}, tmp_path, log=None, **_quiet())


def test_an_interrupted_rebuild_leaves_the_previous_set_whole(store, tmp_path, monkeypatch):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    monkeypatch.setenv(shipped.STORE_ENV, str(copy))

    def crash(runs, folder):
        (folder / "half").mkdir(parents=True)
        raise KeyboardInterrupt  # killed while copying the new set

    monkeypatch.setattr(shipping, "_write_set", crash)
    with pytest.raises(KeyboardInterrupt):
        shipping.rebuild([CE], progress=False, log=None)
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if not str(k).startswith(".set-")} == before
    assert shipped.find(CE) is not None


def test_verify_retrains_and_compares(use_store):
    (result,) = shipping.verify(names=[run_name(CE_TS)], progress=False, log=None)
    assert result["max_abs_diff"] == 0.0 and result["bitwise_equal_weights"]
    assert result["shipped_ece"] == result["retrained_ece"]
    assert "CE + TS" in shipping.verification_table([result])
    with pytest.raises(ValueError, match="not shipped"):
        shipping.verify(names=["nope"])


def test_the_cli_lists_and_verifies(use_store, capsys):
    from mls_tutorial.cli import main

    assert main(["shipped"]) == 0
    out = capsys.readouterr().out
    assert run_name(CE) in out and "2 runs" in out
    assert main(["shipped", "--verify", "1", "--seed", "0", "--no-progress"]) == 0
    assert "within the tolerance" in capsys.readouterr().out
    assert main(["shipped", "--name", run_name(CE)]) == 2  # no silent retrain
    err = capsys.readouterr().err
    assert err.startswith("mls-tutorial shipped: error: --name chooses the runs --verify retrains")
    assert err.count("\n") == 1


#: the verification, with training replaced by a wait (a window to send the signal in)
_VERIFY_SLOWLY = """
import pathlib, sys, time
import mls_tutorial.runs.orchestration as orchestration
from mls_tutorial.cli import main

def wait(config, root, **kwargs):
    (pathlib.Path(root) / "training").write_text("now")
    time.sleep(600)

orchestration.load_or_train = wait
sys.exit(main(["shipped", "--verify", "1", "--no-progress", "--device", "cpu"]))
"""


def test_sigterm_during_verify_removes_its_temporary_folder(use_store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), shipped.STORE_ENV: str(use_store)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _VERIFY_SLOWLY], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        t0 = time.monotonic()
        while not list(tmp.glob("mls-verify-*/training")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() - t0 < 120, "the verification never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert "terminated: removing the temporary run folder" in proc.stderr.read()
    assert list(tmp.iterdir()) == []


# ------------------------------------------------------------------- the package's shipped set


def _real():
    man = shipped.manifest(shipped.DEFAULT_STORE)
    if not man["runs"]:
        pytest.fail(f"no shipped runs in {shipped.DEFAULT_STORE}: {shipped.REBUILD}")
    return man


def test_every_shipped_config_normalises_to_itself_with_todays_code():
    for entry in _real()["runs"]:
        assert normalize_config(entry["config"]) == entry["config"], entry["name"]
        assert run_name(entry["config"]) == entry["name"]


def test_the_shipped_set_is_exactly_what_the_course_reads_and_fits_the_budget():
    man = _real()
    assert sorted(e["name"] for e in man["runs"]) == sorted(map(run_name, course_configs()))
    total = 0
    for entry in man["runs"]:
        for name, info in entry["files"].items():
            path = shipped.DEFAULT_STORE / man["set"] / entry["name"] / name
            assert shipped.sha256(path) == info["sha256"], path
            total += path.stat().st_size
    assert total <= shipped.SIZE_BUDGET, total


def test_the_demo_reads_shipped_runs():
    from mls_tutorial import cli

    args = cli.build_parser().parse_args(["demo"])
    cli._resolve(args, cli.DEMO_DEFAULTS)
    demo = {run_name(c) for c in cli._demo_configs(args)}
    assert demo == {run_name(c) for c in READERS["demo"]}
    assert all(shipped.find(normalize_config(c), shipped.DEFAULT_STORE) for c in READERS["demo"])
