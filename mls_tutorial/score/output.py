"""Score's own files in ``OUT``: a manifest of what it wrote, replaced as a whole, nothing else.

``OUT/.score-manifest.json`` lists every file ``score`` wrote there with its SHA-256. A re-score
into the same ``OUT`` replaces exactly those files and leaves every other file (the user's notes,
sub-folders) byte for byte. The new files are staged in a hidden folder inside ``OUT`` and moved
into place at the end, with Ctrl-C held back during the moves; a failure or an interrupt before
or during them (the moves are then undone) leaves ``OUT`` as it was. ``OUT`` may be new, empty, or an earlier score's output
(with a manifest, or one written before manifests: ``metrics.json`` with a ``score`` key); a
non-empty folder that no score wrote is refused, and so is a file of score's that was edited
since (its bytes differ from the manifest): neither is ever overwritten.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from mls_tutorial.files import sha256
from mls_tutorial.score.layouts import ScoreInputError

MANIFEST = ".score-manifest.json"
_STAGE, _OLD = ".score-new-", ".score-old-"


def _listing(out: Path, names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def previous_outputs(out: Path, legacy_names: Iterable[str]) -> dict[str, str | None]:
    """Score's files already in ``out`` (name -> SHA-256, None when unknown); raises
    ``ScoreInputError`` when ``out`` may not be written (see the module docstring)."""
    if not out.exists():
        return {}
    if not out.is_dir():
        raise ScoreInputError(f"--out {out} exists and is not a folder")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            files = {str(k): (None if v is None else str(v)) for k, v in files.items()}
            if any(Path(n).name != n or n.startswith(".") for n in files):
                raise ValueError("a listed name is not a plain file name")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ScoreInputError(
                f"--out {out}: its {MANIFEST} (the list of files score wrote) is unreadable "
                f"({err}); move it away to let score treat the folder as not its own"
            ) from err
    elif _legacy_score_output(out):
        files = dict.fromkeys(n for n in legacy_names if (out / n).is_file())
    else:
        entries = [p.name for p in out.iterdir()]
        if entries:
            raise ScoreInputError(
                f"--out {out} is a non-empty folder that no earlier `score` wrote (it holds "
                f"{_listing(out, entries)}): choose a new or empty folder; score never writes "
                "among files it did not write"
            )
        return {}
    edited = [n for n, h in files.items() if h and (out / n).is_file() and sha256(out / n) != h]
    if edited:
        raise ScoreInputError(
            f"--out {out}: {_listing(out, edited)} changed since score wrote it; score does not "
            "overwrite an edited file: move it away (or choose another --out)"
        )
    return {n: h for n, h in files.items() if (out / n).exists()}


def _legacy_score_output(out: Path) -> bool:
    try:
        return "score" in json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def stage_folder(out: Path) -> Path:
    """A new hidden folder inside ``out`` (created if needed) to write the new files into."""
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f"{_STAGE}{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    return stage


@contextlib.contextmanager
def _sigint_held():
    """Hold Ctrl-C back (main thread): the block gets a list that fills when one arrives."""
    caught: list = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)


def publish(stage: Path, out: Path, previous: dict[str, str | None]) -> list[str]:
    """Replace score's ``previous`` files in ``out`` by every file of ``stage``, write the
    manifest, remove ``stage``. All or nothing: on any error the old files are put back."""
    new = sorted(p.name for p in stage.iterdir() if p.is_file())
    files = {name: sha256(stage / name) for name in new}
    text = json.dumps({"written_by": "mls-tutorial score", "files": files}, indent=2)
    (stage / MANIFEST).write_text(text + "\n")
    old_dir = out / f"{_OLD}{uuid.uuid4().hex[:8]}"
    moved_old, moved_new = [], []
    with _sigint_held() as caught:
        try:
            old_dir.mkdir()
            for name in [*previous, MANIFEST]:
                if (out / name).exists():
                    (out / name).rename(old_dir / name)
                    moved_old.append(name)
            for name in [*new, MANIFEST]:
                (stage / name).rename(out / name)
                moved_new.append(name)
            if caught:  # Ctrl-C during the moves: undo them, OUT stays as it was
                raise KeyboardInterrupt
        except BaseException:
            for name in moved_new:
                (out / name).rename(stage / name)
            for name in moved_old:
                (old_dir / name).rename(out / name)
            raise
        finally:
            shutil.rmtree(old_dir, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)
    return new


def discard(stage: Path, out: Path, created: bool) -> None:
    """Remove the staging folder (and ``out`` itself when this run created it and it is empty)."""
    shutil.rmtree(stage, ignore_errors=True)
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()
