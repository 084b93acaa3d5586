"""A torch.distributed (gloo) worker for the metrics tests, importable by spawned processes."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram

K = 4
N_VOLUMES = 5


def volume(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic volume i: logits (1, K, 6, 7, 5), labels (1, 6, 7, 5)."""
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(1, K, 6, 7, 5, generator=g) * 4, torch.randint(
        0, K, (1, 6, 7, 5), generator=g
    )


def summarise(meter: CalibrationMeter, hist: LogitDistanceHistogram) -> dict:
    return {
        "compute": meter.compute(),
        "reliability_counts": meter.reliability(2)["counts"].tolist(),
        "hist_counts": hist.histogram("all")["counts"].tolist(),
        "hist_mean_counts": hist.histogram("mean")["counts"].tolist(),
        "fraction_above_5": hist.fraction_above(5.0),
    }


def run(volumes, meter, hist) -> None:
    for i in volumes:
        logits, target = volume(i)
        meter.update(logits, target)
        hist.update(logits, mask=target != 0)


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        meter = CalibrationMeter(K, region="foreground", per_volume=True)
        hist = LogitDistanceHistogram(K)
        run(range(rank, N_VOLUMES, world), meter, hist)
        local = meter._tables["count"].clone()
        out = summarise(meter, hist)
        out["local_state_unchanged"] = bool(torch.equal(local, meter._tables["count"]))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
