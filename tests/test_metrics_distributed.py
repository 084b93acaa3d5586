"""Two gloo processes give the same numbers as one process on all the data."""

from __future__ import annotations

import json
import math

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from _dist_helpers import N_VOLUMES, K, run, summarise, worker

from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    meter = CalibrationMeter(K, region="foreground", per_volume=True)
    hist = LogitDistanceHistogram(K)
    run(range(N_VOLUMES), meter, hist)
    single = json.loads(json.dumps(summarise(meter, hist)))  # same float formatting

    for got in ranks:
        assert got["local_state_unchanged"]
        for key in ("reliability_counts", "hist_counts", "hist_mean_counts", "fraction_above_5"):
            assert got[key] == single[key], key
        a, b = got["compute"], single["compute"]
        assert a["n_voxels"] == b["n_voxels"] and a["n_volumes"] == b["n_volumes"] == N_VOLUMES
        for key in ("ece", "mce", "rmsce", "ace", "cece", "brier", "nll", "ece_mean_over_volumes"):
            assert math.isclose(a[key], b[key], rel_tol=0, abs_tol=1e-12), key
        # per-volume lists are rank-major: rank 0 had volumes 0, 2, 4; rank 1 had 1, 3
        order = [0, 2, 4, 1, 3]
        assert a["per_volume"]["ece"] == pytest.approx(
            [b["per_volume"]["ece"][i] for i in order], abs=1e-12
        )
