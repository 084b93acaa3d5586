"""Wall clock of one sweep three ways, side by side: 1 worker, ``--workers N``, a Dask cluster.

The same 12-run grid (CE, LS x 3 alphas, MbLS x 2 margins, 2 seeds) on the bundled MNI data is
trained into fresh temporary roots:

1. one worker: one process, every core's threads (``train_configs(workers=1)``);
2. ``--workers N`` (default 2): a local pool of N processes of ``cores // N`` threads each;
3. Dask: a ``distributed.LocalCluster`` of N worker processes x 1 thread (127.0.0.1 only),
   ``train_configs(executor=client.get_executor())``; the cluster is started before the clock
   (its start-up is printed apart), the workers import torch on their first run, as the pool's
   processes do.

Training is shortened (``--iterations``, default 100; validation every 100 iterations as in the
course's evidence) so the comparison takes minutes; per-run start-up (imports, data, evaluation,
figures) is part of what is measured, as in a real sweep. Each variant runs ``--rounds`` times
(default 2) in alternating order, since the load of a shared machine drifts; printed: every
round, the medians and their ratios, the load average, the peak memory of a worker, and a
projection of the course's five-seed evidence (``docs/evidence/runs.csv``) on 8 and 32
one-thread workers from the per-run time measured here (the assumptions are printed too).

    python benchmarks/bench_sweep.py                  # 12 runs x 100 iterations, 2 rounds
    python benchmarks/bench_sweep.py --iterations 40  # quicker
    python benchmarks/bench_sweep.py --no-dask        # 1 worker vs --workers N only
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from mls_tutorial.sweep import _threads_per_worker, train_configs

EVIDENCE = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "runs.csv"
EVIDENCE_ITERATIONS = 1000  # docs/results.md: every evidence run trained 1000 iterations


def configs(iterations: int) -> list[dict]:
    grid = [("ce", {})]
    grid += [("ls", {"alpha": a}) for a in (0.03, 0.1, 0.3)]
    grid += [("mbls", {"margin": m}) for m in (3.0, 10.0)]
    base = {"iterations": iterations, "val_every": min(100, iterations)}  # as in the evidence
    return [
        {**base, "loss": loss, "loss_kwargs": kw, "seed": seed}
        for seed in (1, 2)
        for loss, kw in grid
    ]


def timed(cfgs: list[dict], **how) -> tuple[float, list]:
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        runs = train_configs(cfgs, root, device="cpu", progress=False, log=None, **how)
        return time.perf_counter() - t0, runs


def projection(seconds_per_run: float, runs_csv: Path, workers: tuple[int, ...]) -> list[str]:
    """Wall clock of the evidence's trained runs on W one-thread workers: ceil(n / W) rounds of
    one run each (equal runs, one core per worker, no waiting on the file system)."""
    with runs_csv.open() as f:
        rows = list(csv.DictReader(f))
    trained = [r for r in rows if not r["temperature"]]  # CE + TS reuses CE's weights
    lines = [
        f"evidence: {len(rows)} runs in {runs_csv.name}, {len(trained)} trained "
        f"({EVIDENCE_ITERATIONS} iterations each; the rest only fit a temperature)",
        "| workers (1 thread each) | rounds | projected wall clock |",
        "|---:|---:|---:|",
    ]
    for w in workers:
        rounds = math.ceil(len(trained) / w)
        lines.append(f"| {w} | {rounds} | {rounds * seconds_per_run / 60:.0f} min |")
    return lines


def _peak_rss_gib() -> float:
    """This process's peak resident memory (run on each worker)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="each variant this many times")
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask cluster")
    args = ap.parse_args()
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfgs = configs(args.iterations)
    names = {
        "one": f"1 worker (in-process, {cores} threads)",
        "pool": f"`--workers {args.workers}` ({_threads_per_worker(args.workers)} thread each)",
        "dask": f"Dask LocalCluster {args.workers} x 1 thread",
    }
    how = {"one": {"workers": 1}, "pool": {"workers": args.workers}}
    client = cluster = None
    load_before = os.getloadavg()
    if not args.no_dask:
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
        client = Client(cluster)
        client.wait_for_workers(args.workers)
        start = time.perf_counter() - t0
        how["dask"] = {"executor": client.get_executor()}
    times: dict[str, list[float]] = {k: [] for k in how}
    loops: dict[str, list[float]] = {k: [] for k in how}
    torch.set_num_threads(cores)
    for r in range(args.rounds):  # alternate the order: the load of a shared machine drifts
        for key in list(how) if r % 2 == 0 else list(how)[::-1]:
            seconds, runs = timed(cfgs, **how[key])
            times[key].append(seconds)
            loops[key] += [run.history["seconds"] for run in runs]
            print(f"round {r + 1}: {key} {seconds:.1f} s", flush=True)
    if client is not None:
        peak = max(client.run(_peak_rss_gib).values())
        client.close()
        cluster.close()
    load_after = os.getloadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{len(cfgs)} runs x {args.iterations} iterations (validation every "
        f"{cfgs[0]['val_every']}), {cores} cores, torch {torch.__version__}, {args.rounds} "
        f"rounds; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print("| sweep | wall clock (s), each round | median | x 1 worker | x `--workers` |")
    print("|---|---|---:|---:|---:|")
    for key, seconds in med.items():
        each = ", ".join(f"{t:.1f}" for t in times[key])
        print(
            f"| {names[key]} | {each} | {seconds:.1f} | {seconds / med['one']:.2f} | "
            f"{seconds / med['pool']:.2f} |"
        )
    print(
        "training loop per run, median (s): "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in loops.items())
    )
    if client is None:
        return
    print(f"Dask cluster start-up (not in the wall clock above): {start:.1f} s")
    print(f"peak memory of a Dask worker process (max RSS): {peak:.2f} GiB")

    # per run on one one-thread worker: the Dask sweep's worker-seconds per run, split into the
    # training loop (history["seconds"], validation included) and the rest (start-up share,
    # data, evaluation, figures), then the loop scaled to the evidence's iterations
    per_run = med["dask"] * args.workers / len(cfgs)
    loop = statistics.median(loops["dask"])
    rest = per_run - loop
    at_evidence = rest + loop * EVIDENCE_ITERATIONS / args.iterations
    print(
        f"per run on a 1-thread worker: {per_run:.1f} s = training loop {loop:.1f} s (median) "
        f"+ the rest {rest:.1f} s; at {EVIDENCE_ITERATIONS} iterations: {at_evidence:.0f} s"
    )
    print("\n".join(projection(at_evidence, EVIDENCE, (1, 2, 8, 32))))


if __name__ == "__main__":
    main()
