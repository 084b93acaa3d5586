"""Sweeps: a grid of configs per method family, trained by parallel worker processes.

A **grid** names a loss and the values of its knobs; each ``KEY=V1,V2`` multiplies the grid::

    parse_grid("ls:alpha=0.03,0.1,0.3")        -> ("ls", {"alpha": [0.03, 0.1, 0.3]})
    parse_grid("mbls:margin=3,5,10:alpha=0.1")  -> 3 configs
    parse_grid("ce")                            -> the loss with its defaults

A **family** is what one selection rule chooses within (``family``): the loss name, except MbLS
with ``margin=0``, which is the linear (equality) penalty ``linear``, and CE + temperature scaling
``ce_ts``.

``train_configs(configs, root, workers=N)`` trains every config not already in ``root``; with
``N > 1`` in ``N`` processes of ``cores // N`` threads each (no oversubscription). Every run
folder has one writer (``runs.run_lock``), so two sweeps, or a sweep and a notebook, that share a
root never train the same run twice: the second waits and loads it.

``train_ladder(config, [1000, 2000, 4000], root)`` trains one config for several lengths at the
cost of the longest: each longer run resumes from the previous one's last checkpoint, which is
what training it alone would have done (the engine's resume contract).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from mls_tutorial.runs import Run, load_or_train, load_run, normalize_config, run_name
from mls_tutorial.train.checkpoint import CHECKPOINT_NAME


class SweepError(RuntimeError):
    """Some runs of a sweep failed (the others finished and are kept)."""


def parse_grid(text: str) -> tuple[str, dict[str, list[Any]]]:
    """``LOSS[:KEY=V1,V2,...]...`` -> ``(loss, {key: [values]})``; values parsed as JSON."""
    from mls_tutorial.runs import loss_defaults

    loss, *parts = text.split(":")
    loss = loss.strip()
    try:
        defaults = loss_defaults(loss)
    except ValueError as exc:
        raise ValueError(f"grid {text!r}: {exc}") from None
    knobs: dict[str, list[Any]] = {}
    for part in parts:
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or not key or not values:
            raise ValueError(f"grid {text!r}: expected KEY=V1,V2,... after ':', got {part!r}")
        if key not in defaults:
            raise ValueError(
                f"grid {text!r}: {loss} has no parameter {key!r}; valid: {sorted(defaults)}"
            )
        if key in knobs:
            raise ValueError(f"grid {text!r}: {key!r} is given twice")
        knobs[key] = [_value(v, text) for v in values.split(",")]
    return loss, knobs


def _value(raw: str, text: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError(f"grid {text!r}: {raw!r} is not a number or JSON value") from None


def expand_grid(loss: str, knobs: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the knob values: a list of ``loss_kwargs``."""
    keys = list(knobs)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*knobs.values())]


def family(config: dict[str, Any]) -> str:
    """The method family of a run config (what a selection rule chooses within)."""
    if config.get("temperature_scaling"):
        return f"{config['loss']}_ts"
    if config["loss"] == "mbls" and float(config.get("loss_kwargs", {}).get("margin", 10.0)) == 0:
        return "linear"
    return config["loss"]


def _threads_per_worker(workers: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // workers)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _train_one(config: dict[str, Any], root: str, device: str | None, **load_kwargs) -> str:
    run = load_or_train(config, root, device=device, progress=False, **load_kwargs)
    return str(run.path)


def train_configs(
    configs: Sequence[dict[str, Any]],
    root: str | Path,
    *,
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
    **load_kwargs: Any,
) -> list[Run]:
    """Train (or load) every config under ``root``; the runs, in the order of ``configs``.

    ``load_kwargs`` go to every ``load_or_train`` call (e.g. ``use_shipped=False``).

    ``workers > 1``: that many processes (``spawn``), each with ``cores // workers`` threads;
    a failed run is reported after the others finish (finished runs are never lost).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    configs = [normalize_config(c) for c in configs]  # every config checked before any run
    unique = list({run_name(c): c for c in configs}.values())
    root = Path(root)
    if workers == 1:
        done = {
            run_name(c): load_or_train(
                c, root, device=device, progress=progress, force=force, log=log, **load_kwargs
            )
            for c in unique
        }
        return [done[run_name(c)] for c in configs]
    from mls_tutorial.train import distributed as dist_utils

    if dist_utils.is_distributed():
        raise ValueError("workers > 1 cannot be combined with torchrun (DDP): use one or the other")
    if force:
        raise ValueError("force=True with workers > 1 is not supported: retrain with workers=1")
    return _train_parallel(configs, unique, root, workers, device, progress, log, load_kwargs)


def _train_parallel(configs, unique, root, workers, device, progress, log, load_kwargs):
    import multiprocessing

    say = log or (lambda _msg: None)
    threads = _threads_per_worker(workers)
    say(f"[sweep] {len(unique)} runs on {workers} workers x {threads} thread(s) -> {root}")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(unique), desc="sweep", unit="run", dynamic_ncols=True)
    paths, failed = {}, []
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        futures = {
            pool.submit(_train_one, c, str(root), device, **load_kwargs): run_name(c)
            for c in unique
        }
        for fut in as_completed(futures):
            name = futures[fut]
            try:
                paths[name] = fut.result()
            except Exception as exc:  # noqa: BLE001 - reported below, after the other runs
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
                say(f"[failed] {name}: {exc}")
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if failed:
        raise SweepError(f"{len(failed)} of {len(unique)} runs failed:\n" + "\n".join(failed))
    runs = {name: load_run(path) for name, path in paths.items()}
    return [runs[run_name(c)] for c in configs]


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
    from mls_tutorial.runs import CONFIG_FILE, METRICS_FILE, run_lock
    from mls_tutorial.train.checkpoint import read_json, write_json

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
