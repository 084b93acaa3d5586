"""Sweeps on a real Dask cluster: same results as the local pool, nothing lost, nothing twice.

Every scheduler and worker listens on 127.0.0.1 only. The runs are the tiny synthetic task of
tests/test_sweep.py (16x16 images, a few to a few hundred iterations).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import pytest
from _dask import local_cluster

pytestmark = pytest.mark.slow  # a Dask cluster of worker processes
distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from mls_tutorial.cli import main  # noqa: E402
from mls_tutorial.runs import CONFIG_FILE, LOCK_DIR, METRICS_FILE, run_name  # noqa: E402
from mls_tutorial.sweep import SweepError, train_configs  # noqa: E402

DATA = {"n_train": 8, "size": 16, "slices": 2, "n_val": 1, "n_test": 1, "seed": 3}
BASE = {"data": "synthetic", "data_params": DATA, "batch_size": 4, "val_every": 0}
LOOPBACK = "tcp://127.0.0.1:"
QUIET = {"progress": False, "figures": False}  # figures=False rides through to load_or_train

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def cfg(loss="ce", iterations=5, **kw):
    return {**BASE, "loss": loss, "iterations": iterations, **kw}


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert cluster.scheduler_address.startswith(LOOPBACK)
        assert all(addr.startswith(LOOPBACK) for addr in workers), workers
        yield client


# ------------------------------------------------------------------ a counter that cannot lie


def _counted(path: str, fn, config, *args, **kwargs):
    """Runs on the worker: one line before and one after each attempt at a task; the second
    says whether the attempt trained or loaded the finished run."""
    name = run_name(config)
    with open(path, "a") as f:  # O_APPEND: whole lines, even from several processes
        f.write(f"start {name}\n")
    result = fn(config, *args, **kwargs)
    with open(path, "a") as f:
        f.write(f"end {name} {'loaded' if result['cached'] else 'trained'}\n")
    return result


class CountingExecutor(Executor):
    """Any executor, with every attempt at a task counted in a file (no Dask API involved)."""

    def __init__(self, inner: Executor, path: Path):
        self.inner, self.path = inner, path

    def submit(self, fn, /, *args, **kwargs):
        return self.inner.submit(_counted, str(self.path), fn, *args, **kwargs)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.path.read_text().splitlines():
            out[line] = out.get(line, 0) + 1
        return out


def _trained(lines: list[str]) -> dict[str, int]:
    """``[train]`` log lines per run folder name."""
    out: dict[str, int] = {}
    for line in lines:
        if line.startswith("[train]"):
            name = Path(line.split(" -> ")[1].split(" (")[0]).name
            out[name] = out.get(name, 0) + 1
    return out


# ----------------------------------------------------------------------------------- tests


def test_dask_results_equal_the_local_pool(client, tmp_path):
    configs = [cfg("ls", loss_kwargs={"alpha": a}) for a in (0.1, 0.3)] + [cfg("mbls", seed=2)]
    configs.append(configs[0])  # a duplicate: trained once, returned twice
    log: list[str] = []
    on_dask = train_configs(
        configs, tmp_path / "dask", executor=client.get_executor(), log=log.append, **QUIET
    )
    local = train_configs(configs, tmp_path / "pool", workers=2, log=None, **QUIET)
    assert [r.name for r in on_dask] == [r.name for r in local] == [run_name(c) for c in configs]
    for a, b in zip(on_dask, local, strict=True):
        assert a.path.parent == tmp_path / "dask" and not a.cached
        for key in ("ece", "cece", "dice", "nll", "brier", "gap"):
            assert a.metrics[key] == b.metrics[key], (a.name, key)
        assert a.history["loss"] == b.history["loss"]
    assert sum(_trained(log).values()) == 3  # the duplicate was not trained twice
    done = [line for line in log if line.startswith("[done]")]
    assert len(done) == 3 and all("Dask worker tcp://127.0.0.1:" in line for line in done), done
    # two workers x one thread on this host: every run got cores // 2 torch threads
    from dask.system import CPU_COUNT as cores

    assert all(line.endswith(f", {max(1, cores // 2)} thread(s)") for line in done), done
    assert not (tmp_path / "dask" / ".sweep-check").exists()  # the marker is cleaned up


def test_a_bad_config_fails_only_its_task(client, tmp_path):
    good = [cfg("ce"), cfg("ls", loss_kwargs={"alpha": 0.2})]
    bad = cfg("mbls", loss_kwargs={"margin": -1.0})  # valid keys; the loss refuses the value
    with pytest.raises(SweepError, match="1 of 3 runs failed") as err:
        train_configs(
            [good[0], bad, good[1]], tmp_path, executor=client.get_executor(), log=None, **QUIET
        )
    assert run_name(bad) in str(err.value) and "margin must be" in str(err.value)
    assert run_name(good[0]) not in str(err.value)
    assert all((tmp_path / run_name(c) / METRICS_FILE).is_file() for c in good)  # kept
    again = train_configs(good, tmp_path, executor=client.get_executor(), log=None, **QUIET)
    assert all(r.cached for r in again)


def test_two_overlapping_sweeps_train_each_run_once(cluster, client, tmp_path):
    a, b, c, d = (cfg("ls", iterations=150, loss_kwargs={"alpha": x}) for x in (0.1, 0.2, 0.3, 0.4))
    grids, logs = ([a, b, c], [b, c, d]), ([], [])

    def sweep(i):
        with distributed.Client(cluster.scheduler_address) as own:  # two users, one cluster
            return train_configs(
                grids[i], tmp_path, executor=own.get_executor(), log=logs[i].append, **QUIET
            )

    with ThreadPoolExecutor(2) as both:
        first, second = both.map(sweep, (0, 1))
    for grid, runs in zip(grids, (first, second), strict=True):
        assert [r.name for r in runs] == [run_name(x) for x in grid]
        assert all((r.path / METRICS_FILE).is_file() for r in runs)
    trained = _trained(logs[0] + logs[1])
    assert trained == {run_name(x): 1 for x in (a, b, c, d)}, logs
    cached = [line for line in logs[0] + logs[1] if line.startswith("[cached]")]
    assert len(cached) == 2, logs  # b and c: the second sweep to ask loaded them
    assert all(len(r.history["iteration"]) == 150 for r in first + second)


def _lock_holder(lock: Path) -> int | None:
    """The pid holding an flock on ``lock`` (from /proc/locks), or None."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue  # a waiter, or another kind of lock
        if int(parts[5].rsplit(":", 1)[1]) == inode:
            return int(parts[4])
    return None


def _files(folder: Path) -> dict[str, int]:
    """Every file of a run folder, with its modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux /proc/locks")
def test_a_killed_worker_loses_nothing_and_trains_nothing_twice(client, tmp_path):
    """The guarantee: a re-run of a finished task loads, never trains.

    When a worker dies, Dask recomputes every result that lived only in its memory, finished
    tasks included (the sweep still holds their futures), so how often a task *starts* depends
    on where results sat when the kill landed. What must not vary: each run trained to its end
    once (the killed one resuming from its checkpoint), every other attempt loaded the finished
    folder without writing to it, and every iteration is in the history exactly once.
    """
    iterations = 400  # about 3 s a run; a checkpoint every 30 iterations
    configs = [
        cfg("ls", iterations=iterations, val_every=30, loss_kwargs={"alpha": x})
        for x in (0.1, 0.2, 0.3, 0.4)
    ]
    names = [run_name(c) for c in configs]
    counting = CountingExecutor(client.get_executor(), tmp_path / "attempts.txt")
    log: list[str] = []
    root = tmp_path / "runs"
    with ThreadPoolExecutor(1) as bg:
        sweep = bg.submit(train_configs, configs, root, executor=counting, log=log.append, **QUIET)
        pids = set(client.run(os.getpid).values())
        victim, finished, t0 = None, None, time.monotonic()
        while victim is None:  # one run finished, another past its first checkpoint: kill it
            assert not sweep.done(), sweep.exception() or log
            assert time.monotonic() - t0 < 180, "no run reached the state to kill it in"
            done = [n for n in names if (root / n / METRICS_FILE).is_file()]
            running = [n for n in names if n not in done and (root / n / "checkpoint.pt").is_file()]
            for name in running if done else []:
                pid = _lock_holder(root / LOCK_DIR / f"{name}.lock")
                if pid in pids:
                    finished = {n: _files(root / n) for n in done}
                    os.kill(pid, signal.SIGKILL)
                    victim = name
                    break
            time.sleep(0.02)
        runs = sweep.result(timeout=300)
    assert [r.name for r in runs] == names and all((r.path / METRICS_FILE).is_file() for r in runs)
    counts = counting.counts()
    for name in names:  # trained to its end once; any other attempt that ended loaded it
        assert counts.get(f"end {name} trained") == 1, counts
    assert counts.get(f"start {victim}", 0) >= 2, counts  # killed, then resumed elsewhere
    for name, files in finished.items():  # finished before the kill: not one file touched
        assert _files(root / name) == files, name
    resumed = [line for line in log if line.startswith("[train]") and victim in line]
    assert resumed and resumed[-1].endswith("(resuming from checkpoint)"), log
    for run in runs:  # every iteration trained exactly once, the victim's included
        assert run.history["iteration"] == list(range(1, iterations + 1)), run.name


def _start(args: list[str], cwd: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        cwd=cwd,
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_on_a_cluster_started_by_hand_checks_the_shared_root(tmp_path, monkeypatch, capsys):
    """The docs' recipe: `dask scheduler`, `dask worker` x2, `mls-tutorial sweep --scheduler...`.

    ``/proc/self/cwd/runs`` names a different folder in each process (its working directory):
    the worker started elsewhere sees another folder at the client's path, as a worker without
    the shared file system would.
    """
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    elsewhere.mkdir()
    file = tmp_path / "scheduler.json"
    host = ["--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]
    procs = [
        _start(
            ["scheduler", *host, "--port", "0", "--scheduler-file", str(file)],
            tmp_path,
            tmp_path / "scheduler.log",
        )
    ]
    try:
        t0 = time.monotonic()
        while not file.is_file():
            assert time.monotonic() - t0 < 60 and procs[0].poll() is None, "no scheduler"
            time.sleep(0.1)
        address = json.loads(file.read_text())["address"]
        assert address.startswith(LOOPBACK)
        worker = ["worker", "--scheduler-file", str(file), *host, "--nthreads", "1"]
        for name, cwd in (("shared", shared), ("elsewhere", elsewhere)):
            procs.append(_start([*worker, "--name", name], cwd, tmp_path / f"{name}.log"))
        with distributed.Client(scheduler_file=str(file)) as c:
            c.wait_for_workers(2, timeout=120)
            infos = c.scheduler_info(n_workers=-1)["workers"]
            stray = next(a for a, w in infos.items() if w["name"] == "elsewhere")
        assert all(a.startswith(LOOPBACK) for a in infos)

        monkeypatch.chdir(shared)
        argv = ["sweep", "--grid", "ce", "--grid", "ls:alpha=0.1", "--data", "synthetic"]
        argv += ["--data-param", "n_train=8", "--data-param", "size=16", "--data-param", "slices=2"]
        argv += ["--iterations", "5", "--val-every", "0", "--batch-size", "4", "--no-progress"]
        argv += ["--out", "/proc/self/cwd/runs", "--name", "table"]
        assert main([*argv, "--scheduler-file", str(file)]) == 1
        err = capsys.readouterr().err
        assert f"Dask worker {stray} does not see the run root /proc/self/cwd/runs" in err, err
        assert "shared file system" in err
        assert [p.name for p in (shared / "runs").iterdir()] == []  # nothing trained
        assert not (elsewhere / "runs").exists()

        procs.pop().terminate()  # the stray worker leaves; the sweep runs on the other
        with distributed.Client(address) as c:
            t0 = time.monotonic()
            while len(c.scheduler_info(n_workers=-1)["workers"]) != 1:
                assert time.monotonic() - t0 < 60, "the stray worker did not leave"
                time.sleep(0.1)
        assert main([*argv, "--scheduler", address]) == 0
        out = capsys.readouterr().out
        assert "[done]" in out and "Dask worker tcp://127.0.0.1:" in out, out
        runs = sorted(p.name for p in (shared / "runs").iterdir() if (p / CONFIG_FILE).is_file())
        assert len(runs) == 2 and (shared / "runs" / "table.md").is_file()
        assert main(["report", "runs", "--out", "report"]) == 0  # works unchanged on the result
        assert (shared / "report" / "report.md").is_file()
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def test_slurm_job_script_names_the_resources():
    """docs/cluster.md's SLURMCluster: built (not submitted); its job script asks for them."""
    jobqueue = pytest.importorskip("dask_jobqueue")
    with jobqueue.SLURMCluster(
        cores=8,
        processes=8,
        memory="16GB",
        walltime="04:00:00",
        job_extra_directives=["--output=dask-worker-%j.out"],
        scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    ) as slurm:
        script = slurm.job_script()
        assert slurm.scheduler_address.startswith(LOOPBACK)
    lines = script.splitlines()
    for directive in (
        "--cpus-per-task=8",
        "--mem=15G",
        "-t 04:00:00",
        "--output=dask-worker-%j.out",
    ):
        assert f"#SBATCH {directive}" in lines, script
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert "--nworkers 8" in worker and "--nthreads 1" in worker, worker  # 8 runs of 1 thread
    assert "--memory-limit 1.86GiB" in worker, worker  # 16 GB / 8
