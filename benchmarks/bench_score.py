"""Speed and peak memory of ``score`` on saved probability maps, against MONAI.

Synthetic over-confident cases (softmax of sharpened random logits, float32, labels drawn from
the true probabilities), non-cubic. Two measurements:

- speed: voxels per second of ``score_cases`` (top-label and classwise ECE, NLL, Brier, the
  logit-distance histogram, saturation, Dice; HD95 off, it is MONAI's either way) against
  MONAI's ``CalibrationErrorMetric`` (classwise ECE per image and channel only) on the same
  arrays, the one-hot labels it needs included; median of ``--repeats``;
- memory: peak resident memory of ``score_folder`` on one case in nnU-Net's ``.npz`` layout,
  above the process's resident memory after imports, as a multiple of the case's float32
  probability array, measured in a fresh process per size (``ru_maxrss``).

    python benchmarks/bench_score.py            # three sizes, 3 repeats
    python benchmarks/bench_score.py --quick    # the smallest size, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = [(4, (128, 112, 64)), (4, (256, 224, 64)), (14, (192, 160, 48))]


def make_case(k: int, shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(k, *shape)).astype(np.float32) * 2
    q = np.exp(z - z.max(0))
    q /= q.sum(0)
    y = (rng.random(shape, dtype=np.float32)[None] >= np.cumsum(q, 0)[:-1]).sum(0)
    p = np.exp(3 * (z - z.max(0)))
    p /= p.sum(0)
    return p.astype(np.float32), y.astype(np.int64)


def time_score(p, y, repeats):
    from mls_tutorial.score import score_cases

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_cases([(p, y, (1.0, 1.0, 2.5))], hd95=False, progress=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_monai(p, y, repeats):
    import torch
    from monai.metrics import CalibrationErrorMetric

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pt = torch.from_numpy(p)[None]
        onehot = torch.nn.functional.one_hot(torch.from_numpy(y), p.shape[0])
        onehot = onehot.movedim(-1, 0)[None].float()
        metric = CalibrationErrorMetric(num_bins=15, include_background=True)
        metric(y_pred=pt, y=onehot)
        metric.aggregate()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory(k: int, shape) -> dict:
    """Write one case (.npz, nnU-Net's layout) here, score it in a fresh process: peak RSS
    (``ru_maxrss``) above the resident memory after imports."""
    import nibabel as nib

    tmp = Path(tempfile.mkdtemp())
    (tmp / "pred").mkdir()
    (tmp / "labels").mkdir()
    p, y = make_case(k, shape)
    np.savez(tmp / "pred" / "c.npz", probabilities=p.transpose(0, 3, 2, 1))
    nib.save(nib.Nifti1Image(y.astype(np.uint8), np.eye(4)), tmp / "labels" / "c.nii.gz")
    nbytes = p.nbytes
    del p, y
    code = f"""
import json, resource
import monai.metrics, nibabel, torch
from mls_tutorial.score import score_folder
base = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
score_folder({str(tmp / "pred")!r}, {str(tmp / "labels")!r}, {str(tmp / "out")!r}, progress=False)
print(json.dumps({{"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["extra"] = r["peak"] - r["base"]
    r["ratio"] = r["extra"] / nbytes
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = SIZES[:1] if args.quick else SIZES
    repeats = 1 if args.quick else args.repeats
    print("| K | case (X, Y, Z) | voxels | probabilities (float32) | score: Mvox/s | "
          "MONAI CalibrationErrorMetric: Mvox/s | score peak above baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for k, shape in sizes:
        p, y = make_case(k, shape)
        n = y.size
        t_score, t_monai = time_score(p, y, repeats), time_monai(p, y, repeats)
        nbytes = p.nbytes
        del p, y
        mem = peak_memory(k, shape)
        print(
            f"| {k} | {shape} | {n / 1e6:.2f}M | {nbytes / 2**20:.0f} MiB | "
            f"{n / t_score / 1e6:.2f} ({t_score:.2f} s) | {n / t_monai / 1e6:.2f} ({t_monai:.2f} s) "
            f"| {mem['extra'] / 2**20:.0f} MiB = {mem['ratio']:.2f} x the array |",
            flush=True,
        )
    print(f"(ru_maxrss; median of {repeats}; {resource.getpagesize()} B pages)")


if __name__ == "__main__":
    main()
