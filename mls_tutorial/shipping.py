"""Making and proving the shipped runs: ``mls-tutorial shipped --rebuild`` and ``--verify N``.

``rebuild`` trains every config the course reads (``course_configs``) from scratch in a
temporary root, copies the shipped files into a new set folder, and only then replaces
``manifest.json`` (one atomic rename): an interrupted rebuild leaves the previous set whole.
``verify`` retrains shipped runs in a temporary root, on as many threads as each was made with,
and compares Dice, ECE and every other headline number with what was shipped.
"""

from __future__ import annotations

import contextlib
import datetime
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mls_tutorial.files import read_json, write_json
from mls_tutorial.runs import shipped
from mls_tutorial.runs.folder import WEIGHTS_FILE, Run
from mls_tutorial.runs.orchestration import load_or_train
from mls_tutorial.sweep import train_configs


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises ``SystemExit(143)`` (as Ctrl-C raises KeyboardInterrupt), so
    the ``with`` blocks around it remove their temporary folders. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum, _frame):
        print("terminated: removing the temporary run folder", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _made(seconds: float, runs: Sequence[Run]) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    from mls_tutorial import __version__

    return {
        "mls_tutorial": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "device": sorted({r.metrics["runtime"]["device"] for r in runs}),
        "threads": sorted({r.metrics["runtime"]["threads"] for r in runs}),
        "wall_seconds": round(seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shipped.REBUILD,
    }


def _entry(run: Run, files: dict[str, dict], weights_of: str | None) -> dict[str, Any]:
    return {
        "name": run.name,
        "key": run.key,
        "label": run.label,
        "config": run.config,
        "files": files,
        "weights_of": weights_of,
        "dice": run.metrics["dice"],
        "ece": run.metrics["ece"],
        "gap": run.metrics["gap"],
        "threads": run.metrics["runtime"]["threads"],
        "train_seconds": run.metrics["runtime"]["train_seconds"],
    }


def _write_set(runs: Sequence[Run], folder: Path) -> list[dict[str, Any]]:
    """Copy each run's shipped files into ``folder/<name>/``; the manifest entries."""
    entries, weights = [], {}
    for run in runs:
        sha = shipped.sha256(run.path / WEIGHTS_FILE)
        weights_of = weights.get(sha) if run.config["temperature_scaling"] else None
        weights.setdefault(sha, run.name)
        (folder / run.name).mkdir(parents=True)
        files = {}
        for name in shipped.FILES:
            if name == WEIGHTS_FILE and weights_of:
                continue  # the base run's weights: no second copy
            shutil.copyfile(run.path / name, folder / run.name / name)
            files[name] = {
                "sha256": shipped.sha256(run.path / name),
                "bytes": (run.path / name).stat().st_size,
            }
        entries.append(_entry(run, files, weights_of))
    return entries


def rebuild(
    configs: Sequence[dict[str, Any]] | None = None,
    *,
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train ``configs`` (default: every run the course reads) from scratch and ship them."""
    from mls_tutorial.runs.course import course_configs

    say = log or (lambda _msg: None)
    configs = list(configs) if configs is not None else course_configs()
    root = shipped.store()
    root.mkdir(parents=True, exist_ok=True)
    set_name = "set-" + time.strftime("%Y%m%d-%H%M%S")
    with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="mls-shipped-") as tmp:
        t0 = time.perf_counter()
        runs = train_configs(
            configs, tmp, workers=workers, device=device, progress=progress, log=log,
            use_shipped=False,
        )  # fmt: skip
        runs = _bases_first(runs)
        new = root / f".{set_name}.partial"
        shutil.rmtree(new, ignore_errors=True)
        entries = _write_set(runs, new)
        made = _made(time.perf_counter() - t0, runs)
    total = sum(f["bytes"] for e in entries for f in e["files"].values())
    if total > shipped.SIZE_BUDGET:
        shutil.rmtree(new)
        raise ValueError(f"the shipped set would be {total / 1e6:.1f} MB, over the 15 MB budget")
    new.rename(root / set_name)
    write_json(
        {"set": set_name, "made": {**made, "bytes": total}, "runs": entries},
        root / shipped.MANIFEST,
    )
    for old in root.glob("set-*"):  # the previous sets: no manifest names them any more
        if old.name != set_name:
            shutil.rmtree(old)
    say(f"[shipped] {len(entries)} runs, {total / 1e6:.2f} MB -> {root / set_name}")
    return root / set_name


def _bases_first(runs: Sequence[Run]) -> list[Run]:
    """Unique runs, each temperature-scaled run after the run whose weights it shares."""
    unique = list({r.name: r for r in runs}.values())
    return sorted(unique, key=lambda r: r.config["temperature_scaling"])


def _pick(entries: list[dict], n: int | None, names: Sequence[str] | None, seed: int | None):
    if names:
        known = {e["name"]: e for e in entries}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"not shipped: {missing}; `mls-tutorial shipped` lists the names")
        return [known[n] for n in names]
    if n is None or n < 1:
        raise ValueError(f"verify needs N >= 1 runs or names, got {n!r}")
    return random.Random(seed).sample(entries, min(n, len(entries)))


def verify(
    n: int | None = None,
    *,
    names: Sequence[str] | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[dict[str, Any]]:
    """Retrain ``n`` random shipped runs (or ``names``); per run the shipped and retrained
    numbers, ``max_abs_diff`` over ``shipped.COMPARED`` and whether the weights are bitwise equal.
    The runs are retrained in a temporary folder, removed at the end, on an error, on Ctrl-C
    and on SIGTERM."""
    import torch

    man = shipped.manifest()
    chosen = _pick(man["runs"], n, names, seed)
    results = []
    with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="mls-verify-") as tmp:
        for entry in chosen:
            threads = torch.get_num_threads()
            torch.set_num_threads(int(entry.get("threads") or threads))
            t0 = time.perf_counter()
            try:
                run = load_or_train(
                    entry["config"], tmp, device=device, progress=progress, figures=False,
                    use_shipped=False, log=log,
                )  # fmt: skip
            finally:
                torch.set_num_threads(threads)
            results.append(_compare(entry, run, man, time.perf_counter() - t0))
    return results


def _compare(entry: dict, run: Run, man: dict, seconds: float) -> dict[str, Any]:
    path = Path(shipped.store()) / man["set"] / entry["name"] / "metrics.json"
    was = read_json(path)
    diffs = {
        k: abs(run.metrics[k] - was[k])
        for k in shipped.COMPARED
        if isinstance(was.get(k), int | float) and isinstance(run.metrics.get(k), int | float)
    }
    weights = (
        entry["files"].get(WEIGHTS_FILE)
        or shipped.entry_named(man, entry["weights_of"])["files"][WEIGHTS_FILE]
    )
    return {
        "name": entry["name"],
        "label": entry["label"],
        "seconds": seconds,
        **{f"shipped_{k}": was[k] for k in ("dice", "ece", "gap")},
        **{f"retrained_{k}": run.metrics[k] for k in ("dice", "ece", "gap")},
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_key": max(diffs, key=diffs.get),
        "bitwise_equal_weights": shipped.sha256(run.path / WEIGHTS_FILE) == weights["sha256"],
    }


def verification_table(results: list[dict[str, Any]]) -> str:
    head = f"{'run':<22} {'Dice':>15} {'fg ECE':>17} {'gap':>17} {'max |diff|':>16} {'weights':>9}"
    lines = [head, f"{'':<22} {'shipped / new':>15} {'shipped / new':>17} {'shipped / new':>17}"]
    for r in results:
        lines.append(
            f"{r['label']:<22} {r['shipped_dice']:.4f}/{r['retrained_dice']:.4f} "
            f"{r['shipped_ece']:>8.5f}/{r['retrained_ece']:.5f} "
            f"{r['shipped_gap']:>+8.5f}/{r['retrained_gap']:+.5f} "
            f"{r['max_abs_diff']:>9.2g} ({r['max_abs_diff_key']}) "
            f"{'bitwise' if r['bitwise_equal_weights'] else 'differ':>8}"
        )
    return "\n".join(lines)
