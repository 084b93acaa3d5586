"""Speed, state memory and exactness of CalibrationMeter against its peers, in one process.

Segmentation-like data (4 classes, over-confident: ~35% of float32 softmax confidences are
exactly 1.0), fed in chunks of 1M voxels. Each method computes top-label ECE and classwise ECE
(CECE) from the same logits (softmax time included for all):

- meter: ``CalibrationMeter.update`` per chunk + ``compute`` (both numbers, plus MCE, Brier, NLL);
- torchmetrics: ``MulticlassCalibrationError`` + one ``BinaryCalibrationError`` per class
  (``validate_args=False``, its fastest setting);
- MONAI: ``CalibrationErrorMetric`` per chunk and channel (it has no top-label or pooled ECE:
  time and memory only);
- loop: a Python loop over the bins on stored NumPy arrays, like the official MbLS evaluation.

Exactness: a float64 streaming reference (float64 softmax, NumPy pairwise sums per bin),
and a 40M-voxel case where torchmetrics' float32 sums drift (skipped with ``--quick``).

    python benchmarks/bench_metrics.py            # 10M voxels, 3 repeats, + the 40M case
    python benchmarks/bench_metrics.py --quick    # 2M voxels, no 40M case
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from mls_tutorial.device import pick_device
from mls_tutorial.metrics import CalibrationMeter

K, BINS = 4, 15


def make_chunk(seed: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, K, n) of an over-confident segmenter (accuracy ~0.92) and labels (1, n)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (1, n), generator=g)
    wrong = torch.rand(1, n, generator=g) < 0.1
    guess = torch.where(wrong, torch.randint(0, K, (1, n), generator=g), y)
    z = torch.randn(1, K, n, generator=g)
    z.scatter_add_(1, guess[:, None], torch.rand(1, 1, n, generator=g) * 30)
    return z.to(device), y.to(device)


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.2f} kB"


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_meter(chunks):
    meter = CalibrationMeter(K, n_bins=BINS)
    for z, y in chunks:
        meter.update(z, y)
    r = meter.compute()
    return r["ece"], r["cece"], nbytes(meter._tables.values())


def run_torchmetrics(chunks):
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    dev = chunks[0][0].device
    top = MulticlassCalibrationError(K, n_bins=BINS, validate_args=False).to(dev)
    per_class = [BinaryCalibrationError(n_bins=BINS, validate_args=False).to(dev) for _ in range(K)]
    for z, y in chunks:
        p = torch.softmax(z, dim=1)
        top.update(p, y)
        for k, metric in enumerate(per_class):
            metric.update(p[:, k], (y == k).long())
    ece = float(top.compute())
    cece = float(sum(m.compute() for m in per_class)) / K
    state = nbytes([*top.confidences, *top.accuracies])
    state += sum(nbytes([*m.confidences, *m.accuracies]) for m in per_class)
    return ece, cece, state


def run_monai(chunks):
    from monai.metrics import CalibrationErrorMetric

    metric = CalibrationErrorMetric(num_bins=BINS, include_background=True, right=True)
    for z, y in chunks:
        onehot = torch.nn.functional.one_hot(y, K).movedim(-1, 1).float()
        metric(y_pred=torch.softmax(z, dim=1), y=onehot)
    cece = float(metric.aggregate())  # mean over chunks and channels: not the pooled CECE
    return float("nan"), cece, nbytes(metric.get_buffer().reshape(-1, 1))


def loop_ece(conf: np.ndarray, hit: np.ndarray) -> float:
    """The official evaluation's loop over the bins (one boolean mask a bin)."""
    edges = np.linspace(0, 1, BINS + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if lo == 0:
            in_bin |= conf == 0
        prop = in_bin.mean()
        if prop > 0:
            ece += abs(conf[in_bin].mean() - hit[in_bin].mean()) * prop
    return float(ece)


def run_loop(chunks):
    probs, labels = [], []
    for z, y in chunks:
        probs.append(torch.softmax(z, dim=1)[0].T.cpu().numpy())
        labels.append(y[0].cpu().numpy())
    p, y = np.concatenate(probs), np.concatenate(labels)
    ece = loop_ece(p.max(1), p.argmax(1) == y)
    cece = float(np.mean([loop_ece(p[:, k], y == k) for k in range(K)]))
    return ece, cece, p.nbytes + y.nbytes


def _binned_sum(b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-bin sums of ``w``, each with NumPy's pairwise summation (error O(log n) ulps)."""
    order = np.argsort(b, kind="stable")
    cuts = np.searchsorted(b[order], np.arange(BINS + 1))
    w = w[order]
    return np.array([w[lo:hi].sum() for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)])


def reference(chunks_iter):
    """float64 streaming reference: float64 softmax, per-bin counts, hits and confidence sums."""
    edges = np.arange(BINS + 1) / BINS
    tables = np.zeros((1 + K, 3, BINS))
    for z, y in chunks_iter:
        p = torch.softmax(z.double(), dim=1)[0].T.cpu().numpy()
        y = y[0].cpu().numpy()
        rows = [(p.max(1), p.argmax(1) == y)] + [(p[:, k], y == k) for k in range(K)]
        for r, (c, hit) in enumerate(rows):
            b = np.clip(np.searchsorted(edges, c, side="left") - 1, 0, BINS - 1)
            tables[r] += [np.bincount(b, None, BINS), np.bincount(b, hit, BINS), _binned_sum(b, c)]
    count, hits, conf = tables[:, 0], tables[:, 1], tables[:, 2]
    ece = np.abs(hits - conf).sum(1) / count.sum(1)
    return float(ece[0]), float(ece[1:].mean())


def timed(fn, chunks, repeats: int, device) -> tuple[float, tuple]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(chunks)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2M voxels, no 40M exactness case")
    ap.add_argument("--voxels", type=int, default=None, help="voxels (default 10M, quick 2M)")
    ap.add_argument("--chunk", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu / cuda (default: best available)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    ap.add_argument(
        "--skip", default="", help="comma list of methods to skip: torchmetrics,monai,loop"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    voxels = args.voxels or (2_000_000 if args.quick else 10_000_000)
    n_chunks = max(1, voxels // args.chunk)
    chunks = [make_chunk(i, args.chunk, device) for i in range(n_chunks)]
    print(
        f"# bench_metrics: {n_chunks * args.chunk:,} voxels x {K} classes, chunks of {args.chunk:,}"
    )
    print(
        f"# device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"repeats {args.repeats} (median)"
    )
    ref_ece, ref_cece = reference(chunks)
    methods = {
        "meter": run_meter,
        "torchmetrics": run_torchmetrics,
        "monai": run_monai,
        "loop": run_loop,
    }
    skip = set(filter(None, args.skip.split(",")))
    rows = {}
    for name, fn in methods.items():
        if name in skip:
            continue
        try:
            rows[name] = timed(fn, chunks, args.repeats, device)
        except ImportError as err:
            print(f"# {name}: skipped ({err})")
    base = rows["meter"][0]
    print("\n| method | time (s) | vs meter | state | ECE | CECE |\n|---|---|---|---|---|---|")
    print(f"| float64 reference | | | | {ref_ece:.6f} | {ref_cece:.6f} |")
    for name, (t, (ece, cece, state)) in rows.items():
        print(
            f"| {name} | {t:.3f} | {t / base:.2f}x | {fmt_bytes(state)} | {ece:.6f} | {cece:.6f} |"
        )
    print(
        f"\nmeter |ECE - ref| = {abs(rows['meter'][1][0] - ref_ece):.2e}, "
        f"|CECE - ref| = {abs(rows['meter'][1][1] - ref_cece):.2e}"
    )
    if not args.quick:
        exact_40m(args.chunk, device, "torchmetrics" not in skip)


def exact_40m(chunk: int, device, with_torchmetrics: bool) -> None:
    """Top-label ECE on 40M voxels: meter vs float64 reference vs torchmetrics (float32 sums)."""
    n = 40_000_000 // chunk

    def stream():
        return (make_chunk(1000 + i, chunk, device) for i in range(n))

    meter = CalibrationMeter(K, n_bins=BINS)
    for z, y in stream():
        meter.update(z, y)
    ece = meter.compute()["ece"]
    ref_ece, _ = reference(stream())
    line = f"\n40M voxels, top-label ECE: meter {ece:.6f}, float64 reference {ref_ece:.6f} "
    line += f"(|diff| {abs(ece - ref_ece):.1e})"
    if with_torchmetrics:
        from torchmetrics.classification import MulticlassCalibrationError

        tm = MulticlassCalibrationError(K, n_bins=BINS, validate_args=False).to(device)
        for z, y in stream():
            tm.update(torch.softmax(z, dim=1), y)
        tm_ece = float(tm.compute())
        line += f", torchmetrics {tm_ece:.6f} (|diff| {abs(tm_ece - ref_ece):.1e})"
    print(line)


if __name__ == "__main__":
    main()
