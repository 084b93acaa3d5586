"""Sweeps: many run configs trained in parallel (local processes or Dask).

The configs come from grids (``parse_grid``, ``expand_grid``: ``mls_tutorial.grid``, re-exported
here) and are grouped by family (``family``: ``mls_tutorial.registry``).

``train_configs(configs, root, workers=N)`` trains every config not already in ``root``; with
``N > 1`` in ``N`` processes of ``cores // N`` threads each (no oversubscription).
``train_configs(configs, root, executor=client.get_executor())`` sends one task per run to any
``concurrent.futures.Executor``, a Dask cluster's included (``mls_tutorial.cluster``); the local
pool is one such executor. Every run folder has one writer (``runs.run_lock``, an OS lock that
dies with its holder), so two sweeps, or a sweep and a notebook, that share a root never train
the same run twice: the second waits and loads it; a run whose worker died resumes from its
last checkpoint wherever the task is retried. A finished task may run again (Dask recomputes
every result that lived only in a dead worker's memory): it finds ``metrics.json`` and loads
the folder, never trains or writes it again.

``train_ladder(config, [1000, 2000, 4000], root)`` trains one config for several lengths at the
cost of the longest: each longer run resumes from the previous one's last checkpoint, which is
what training it alone would have done (the engine's resume contract).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from mls_tutorial.cluster import SharedRootError
from mls_tutorial.grid import expand_grid, parse_grid
from mls_tutorial.registry import family
from mls_tutorial.runs import Run, load_or_train, load_run, normalize_config, run_name
from mls_tutorial.train.checkpoint import CHECKPOINT_NAME

__all__ = [
    "SweepError",
    "expand_grid",
    "family",
    "parse_grid",
    "train_configs",
    "train_ladder",
]


class SweepError(RuntimeError):
    """Some runs of a sweep failed (the others finished and are kept)."""


# ------------------------------------------------------------------------------- one task


def _use_threads(threads: int | None) -> int:
    """Set torch's thread count (None: leave it); the count now in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # can only be set once per process
            torch.set_num_interop_threads(1)
    return torch.get_num_threads()


def _train_one(
    config: dict[str, Any],
    root: str,
    token: str,
    threads: int | None,
    device: str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """One task: check the root, set the threads, ``load_or_train``; its log lines come back."""
    from mls_tutorial.cluster import check_shared_root, threads_on_this_worker

    where = check_shared_root(root, token)
    used = _use_threads(threads if threads is not None else threads_on_this_worker())
    lines: list[str] = []
    run = load_or_train(config, root, device=device, progress=False, log=lines.append, **options)
    return {
        "path": str(run.path),
        "cached": run.cached,
        "log": lines,
        "worker": where,
        "threads": used,
    }


# ------------------------------------------------------------------------------ the sweep


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _threads_per_worker(workers: int) -> int:
    return max(1, _cores() // workers)


def _check_count(name: str, value: Any, none_ok: bool = False) -> None:
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_options(options: dict[str, Any]) -> None:
    """Extra keywords must be ``load_or_train``'s (checked before any run starts)."""
    own = {"config", "root", "device", "progress", "force", "log"}
    allowed = set(inspect.signature(load_or_train).parameters) - own
    bad = sorted(set(options) - allowed)
    if bad:
        raise TypeError(
            f"train_configs got unknown keyword argument(s) {bad}; extra keywords go to "
            f"load_or_train: {sorted(allowed)}"
        )


def train_configs(
    configs: Sequence[dict[str, Any]],
    root: str | Path,
    *,
    executor: Executor | None = None,
    workers: int = 1,
    threads_per_run: int | None = None,
    device: str | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
    **options: Any,
) -> list[Run]:
    """Train (or load) every config under ``root``; the runs, in the order of ``configs``.

    - ``executor``: any ``concurrent.futures.Executor``, e.g. a Dask client's
      ``client.get_executor()``: one task per unique config. On a Dask worker a run uses
      ``cores // slots`` torch threads (``cluster.threads_on_this_worker``).
    - ``workers > 1`` (no executor): a local pool of that many ``spawn`` processes, each run with
      ``cores // workers`` threads; the same code path as an executor.
    - ``workers == 1`` (no executor): one after the other in this process.
    - ``threads_per_run``: torch threads per run, instead of the rules above.
    - ``options``: more keyword arguments of ``load_or_train`` (e.g. ``figures=False``).

    With an executor or a pool, ``root`` must be a folder every worker sees: each worker checks
    it before its first run (``check_shared_root``). A failed run is reported after the others
    finish (``SweepError``); finished runs are never lost.
    """
    _check_count("workers", workers)
    _check_count("threads_per_run", threads_per_run, none_ok=True)
    _check_options(options)
    if executor is not None and workers != 1:
        raise ValueError("give workers (a local pool) or an executor, not both")
    configs = [normalize_config(c) for c in configs]  # every config checked before any run
    unique = list({run_name(c): c for c in configs}.values())
    if executor is None and workers == 1:
        return _train_here(
            configs, unique, Path(root), threads_per_run, device, progress, force, log, options
        )
    from mls_tutorial.train import distributed as dist_utils

    if dist_utils.is_distributed():
        raise ValueError(
            "parallel sweeps cannot be combined with torchrun (DDP): use one or the other"
        )
    if force:
        raise ValueError("force=True needs workers=1 and no executor: retrain one by one")
    root = Path(os.path.abspath(root))  # as the workers will see it (symlinks left to them)
    task = functools.partial(_train_one, device=device, options=options)
    if executor is not None:
        return _train_on(executor, configs, unique, root, task, threads_per_run, progress, log)
    threads = threads_per_run or _threads_per_worker(workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        return _train_on(pool, configs, unique, root, task, threads, progress, log, workers)
    finally:
        pool.shutdown(cancel_futures=True)


def _train_here(configs, unique, root, threads, device, progress, force, log, options) -> list[Run]:
    """``workers=1``: every run in this process, one after the other."""
    import torch

    before = torch.get_num_threads()
    _use_threads(threads)
    try:
        done = {
            run_name(c): load_or_train(
                c, root, device=device, progress=progress, force=force, log=log, **options
            )
            for c in unique
        }
    finally:
        torch.set_num_threads(before)
    return [done[run_name(c)] for c in configs]


def _describe(executor: Executor, threads: int | None, workers: int | None) -> str:
    from mls_tutorial.cluster import dask_client

    each = "threads from each worker's cores" if threads is None else f"{threads} thread(s) each"
    if workers is not None:
        return f"{workers} local processes, {each}"
    client = dask_client(executor)
    if client is None:
        return f"{type(executor).__name__}, {each}"
    info = client.scheduler_info(n_workers=-1)["workers"].values()
    slots = sum(int(w["nthreads"]) for w in info)
    return (
        f"the Dask cluster at {client.scheduler.address} ({len(info)} workers, {slots} runs at "
        f"once), {each}"
    )


def _train_on(executor, configs, unique, root, task, threads, progress, log, workers=None):
    """One task per unique config on ``executor``; runs reloaded here, in ``configs`` order."""
    from mls_tutorial.cluster import check_root_on_workers, root_marker

    say = log or (lambda _msg: None)
    root.mkdir(parents=True, exist_ok=True)
    with root_marker(root) as token:
        check_root_on_workers(executor, str(root), token)
        say(f"[sweep] {len(unique)} runs on {_describe(executor, threads, workers)} -> {root}")
        futures = {
            executor.submit(task, c, str(root), token, threads): (run_name(c), c) for c in unique
        }
        try:
            results, failed = _collect(futures, progress, say)
        finally:
            for fut in futures:  # after an error: nothing left queued on the cluster
                fut.cancel()
    if failed:
        raise SweepError(f"{len(failed)} of {len(unique)} runs failed:\n" + "\n".join(failed))
    runs = {}
    for name, result in results.items():
        runs[name] = load_run(result["path"])
        runs[name].cached = result["cached"]
    return [runs[run_name(c)] for c in configs]


def _collect(futures, progress, say) -> tuple[dict[str, dict], list[str]]:
    """Results as tasks finish (their log lines passed to ``say``); failures listed, not raised,
    except a worker that cannot see the root (``SharedRootError``: the sweep stops)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(futures), desc="sweep", unit="run", dynamic_ncols=True)
    results, failed = {}, []
    try:
        for fut in as_completed(futures):
            name, cfg = futures[fut]
            try:
                result = fut.result()
            except SharedRootError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported after the other runs
                what = f"{name} (loss {cfg['loss']}, {cfg['loss_kwargs']}, seed {cfg['seed']})"
                failed.append(f"{what}: {type(exc).__name__}: {exc}")
                say(f"[failed] {what}: {type(exc).__name__}: {exc}")
            else:
                results[name] = result
                for line in result["log"]:
                    say(line)
                if not result["cached"]:
                    say(f"[done] {name}: {result['worker']}, {result['threads']} thread(s)")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results, failed


def train_ladder(
    config: dict[str, Any],
    lengths: Sequence[int],
    root: str | Path,
    *,
    device: str | None = None,
    progress: bool = False,
    figures: bool = False,
    log: Callable[[str], None] | None = print,
    before_rung: Callable[[int, int], bool] | None = None,
) -> list[Run]:
    """``config`` trained for each of ``lengths`` (increasing iterations), shortest first.

    The first rung trains from scratch; each longer rung starts from the previous rung's last
    checkpoint (copied into its own folder, whose ``config.json`` says its own length) and
    resumes: weights, optimizer, scheduler, RNG, history and an adaptive loss's state continue
    exactly as in one uninterrupted run (bit for bit on CPU), so a ladder costs its longest run.
    Every length but the last must be a multiple of ``val_every``. Cached rungs are loaded;
    shipped runs (``runs.shipped``) are not used: they hold weights, not the optimizer state a
    longer rung continues from.
    ``before_rung(iterations, start)``, called before a rung that must be trained (from
    ``start`` iterations), may return False to stop the ladder there (e.g. at a deadline); the
    rungs reached are returned.
    """
    from mls_tutorial.files import read_json, write_json
    from mls_tutorial.runs import CONFIG_FILE, METRICS_FILE, run_lock

    lengths = list(lengths)
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be ints >= 1, got {lengths!r}")
    if any(b <= a for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError(f"lengths must increase strictly, got {lengths!r}")
    every = normalize_config(config)["val_every"]
    if every and any(n % every for n in lengths[:-1]):
        raise ValueError(
            f"every length but the last must be a multiple of val_every={every} (a run "
            f"validates at its end, an uninterrupted one would not), got {lengths!r}"
        )
    if normalize_config(config)["temperature_scaling"]:
        raise ValueError(
            "train_ladder trains without temperature scaling: load_or_train each rung's "
            "temperature_scaling=True config afterwards"
        )
    root = Path(root)
    say = log or (lambda _msg: None)
    runs: list[Run] = []
    for n in lengths:
        cfg = normalize_config({**config, "iterations": n})
        path = root / run_name(cfg)
        if not (path / METRICS_FILE).is_file():
            start = runs[-1].config["iterations"] if runs else 0
            if before_rung is not None and not before_rung(n, start):
                break
            if runs:
                with run_lock(root, path.name, say):
                    if (
                        not (path / METRICS_FILE).is_file()
                        and not (path / CHECKPOINT_NAME).exists()
                    ):
                        if (path / CONFIG_FILE).is_file() and read_json(path / CONFIG_FILE) != cfg:
                            raise ValueError(f"{path} holds a different config; refusing to use it")
                        path.mkdir(parents=True, exist_ok=True)
                        write_json(cfg, path / CONFIG_FILE)
                        tmp = path / f".{CHECKPOINT_NAME}.copy"
                        shutil.copyfile(runs[-1].path / CHECKPOINT_NAME, tmp)
                        tmp.replace(path / CHECKPOINT_NAME)
                        say(f"[ladder] {path.name} continues {runs[-1].name} from {start}")
        runs.append(
            load_or_train(
                cfg,
                root,
                device=device,
                progress=progress,
                figures=figures,
                use_shipped=False,  # a shipped copy has weights, not the optimizer to go on
                log=log,
            )
        )
    return runs
