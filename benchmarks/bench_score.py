"""Speed and peak memory of ``score`` on saved probability maps, against MONAI.

Two kinds of synthetic float32 cases, non-cubic, anisotropic spacing (0.8, 0.8, 2.5) mm:

- ``organs``: K = 15 (14 compact ellipsoid "organs" of 0.2-1.1 % of the volume each in a large
  background, as in abdominal CT), the prediction the same organs shifted and scaled by a few
  percent, probabilities the softmax of 6 x one-hot(prediction) + N(0, 1) noise;
- ``everywhere``: labels everywhere, the worst case (softmax of sharpened random logits, labels
  drawn from the true probabilities): every class's bounding box is the whole volume.

Measured side by side in ONE process on the same arrays, median of ``--repeats``:
``score_cases`` without HD95 (everything else it reports: pooled and per-case ECE, CECE, NLL,
Brier, the logit-distance histogram, saturation, Dice) and with HD95, against MONAI's
``CalibrationErrorMetric`` (classwise ECE per image and channel only, its one-hot labels
included). Memory: in a fresh process per case, peak resident memory (``VmHWM``) above the
resident memory after imports, as a multiple of the case's float32 probability array, for
``score_folder`` on the case in nnU-Net's ``.npz`` layout (HD95 included; reading the file is
part of it) and for MONAI (``np.load`` + the metric). HD95 alone (the argmax map given):
``metrics.hd95_per_class`` against MONAI's ``compute_hausdorff_distance`` called on each
class's same bounding box (what ``hd95_per_class`` did before it called MONAI's steps itself).

    nice -n 10 python benchmarks/bench_score.py            # organs 8.1 M voxels, worst 2.0 M
    python benchmarks/bench_score.py --quick                # small cases, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACING = (0.8, 0.8, 2.5)
CASES = [("organs", 15, (256, 232, 136)), ("everywhere", 14, (160, 144, 88))]
QUICK = [("organs", 15, (96, 80, 48)), ("everywhere", 14, (64, 56, 40))]


def organs(k: int, shape, seed: int = 0):
    """Ellipsoid organs in a background; the prediction shifted/scaled; noisy softmax."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    y, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for c in range(1, k):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        radii = [rng.uniform(0.08, 0.14) * n for n in shape]
        shift = rng.normal(size=3) * 1.5
        y[sum(((g - m) / r) ** 2 for g, m, r in zip(grid, centre, radii, strict=True)) <= 1] = c
        d = sum(
            ((g - m - s) / (1.03 * r)) ** 2
            for g, m, r, s in zip(grid, centre, radii, shift, strict=True)
        )
        pred[d <= 1] = c
    p = rng.standard_normal((k, *shape), dtype=np.float32)
    for c in range(k):
        p[c] += 6 * (pred == c)
    p -= p.max(0)
    np.exp(p, out=p)
    p /= p.sum(0)
    return p, y


def everywhere(k: int, shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(k, *shape)).astype(np.float32) * 2
    q = np.exp(z - z.max(0))
    q /= q.sum(0)
    y = (rng.random(shape, dtype=np.float32)[None] >= np.cumsum(q, 0)[:-1]).sum(0)
    del q
    p = np.exp(3 * (z - z.max(0)))
    p /= p.sum(0)
    return p.astype(np.float32), y.astype(np.uint8)


MAKERS = {"organs": organs, "everywhere": everywhere}


def time_score(p, y, hd95: bool) -> float:
    from mls_tutorial.score import score_cases

    t0 = time.perf_counter()
    score_cases([(p, y, SPACING)], hd95=hd95, progress=False)
    return time.perf_counter() - t0


def time_monai(p, y) -> float:
    import torch
    from monai.metrics import CalibrationErrorMetric

    t0 = time.perf_counter()
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), p.shape[0])
    onehot = onehot.movedim(-1, 0)[None].float()
    metric = CalibrationErrorMetric(num_bins=15, include_background=True)
    metric(y_pred=torch.from_numpy(p)[None], y=onehot)
    metric.aggregate()
    return time.perf_counter() - t0


def time_hd95(pred, y, k: int, which: str) -> float:
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    from mls_tutorial.metrics import hd95_per_class
    from mls_tutorial.metrics.segmentation import _union_box, class_boxes

    t0 = time.perf_counter()
    if which == "ours":
        hd95_per_class(pred, y, k, SPACING)
        return time.perf_counter() - t0
    bp, by = class_boxes(pred, k), class_boxes(y, k)
    for c in range(1, k):
        box = _union_box(bp[c], by[c], y.shape)
        masks = [torch.from_numpy(x[box] == c)[None, None] for x in (pred, y)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            compute_hausdorff_distance(*masks, include_background=True, percentile=95,
                                       spacing=list(SPACING))  # fmt: skip
    return time.perf_counter() - t0


_MEMORY = """
import json, resource, sys
import monai.metrics, nibabel, numpy as np, torch
from mls_tutorial.score import score_folder
tmp, which = sys.argv[1], sys.argv[2]
base = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
if which == "score":
    score_folder(tmp + "/pred", tmp + "/labels", tmp + "/out", progress=False)
else:
    from monai.metrics import CalibrationErrorMetric
    p = np.load(tmp + "/pred/c.npz")["probabilities"]
    y = np.asarray(nibabel.load(tmp + "/labels/c.nii.gz").dataobj).transpose(2, 1, 0)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y).long(), p.shape[0])
    metric = CalibrationErrorMetric(num_bins=15, include_background=True)
    metric(y_pred=torch.from_numpy(p)[None], y=onehot.movedim(-1, 0)[None].float())
    metric.aggregate()
# VmHWM: this process's own high-water mark (ru_maxrss would also count the parent's memory
# at the fork, which exec does not reset)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({"base": base, "peak": int(hwm.split()[1]) * 1024}))
"""


def peak_memory(p, y, which: str) -> float:
    """Peak RSS above the post-import baseline, as a multiple of the float32 array."""
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pred").mkdir()
        (Path(tmp) / "labels").mkdir()
        np.savez(Path(tmp) / "pred" / "c.npz", probabilities=p.transpose(0, 3, 2, 1))
        img = nib.Nifti1Image(y, np.diag([*SPACING, 1.0]))
        nib.save(img, Path(tmp) / "labels" / "c.nii.gz")
        cmd = [sys.executable, "-c", _MEMORY, tmp, which]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (r["peak"] - r["base"]) / p.nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = QUICK if args.quick else CASES
    repeats = 1 if args.quick else args.repeats
    import torch

    from mls_tutorial.metrics import hd95_per_class

    warm = np.zeros((8, 8, 8), np.uint8)
    warm[2:5, 2:5, 2:5] = 1
    hd95_per_class(warm, warm, 2)  # MONAI's first call imports and compiles what it needs
    print(f"torch threads: {torch.get_num_threads()} (score: one per case), {os.cpu_count()} CPUs")
    print("| case | K | (X, Y, Z) | voxels | float32 probabilities | MONAI CalibrationErrorMetric "
          "Mvox/s | score, no HD95: Mvox/s (x MONAI) | score with HD95: Mvox/s | peak memory / "
          "array: score (HD95 incl.), MONAI |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    hd95_lines = []
    for kind, k, shape in cases:
        p, y = MAKERS[kind](k, shape)
        n = y.size
        runs = [(time_monai(p, y), time_score(p, y, False)) for _ in range(repeats)]
        t_monai, t_nohd = (statistics.median(r) for r in zip(*runs, strict=True))
        t_hd = statistics.median(time_score(p, y, True) for _ in range(repeats))
        mem_score, mem_monai = peak_memory(p, y, "score"), peak_memory(p, y, "monai")
        print(
            f"| {kind} | {k} | {shape} | {n / 1e6:.2f}M | {p.nbytes / 2**20:.0f} MiB "
            f"| {n / t_monai / 1e6:.2f} | {n / t_nohd / 1e6:.2f} ({t_monai / t_nohd:.2f}x) "
            f"| {n / t_hd / 1e6:.2f} | {mem_score:.2f}x, {mem_monai:.2f}x |",
            flush=True,
        )
        pred = p.argmax(0).astype(np.uint8)
        runs = [
            (time_hd95(pred, y, k, "monai"), time_hd95(pred, y, k, "ours")) for _ in range(repeats)
        ]
        t_m, t_o = (statistics.median(r) for r in zip(*runs, strict=True))
        hd95_lines.append(f"| {kind} | {t_m:.2f} | {t_o:.2f} | {t_m / t_o:.2f}x |")
        del p, y, pred
    print(f"(median of {repeats}; memory: VmHWM, {resource.getpagesize()} B pages)")
    print("\nHD95 alone, argmax given (s): MONAI compute_hausdorff_distance per class box vs ours")
    print("| case | MONAI per box | hd95_per_class | ratio |\n|---|---|---|---|")
    print("\n".join(hd95_lines))


if __name__ == "__main__":
    main()
