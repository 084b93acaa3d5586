"""Shipped runs: the course's trained runs as package data, found by config, proven by retraining.

The store ``mls_tutorial/shipped_runs/`` holds ``manifest.json`` and one set folder
``set-<date>/`` with a folder per run: ``config.json``, ``metrics.json``, ``history.json``,
``example.npz`` and ``weights.pt`` (the kept weights as a state dict; no optimizer state; a
temperature-scaled run names its base run's weights instead of copying them). The manifest lists
every run (key, config, sha256 and size of each file, Dice/ECE, threads and seconds) and how the
set was made (versions, device, date, command). ``load_or_train`` copies a shipped run whose
normalised config equals the requested one into the run root (``find``, ``copy_into``).

Making and proving the set (``rebuild``, ``verify``: training) is ``mls_tutorial.shipping``, a
layer above: this module knows nothing of training.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mls_tutorial.files import sha256, write_json
from mls_tutorial.runs.config import normalize_config, run_key, run_name
from mls_tutorial.runs.folder import (
    CONFIG_FILE,
    EXAMPLE_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    SHIPPED_FILE,
    WEIGHTS_FILE,
    move_aside,
)

#: where the shipped runs live; the environment variable points elsewhere (tests, a mirror)
STORE_ENV = "MLS_TUTORIAL_SHIPPED_DIR"
DEFAULT_STORE = Path(__file__).resolve().parents[1] / "shipped_runs"
MANIFEST = "manifest.json"
FILES = (CONFIG_FILE, METRICS_FILE, HISTORY_FILE, EXAMPLE_FILE, WEIGHTS_FILE)
SIZE_BUDGET = 15_000_000  # bytes, every shipped file together
REBUILD = "mls-tutorial shipped --rebuild"
#: what a user can do about a broken store: train here instead (seconds to minutes a run), or
#: rebuild the whole set (every run the course reads: tens of minutes)
REMEDY = (
    f"train it here instead with --no-shipped (use_shipped=False), or rebuild the set: {REBUILD}"
)
#: the numbers a verification compares (test set, then the validation numbers)
COMPARED = ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier", "tce")


class ShippedRunError(ValueError):
    """A shipped file is missing or differs from its manifest sha256."""


def store() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


def manifest(root: Path | None = None) -> dict[str, Any]:
    """The store's manifest (``{"runs": []}`` when nothing is shipped)."""
    path = (root or store()) / MANIFEST
    if not path.is_file():
        return {"runs": []}
    return _read_manifest(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_manifest(path: str, _mtime: int) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShippedRunError(f"{path} is unreadable ({exc}); {REMEDY}") from exc


def find(config: dict[str, Any], root: Path | None = None) -> dict[str, Any] | None:
    """The manifest entry whose normalised config equals ``config``'s, else None.

    An unreadable manifest stops only the configs the store holds a folder for (their files
    cannot be checked): ``ShippedRunError``; for any other config it warns and returns None.
    """
    cfg = normalize_config(config)
    key = run_key(cfg)
    try:
        man = manifest(root)
    except ShippedRunError as exc:
        if any((root or store()).glob(f"set-*/{run_name(cfg)}")):
            raise
        warnings.warn(f"{exc} (not a shipped run: {run_name(cfg)} is trained)", stacklevel=2)
        return None
    for entry in man["runs"]:
        if entry["key"] == key and entry["config"] == cfg:
            return entry
    return None


def _source_files(entry: dict[str, Any], root: Path) -> dict[str, Path]:
    """Each shipped file of ``entry``, checked against its manifest sha256."""
    man = manifest(root)
    folder = root / man["set"] / entry["name"]
    sources = {name: folder / name for name in entry["files"]}
    if entry.get("weights_of"):
        sources[WEIGHTS_FILE] = root / man["set"] / entry["weights_of"] / WEIGHTS_FILE
    for name, path in sources.items():
        want = entry["files"].get(name) or entry_named(man, entry["weights_of"])["files"][name]
        if not path.is_file():
            raise ShippedRunError(f"shipped file missing: {path}; {REMEDY}")
        if sha256(path) != want["sha256"]:
            raise ShippedRunError(
                f"shipped file {path} does not match its sha256 in {root / MANIFEST}: "
                f"corrupt or edited; {REMEDY}"
            )
    return sources


def entry_named(man: dict[str, Any], name: str) -> dict[str, Any]:
    """The manifest ``man``'s entry for the run ``name``."""
    return next(e for e in man["runs"] if e["name"] == name)


def copy_into(entry: dict[str, Any], path: Path, say: Callable[[str], None] = print) -> None:
    """Copy a shipped run into the run folder ``path`` (checked, written aside, then renamed).

    A folder already at ``path`` (an unfinished or refused run) is moved to ``.replaced/``
    first, and that is said: nothing in the run root is overwritten silently."""
    root = store()
    sources = _source_files(entry, root)
    path = Path(path)
    tmp = path.parent / f".{path.name}.shipped-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for name, src in sources.items():
            shutil.copyfile(src, tmp / name)
        write_json({**entry, "made": manifest(root).get("made", {})}, tmp / SHIPPED_FILE)
        if path.exists():
            move_aside(path, say)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"[shipped] {entry['label']}: copied the project's run to {path}")


# ------------------------------------------------------------------------------------ listing


def rows(root: Path | None = None) -> list[dict[str, Any]]:
    """One row per shipped run: name, loss, knobs, seed, Dice, foreground ECE, size."""
    return [
        {
            "name": e["name"],
            "label": e["label"],
            "loss": e["config"]["loss"],
            "knobs": e["config"]["loss_kwargs"],
            "seed": e["config"]["seed"],
            "dice": e["dice"],
            "ece": e["ece"],
            "bytes": sum(f["bytes"] for f in e["files"].values()),
        }
        for e in manifest(root)["runs"]
    ]


def listing(root: Path | None = None) -> str:
    man = manifest(root)
    if not man["runs"]:
        return f"no shipped runs in {root or store()}; make them: {REBUILD}"
    lines = [f"{'name':<34} {'run':<22} {'seed':>4} {'Dice':>6} {'fg ECE':>7} {'kB':>6}"]
    for r in rows(root):
        lines.append(
            f"{r['name']:<34} {r['label']:<22} {r['seed']:>4} {r['dice']:>6.3f} "
            f"{r['ece']:>7.4f} {r['bytes'] / 1e3:>6.0f}"
        )
    total = sum(r["bytes"] for r in rows(root))
    made = man.get("made", {})
    lines.append(
        f"{len(man['runs'])} runs, {total / 1e6:.2f} MB; made {made.get('date', '?')} on "
        f"{made.get('device', '?')} with torch {made.get('torch', '?')} by `{REBUILD}`"
    )
    return "\n".join(lines)
