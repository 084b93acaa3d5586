"""Datasets for the tutorial, all returned as one ``DataBundle`` (see ``common``).

    from mls_tutorial.data import build_data
    data = build_data()                      # bundled MNI brain tissue, no download
    data = build_data("synthetic", seed=1)   # tiny shapes for tests
    data = build_data("acdc", root="~/ACDC/database")
    data = build_data("decathlon", root="~/msd", task="Task02_Heart")

``data.phantoms.write_phantoms(root, n, size, seed)`` writes ellipsoid phantoms in the ACDC and
Decathlon layouts (a stand-in for real data). ``DATASETS`` maps each name to its builder; ``build_data(name, **params)`` checks the parameter
names against the builder's signature.
"""

from __future__ import annotations

import inspect

from .acdc import build_acdc
from .common import DataBundle, SliceDataset, Volume
from .decathlon import build_decathlon
from .mni import build_mni
from .synthetic import build_synthetic

DATASETS = {
    "mni": build_mni,
    "synthetic": build_synthetic,
    "acdc": build_acdc,
    "decathlon": build_decathlon,
}


def build_data(name: str = "mni", **params) -> DataBundle:
    """Build the dataset ``name`` (one of ``DATASETS``) with keyword ``params``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; choose one of {sorted(DATASETS)}")
    builder = DATASETS[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for dataset {name!r}; accepted: {list(accepted)}"
        )
    missing = [
        k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in params
    ]
    if missing:
        raise ValueError(f"dataset {name!r} needs parameter(s) {missing}")
    return builder(**params)


__all__ = ["DATASETS", "DataBundle", "SliceDataset", "Volume", "build_data"]
