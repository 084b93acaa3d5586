"""One dataset per process: ``cached_data(name, params)`` builds a ``DataBundle`` once, so the
runs a process trains one after another (a sweep, a notebook) share it.

Only the last dataset asked for is kept (a sweep over two datasets rebuilds when it switches).
``runs.get_data(config)`` calls it with a normalised run config's ``data`` and ``data_params``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_CACHE: dict[str, Any] = {}


def cached_data(name: str, params: Mapping[str, Any]):
    """``build_data(name, **params)``, built once per process (the last one is kept)."""
    from mls_tutorial.data import build_data

    key = json.dumps([name, params], sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = build_data(name, **params)
    return _CACHE[key]
