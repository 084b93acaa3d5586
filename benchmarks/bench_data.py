"""Build time and memory of the datasets, and the cost of feeding the training set.

    python benchmarks/bench_data.py [--quick]

Prints, in one process: the cold build of the bundled MNI task (template read + simulation),
median warm rebuilds (template cached) for several sizes, the synthetic set, the peak resident
memory, the bytes a bundle holds, and the median time to draw a batch of 16 training images with
a DataLoader; on CUDA also the time to move that batch to the GPU. Building is CPU work by design.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _bytes(bundle) -> int:
    tensors = [bundle.train.images, bundle.train.labels]
    tensors += [bundle.train.prob] if getattr(bundle.train, "prob", None) is not None else []
    for v in bundle.val + bundle.test:
        tensors += [v.image, v.label] + ([v.prob] if v.prob is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors)


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    repeats = 2 if args.quick else 5
    rss0 = _rss_mb()
    t = time.perf_counter()
    from mls_tutorial.data import build_data

    t_import = time.perf_counter() - t
    t = time.perf_counter()
    bundle = build_data("mni")
    t_cold = time.perf_counter() - t
    rss_default = _rss_mb()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"import mls_tutorial.data: {t_import:.2f} s")
    print(f"mni defaults, cold (template read + simulation): {t_cold:.2f} s  (target < 10 s)")
    print(f"peak RSS after the default build: {rss_default:.0f} MB (at start {rss0:.0f} MB)")
    print("| dataset | params | train images | median build (s) | bundle MB |")
    print("|---|---|---|---|---|")
    cases = [
        ("mni", {}),
        ("mni", {"labels": "hard", "n_train_subjects": 16}),
        ("synthetic", {}),
    ]
    for name, params in cases:
        med, b = _timed(lambda n=name, p=params: build_data(n, **p), repeats)
        print(
            f"| {name} | {params or 'defaults'} | {len(b.train)} | {med:.2f} | "
            f"{_bytes(b) / 2**20:.1f} |"
        )
    print(f"peak RSS after all builds: {_rss_mb():.0f} MB")

    loader = torch.utils.data.DataLoader(bundle.train, batch_size=16, shuffle=True)
    med_batch, batch = _timed(lambda: next(iter(loader)), repeats * 10)
    print(f"DataLoader batch of 16 (workers=0): {med_batch * 1e3:.2f} ms")
    if torch.cuda.is_available():
        dev = torch.device("cuda")

        def to_gpu():
            x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            torch.cuda.synchronize()
            return x, y

        to_gpu()
        med_gpu, _ = _timed(to_gpu, repeats * 10)
        print(
            f"batch to {torch.cuda.get_device_name()}: {med_gpu * 1e3:.3f} ms "
            f"(ratio to drawing it: {med_gpu / med_batch:.2f})"
        )


if __name__ == "__main__":
    main()
