"""Sweeps: grid syntax, families, parallel workers, and one writer per run folder (the lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mls_tutorial.cluster import MARKER_DIR, SharedRootError, check_shared_root, root_marker
from mls_tutorial.runs import CONFIG_FILE, LOCK_DIR, METRICS_FILE, load_or_train, run_name
from mls_tutorial.sweep import expand_grid, family, parse_grid, train_configs, train_ladder

DATA = {"n_train": 8, "size": 16, "slices": 2, "n_val": 1, "n_test": 1, "seed": 3}
BASE = {"data": "synthetic", "data_params": DATA, "batch_size": 4, "val_every": 0}


def cfg(**kw):
    return {**BASE, "iterations": 3, **kw}


# ------------------------------------------------------------------------------ grids


def test_parse_and_expand_grids():
    assert parse_grid("ce") == ("ce", {})
    assert expand_grid(*parse_grid("ce")) == [{}]
    loss, knobs = parse_grid("mbls:margin=3,5,10:alpha=0.1,0.3")
    assert loss == "mbls" and knobs == {"margin": [3, 5, 10], "alpha": [0.1, 0.3]}
    combos = expand_grid(loss, knobs)
    assert len(combos) == 6 and {"margin": 10, "alpha": 0.3} in combos


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("hinge:alpha=1", "unknown loss"),
        ("ls:gamma=1", "ls has no parameter 'gamma'"),
        ("ls:alpha", "expected KEY=V1,V2"),
        ("ls:alpha=0.1:alpha=0.2", "given twice"),
        ("ls:alpha=0.1,x y", "not a number"),
    ],
)
def test_bad_grids_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_grid(text)


def test_families():
    assert family({"loss": "mbls", "loss_kwargs": {"margin": 0.0}}) == "linear"
    assert family({"loss": "mbls", "loss_kwargs": {"margin": 5.0}}) == "mbls"
    assert family({"loss": "ce", "temperature_scaling": True}) == "ce_ts"
    assert family({"loss": "ls", "loss_kwargs": {"alpha": 0.3}}) == "ls"


@pytest.mark.slow  # starts other processes
def test_workers_train_in_parallel_processes_and_keep_config_order(tmp_path):
    configs = [cfg(loss="ls", loss_kwargs={"alpha": a}) for a in (0.1, 0.3)] + [cfg(loss="ce")]
    runs = train_configs(configs, tmp_path, workers=2, device="cpu", progress=False, log=None)
    assert [r.config["loss"] for r in runs] == ["ls", "ls", "ce"]
    assert [r.config["loss_kwargs"].get("alpha") for r in runs[:2]] == [0.1, 0.3]
    assert all((r.path / METRICS_FILE).is_file() and not r.cached for r in runs)
    again = train_configs(configs, tmp_path, workers=1, device="cpu", progress=False, log=None)
    assert all(r.cached for r in again)  # a worker's run is found by the next sweep
    with pytest.raises(ValueError, match="workers"):
        train_configs(configs, tmp_path, workers=0)


# -------------------------------------------------------------------------------- lock

_CHILD = textwrap.dedent(
    """
    import json, pathlib, sys, time
    from mls_tutorial.runs import get_data, load_or_train
    config, root = json.loads(sys.argv[1]), sys.argv[2]
    get_data(config)  # imports and data ready before "go"
    while len(sys.argv) > 3 and not pathlib.Path(sys.argv[3]).exists():  # wait for "go"
        time.sleep(0.01)
    run = load_or_train(config, root, device="cpu", progress=False, figures=False)
    print("RESULT", json.dumps({"cached": run.cached, "ece": run.metrics["ece"]}), flush=True)
    """
)


def _start(config, root, go: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = [] if go is None else [str(go)]
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(config), str(root), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early:\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow  # starts other processes
def test_two_processes_asking_for_one_run_train_it_once(tmp_path):
    config = cfg(loss="ce", iterations=1500)
    folder, go = tmp_path / run_name(config), tmp_path / "go"
    second = _start(config, tmp_path, go)  # imports now, asks for the run on "go"
    first = _start(config, tmp_path)
    _wait_for(folder / CONFIG_FILE, first)  # the first holds the lock and trains
    go.touch()
    out1, _ = first.communicate(timeout=600)
    out2, _ = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert "[train]" in out1 and "[train]" not in out2, out2
    assert "[wait]" in out2 and "[cached]" in out2, out2
    r1 = json.loads(out1.split("RESULT ")[1])
    r2 = json.loads(out2.split("RESULT ")[1])
    assert (r1["cached"], r2["cached"]) == (False, True) and r1["ece"] == r2["ece"]


@pytest.mark.slow  # starts other processes
def test_a_crashed_holder_never_blocks_and_its_run_resumes(tmp_path):
    config = cfg(loss="ce", iterations=400, val_every=20)  # checkpoints every 20 iterations
    folder = tmp_path / run_name(config)
    holder = _start(config, tmp_path)
    _wait_for(folder / "checkpoint.pt", holder)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock, mid-training
    holder.wait(timeout=60)
    assert not (folder / METRICS_FILE).exists()
    from filelock import FileLock

    with FileLock(tmp_path / LOCK_DIR / f"{folder.name}.lock").acquire(timeout=0):
        pass  # the dead holder's lock is free at once (the OS released it): nothing can block
    messages = []
    run = load_or_train(
        config,
        tmp_path,
        device="cpu",
        progress=False,
        figures=False,
        log=messages.append,
    )
    assert not any(m.startswith("[wait]") for m in messages), messages
    assert any("resuming from checkpoint" in m for m in messages), messages
    assert (run.path / METRICS_FILE).is_file() and run.history["iteration"][-1] == 400


# ----------------------------------------------------------------------------- ladders


def test_a_ladder_rung_is_the_run_trained_alone(tmp_path):
    """The 6-iteration rung, resumed from the 4-iteration one, equals a 6-iteration run trained
    in one go, bit for bit (weights, losses, validations, CALS's multipliers)."""
    import torch

    from mls_tutorial.train.checkpoint import load_checkpoint

    base = {**BASE, "val_every": 2, "loss": "cals", "loss_kwargs": {"margin": 3.0}}
    asked = []
    ladder = train_ladder(
        base,
        [4, 6],
        tmp_path / "ladder",
        device="cpu",
        log=None,
        before_rung=lambda n, start: asked.append((n, start)) or True,
    )
    alone = load_or_train(
        {**base, "iterations": 6},
        tmp_path / "alone",
        device="cpu",
        progress=False,
        figures=False,
        log=None,
    )
    assert asked == [(4, 0), (6, 4)]
    assert [r.config["iterations"] for r in ladder] == [4, 6]
    assert ladder[-1].name == alone.name  # same config, same folder name
    a = load_checkpoint(ladder[-1].path / "checkpoint.pt")["model"]
    b = load_checkpoint(alone.path / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("loss", "val_iteration", "val_fg_ece", "loss_state"):
        assert ladder[-1].history[key] == alone.history[key], key
    assert ladder[-1].metrics["ece"] == alone.metrics["ece"]
    # cached rungs are loaded, and a False from before_rung stops the ladder there
    again = train_ladder(
        base,
        [4, 6, 8],
        tmp_path / "ladder",
        device="cpu",
        log=None,
        before_rung=lambda n, start: False,
    )
    assert [r.config["iterations"] for r in again] == [4, 6] and all(r.cached for r in again)


@pytest.mark.parametrize(
    ("lengths", "extra", "match"),
    [
        ([], {}, "ints >= 1"),
        ([4, 4], {}, "increase"),
        ([3, 6], {"val_every": 2}, "multiple of val_every"),
        ([2, 4], {"temperature_scaling": True}, "without temperature scaling"),
    ],
)
def test_ladder_arguments_are_checked(tmp_path, lengths, extra, match):
    with pytest.raises(ValueError, match=match):
        train_ladder({**BASE, "val_every": 2, **extra}, lengths, tmp_path, log=None)


# ----------------------------------------------------------------------- any executor


def test_importing_the_package_never_imports_dask():
    code = (
        "import pkgutil, sys, mls_tutorial\n"
        "for m in pkgutil.walk_packages(mls_tutorial.__path__, 'mls_tutorial.'):\n"
        # nnU-Net's trainer files are plug-ins that nnU-Net imports (they need nnunetv2)
        "    if m.name != 'mls_tutorial.__main__' and '.nnunet.trainers.' not in m.name:\n"
        "        __import__(m.name)\n"
        "from mls_tutorial.cli import build_parser\n"
        "build_parser().parse_args(['sweep', '--scheduler', 'tcp://127.0.0.1:1'])\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'dask', 'distributed', 'dask_jobqueue'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_threads_of_one_process_train_as_one_process_would(tmp_path):
    """Runs trained at once by threads of one process (a Dask worker with nthreads > 1) share
    the global RNGs: seeding and weight initialisation must not interleave."""
    configs = [
        cfg(loss="ls", loss_kwargs={"alpha": a}, seed=s) for a in (0.1, 0.2) for s in (1, 2, 3)
    ]
    alone = train_configs(
        configs, tmp_path / "a", threads_per_run=1, progress=False, log=None, figures=False
    )
    with ThreadPoolExecutor(3) as threads:
        together = train_configs(
            configs, tmp_path / "b", executor=threads, threads_per_run=1, log=None, figures=False
        )
    for a, b in zip(alone, together, strict=True):
        assert a.name == b.name and a.history["loss"] == b.history["loss"], a.name
        assert a.metrics["ece"] == b.metrics["ece"]


def test_the_shared_root_check_names_the_folder_and_the_worker(tmp_path):
    with pytest.raises(SharedRootError, match=f"does not see the run root {tmp_path}") as err:
        check_shared_root(str(tmp_path), "0123abcd", where="worker W")
    assert str(err.value).startswith("worker W ") and "shared file system" in str(err.value)
    with root_marker(tmp_path) as token:
        assert check_shared_root(str(tmp_path), token, where="worker W") == "worker W"
        stale = tmp_path / MARKER_DIR / "ffff0000"
        stale.mkdir()
        (stale / "client").write_text("another token")  # the same path, another sweep's folder
        with pytest.raises(SharedRootError, match="another sweep's"):
            check_shared_root(str(tmp_path), "ffff0000", where="worker V")
        stale.joinpath("client").unlink()
        stale.rmdir()
    assert not (tmp_path / MARKER_DIR).exists()


def test_train_configs_checks_its_arguments_before_any_run(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['figure'\]"):
        train_configs([cfg()], tmp_path, workers=2, figure=False)
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="not both"):
        train_configs([cfg()], tmp_path, executor=pool, workers=2)
    with pytest.raises(ValueError, match="threads_per_run"):
        train_configs([cfg()], tmp_path, threads_per_run=0)
    assert list(tmp_path.iterdir()) == []
