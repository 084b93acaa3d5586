"""Float64 NumPy reference for the calibration metrics (independent of mls_tutorial.metrics).

Bins: right-closed ``(b/B, (b+1)/B]`` with 0 in the first bin, found with ``np.searchsorted`` on
the float64 edges ``b / B`` (exact for float32 inputs), statistics with a loop over the bins.
"""

from __future__ import annotations

import math

import numpy as np


def bin_index(c: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return np.clip(np.searchsorted(edges, c, side="left") - 1, 0, n_bins - 1)


def row(c: np.ndarray, hit: np.ndarray, n_bins: int) -> dict:
    """ECE, MCE, RMSCE, ACE and the per-bin table of one (confidence, hit) sample."""
    c = np.asarray(c, dtype=np.float64)
    hit = np.asarray(hit, dtype=np.float64)
    n = len(c)
    b = bin_index(c, n_bins)
    counts, conf, acc = np.zeros(n_bins, np.int64), np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for i in range(n_bins):
        sel = b == i
        if sel.any():
            counts[i], conf[i], acc[i] = sel.sum(), c[sel].mean(), hit[sel].mean()
    full = counts > 0
    gap = np.abs(acc - conf)[full]
    if n == 0:
        nan = math.nan
        return {"ece": nan, "mce": nan, "rmsce": nan, "ace": nan, "counts": counts}
    w = counts[full] / n
    return {
        "ece": float((w * gap).sum()),
        "mce": float(gap.max()),
        "rmsce": float(np.sqrt((w * gap**2).sum())),
        "ace": float(gap.mean()),
        "counts": counts,
        "conf": conf,
        "acc": acc,
    }


def metrics(
    probs: np.ndarray, y: np.ndarray, n_bins: int, logits: np.ndarray | None = None
) -> dict:
    """Every number of CalibrationMeter.compute for ``probs (M, K)`` and labels ``y (M,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    m, k = probs.shape
    conf, pred = probs.max(1), probs.argmax(1)
    out = {
        key: v
        for key, v in row(conf, pred == y, n_bins).items()
        if key in ("ece", "mce", "rmsce", "ace")
    }
    per_class = [row(probs[:, j], y == j, n_bins)["ece"] for j in range(k)]
    out["ece_per_class"] = per_class
    out["cece"] = float(np.mean(per_class)) if m else math.nan
    onehot = np.eye(k)[y] if m else np.zeros((0, k))
    out["brier"] = float(((probs - onehot) ** 2).sum(1).mean()) if m else math.nan
    out["accuracy"] = float((pred == y).mean()) if m else math.nan
    out["confidence"] = float(conf.mean()) if m else math.nan
    if logits is not None and m:
        z = np.asarray(logits, dtype=np.float64)
        zmax = z.max(1, keepdims=True)
        log_softmax = z - zmax - np.log(np.exp(z - zmax).sum(1, keepdims=True))
        out["nll"] = float(-log_softmax[np.arange(m), y].mean())
    else:
        out["nll"] = math.nan
    out["n_voxels"] = m
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax in float64 of ``z (M, K)``."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def flatten(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K, *spatial)`` -> ``(M, K)``; target ``(N, *spatial)`` -> ``(M,)``."""
    k = scores.shape[1]
    return np.moveaxis(scores, 1, -1).reshape(-1, k), target.reshape(-1)


def test_oracle_on_a_hand_computed_case():
    """Two bins; confidences 0.2, 0.4 (bin 0, 1 hit) and 0.5 (bin 0: 0.5 is in (0, 0.5]), 0.9."""
    c = np.array([0.2, 0.4, 0.5, 0.9])
    hit = np.array([1, 0, 0, 1])
    r = row(c, hit, 2)
    # bin 0: conf mean 1.1/3, acc 1/3 -> gap 0.1/3; bin 1: conf 0.9, acc 1 -> gap 0.1
    assert r["counts"].tolist() == [3, 1]
    assert abs(r["ece"] - (3 / 4 * 0.1 / 3 + 1 / 4 * 0.1)) < 1e-15
    assert abs(r["mce"] - 0.1) < 1e-15
    assert abs(r["ace"] - (0.1 / 3 + 0.1) / 2) < 1e-15
    assert bin_index(np.array([0.0, 1.0, 0.5]), 2).tolist() == [0, 1, 0]
