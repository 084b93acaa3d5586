"""Atomic files: JSON (or any bytes) written to a temp file beside the target, then renamed.

A reader sees the old complete file or the new complete file, never a torn one, even if the
process dies mid-write (``os.replace`` is atomic within a folder). Imports nothing heavy: every
layer writes through it (run folders, checkpoints, tables, score outputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write) -> None:
    """Call ``write(binary_file)`` on a temp file next to ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode honours the umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    """Arrays, tensors and NumPy scalars as Python lists and numbers; paths as text."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as indented JSON atomically (NaN is written as ``NaN``, as Python reads it)."""
    text = json.dumps(obj, indent=2, default=_json_default)
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def read_json(path: str | Path) -> Any:
    """The JSON document at ``path``; ``FileNotFoundError`` or ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
