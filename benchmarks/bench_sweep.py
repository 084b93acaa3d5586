"""Wall clock of a sweep with ``--workers 1`` against ``--workers N`` (default 2), side by side.

The same 12-run grid (CE, LS x 3 alphas, MbLS x 2 margins, 2 seeds) on the bundled MNI data is
trained into two fresh temporary roots, once with one worker (one process, every core's threads)
and once with N worker processes of ``cores // N`` threads each. Training is shortened
(``--iterations``, default 150) so the comparison takes a few minutes; per-run start-up (imports,
data, evaluation, figures) is part of what is measured, as in a real sweep. The ratio
``time(N workers) / time(1 worker)`` is printed; the target on a 2-core machine is <= 0.7.

    python benchmarks/bench_sweep.py                 # 12 runs x 150 iterations, 1 vs 2 workers
    python benchmarks/bench_sweep.py --iterations 40 # quicker
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from mls_tutorial.sweep import _threads_per_worker, train_configs


def configs(iterations: int) -> list[dict]:
    grid = [("ce", {})]
    grid += [("ls", {"alpha": a}) for a in (0.03, 0.1, 0.3)]
    grid += [("mbls", {"margin": m}) for m in (3.0, 10.0)]
    base = {"iterations": iterations, "val_every": max(1, iterations // 2)}
    return [
        {**base, "loss": loss, "loss_kwargs": kw, "seed": seed}
        for seed in (1, 2)
        for loss, kw in grid
    ]


def timed(cfgs: list[dict], workers: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        train_configs(cfgs, root, workers=workers, device="cpu", progress=False, log=None)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfgs = configs(args.iterations)
    torch.set_num_threads(cores)
    one = timed(cfgs, 1)
    many = timed(cfgs, args.workers)
    threads = _threads_per_worker(args.workers)
    print(
        f"{len(cfgs)} runs x {args.iterations} iterations, {cores} cores, torch {torch.__version__}"
    )
    print("| workers | threads each | wall clock (s) | x 1 worker |")
    print("|---:|---:|---:|---:|")
    print(f"| 1 | {cores} | {one:.1f} | 1.00 |")
    print(f"| {args.workers} | {threads} | {many:.1f} | {many / one:.2f} |")


if __name__ == "__main__":
    main()
