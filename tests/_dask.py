"""A Dask ``LocalCluster`` for the tests: 2 worker processes of 1 thread, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def local_cluster(n_workers: int = 2):
    import distributed

    with distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster
