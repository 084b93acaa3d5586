"""Sweeps on a Dask cluster: connect to a scheduler, size each run's threads, check the run root.

``train_configs(configs, root, executor=client.get_executor())`` trains one run per task on any
``concurrent.futures.Executor``; this module holds what is specific to Dask (``distributed``,
an optional dependency: ``pip install "mls-tutorial[dask]"``). Nothing here imports Dask until
it is called, so ``import mls_tutorial`` never does.

- ``dask_executor(address | scheduler_file)``: a client of a running scheduler, as an executor.
- ``threads_on_this_worker()``: torch threads for a run on the current Dask worker,
  ``max(1, cores // slots)`` where ``cores`` is what the worker process may use and ``slots`` the
  ``nthreads`` of every worker on the same host (the runs that can train there at once), so
  runs sharing a machine never oversubscribe its cores.
- The run root must be one folder every worker sees (a shared file system): the client writes a
  marker in it (``root_marker``), and every connected worker (``check_root_on_workers``), then
  the first task on any worker (``check_shared_root``), reads it and writes and reads back its
  own, before any run starts; ``SharedRootError`` names the folder and the worker otherwise.

This module imports neither torch nor Dask at import time (a worker checks the root quickly).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

INSTALL_HINT = 'pip install "mls-tutorial[dask]"'


class SharedRootError(RuntimeError):
    """A worker cannot see the sweep's run root (it must be one folder every worker sees)."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError(f"a Dask cluster needs the distributed package: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def dask_executor(
    address: str | None = None, scheduler_file: str | Path | None = None, timeout: float = 30
) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor on a running Dask scheduler (closed on exit).

    Give ``address`` (``tcp://host:port``) or ``scheduler_file`` (the JSON file
    ``dask scheduler --scheduler-file PATH`` writes), not both.
    """
    if (address is None) == (scheduler_file is None):
        raise ValueError("give a scheduler address or a scheduler file (exactly one)")
    if scheduler_file is not None and not Path(scheduler_file).is_file():
        raise FileNotFoundError(
            f"scheduler file not found: {scheduler_file} (start one with "
            f"`dask scheduler --scheduler-file {scheduler_file}`)"
        )
    distributed = _distributed()
    where = address or f"the scheduler in {scheduler_file}"
    try:
        client = distributed.Client(
            address=address,
            scheduler_file=None if scheduler_file is None else str(scheduler_file),
            timeout=timeout,
            set_as_default=False,
        )
    except OSError as exc:  # includes TimeoutError: nothing answered at that address
        raise ConnectionError(f"cannot reach the Dask scheduler at {where}: {exc}") from None
    with client:
        yield client.get_executor()


def dask_client(executor: Executor):
    """The ``distributed.Client`` behind a Dask executor (``client.get_executor()``), else None."""
    if not type(executor).__module__.startswith("distributed"):
        return None
    return getattr(executor, "_client", None)


def current_worker():
    """The Dask worker running this code, or None (not in a task, or Dask not loaded)."""
    if "distributed" not in sys.modules:  # a Dask worker has imported it already
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def worker_label() -> str:
    """Who is running this code: the Dask worker's address, else host and process id."""
    worker = current_worker()
    if worker is not None:
        return f"Dask worker {worker.address}"
    import socket

    return f"process {os.getpid()} on {socket.gethostname()}"


def threads_on_this_worker() -> int | None:
    """Torch threads for one run on the current Dask worker (None outside a Dask task).

    ``max(1, cores // slots)``: ``cores`` usable by this process (CPU affinity and cgroup
    limits, as Dask counts them), ``slots`` the summed ``nthreads`` of the workers on this host.
    """
    worker = current_worker()
    if worker is None:
        return None
    from dask.system import CPU_COUNT
    from distributed import get_client
    from distributed.comm import get_address_host

    host = get_address_host(worker.address)
    infos = get_client().scheduler_info(n_workers=-1)["workers"].values()
    slots = sum(int(w["nthreads"]) for w in infos if w.get("host") == host)
    return max(1, CPU_COUNT // max(slots, worker.state.nthreads, 1))


#: where a sweep leaves its marker (``<root>/.sweep-check/<token>/``; hidden: find_runs skips it)
MARKER_DIR = ".sweep-check"
_CHECKED: set[tuple[str, str]] = set()  # (root, token) already checked in this process


def check_shared_root(root: str, token: str, where: str | None = None) -> str:
    """Check that this process sees the sweep's run root; returns who checked (``where``).

    Reads the client's marker ``<root>/.sweep-check/<token>/client`` (it must hold ``token``:
    the same folder, not one of the same name), then writes and reads back a marker of its own.
    ``SharedRootError`` names the folder and the worker otherwise. Once per process and sweep.
    """
    where = where or worker_label()
    if (root, token) in _CHECKED:
        return where
    folder = Path(root) / MARKER_DIR / token
    try:
        seen = (folder / "client").read_text()
    except OSError as exc:
        seen = f"unreadable ({exc.strerror or exc})"
    if seen != token:
        found = seen if seen.startswith("unreadable") else "another sweep's"
        raise SharedRootError(
            f"{where} does not see the run root {root}: the marker this sweep wrote there is "
            f"{found}. The run root must be one folder every worker sees at the same path (a "
            "shared file system); no run was started on this worker."
        )
    mine = folder / f"worker-{uuid.uuid4().hex}"
    try:
        mine.write_text(where)
        ok = mine.read_text() == where
        mine.unlink()
    except OSError as exc:
        raise SharedRootError(f"{where} cannot write in the run root {root}: {exc}") from None
    if not ok:
        raise SharedRootError(f"{where} read back another marker than it wrote in {root}")
    _CHECKED.add((root, token))
    return where


@contextlib.contextmanager
def root_marker(root: Path) -> Iterator[str]:
    """Write this sweep's marker in ``root`` (atomically); remove it when the sweep ends."""
    token = uuid.uuid4().hex
    folder = root / MARKER_DIR / token
    folder.mkdir(parents=True)
    tmp = folder / ".client.tmp"
    tmp.write_text(token)
    tmp.replace(folder / "client")
    try:
        yield token
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another sweep may still use it
            folder.parent.rmdir()


def check_root_on_workers(executor: Executor, root: str, token: str) -> None:
    """Every worker connected now reads the sweep's marker in ``root`` (Dask executors only).

    Raises ``SharedRootError`` naming the folder and every worker that cannot see it. Workers
    that join later check on their first task instead (``sweep._train_one``).
    """
    client = dask_client(executor)
    if client is None:
        return
    answers = client.run(_check_on_worker, root, token, on_error="return")
    bad = [str(a) for a in answers.values() if isinstance(a, BaseException)]
    if bad:
        raise SharedRootError("\n".join(bad))


def _check_on_worker(root: str, token: str, dask_worker) -> str:
    """``check_shared_root`` as ``Client.run`` calls it (Dask passes ``dask_worker``)."""
    return check_shared_root(root, token, where=f"Dask worker {dask_worker.address}")
