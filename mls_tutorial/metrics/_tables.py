"""Calibration numbers from bin tables, in float64 NumPy (the tables are tiny).

A row of the tables holds, per bin b: ``count_b`` (voxels), ``hits_b`` (correct ones) and
``conf_b`` (sum of their confidences). With ``N = sum_b count_b``, over non-empty bins:

    ECE   = sum_b |hits_b - conf_b| / N              (= sum_b n_b/N |acc_b - conf_b|, Guo 2017)
    MCE   = max_b |acc_b - conf_b|
    RMSCE = sqrt(sum_b n_b/N (acc_b - conf_b)^2)
    ACE   = mean_b |acc_b - conf_b|                   (unweighted mean over NON-EMPTY bins)

An empty row (N = 0) gives NaN for every number, never 0.
"""

from __future__ import annotations

import math

import numpy as np


def bin_edges(n_bins: int) -> np.ndarray:
    """Equal-width edges ``b / n_bins`` (float64, exact rationals rounded once)."""
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def row_errors(count: np.ndarray, hits: np.ndarray, conf: np.ndarray) -> dict[str, float]:
    """ECE, MCE, RMSCE and ACE of one row of bin tables (see the module docstring)."""
    n = int(count.sum())
    if n == 0:
        return {"ece": math.nan, "mce": math.nan, "rmsce": math.nan, "ace": math.nan}
    full = count > 0
    c = count[full].astype(np.float64)
    gap = np.abs(hits[full] / c - conf[full] / c)
    return {
        "ece": float(np.abs(hits[full] - conf[full]).sum() / n),
        "mce": float(gap.max()),
        "rmsce": float(math.sqrt((c * gap**2).sum() / n)),
        "ace": float(gap.mean()),
    }


def reliability_row(count, hits, conf) -> dict:
    """Bin edges, counts, mean confidence and accuracy (NaN where empty), ECE and N of one row."""
    count = np.asarray(count, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf / count, np.nan)
        accuracy = np.where(count > 0, hits / count, np.nan)
    return {
        "edges": bin_edges(len(count)),
        "counts": count,
        "confidence": confidence,
        "accuracy": accuracy,
        "ece": row_errors(count, hits, conf)["ece"],
        "n": int(count.sum()),
    }


def table_metrics(
    count: np.ndarray, hits: np.ndarray, conf: np.ndarray, sums: np.ndarray, n_logit: int
) -> dict:
    """Every number of ``CalibrationMeter.compute`` from merged tables ``(1 + K, B)``.

    Row 0 is the top-label row, row ``1 + k`` the classwise row of class k. ``sums`` holds the
    float64 sums of the per-voxel Brier score and NLL; ``n_logit`` counts voxels given as logits.
    """
    n = int(count[0].sum())
    out = row_errors(count[0], hits[0], conf[0])
    per_class = [row_errors(count[r], hits[r], conf[r])["ece"] for r in range(1, len(count))]
    out["cece"] = float(np.mean(per_class)) if n else math.nan
    out["ece_per_class"] = per_class
    nan = math.nan
    out["accuracy"] = float(hits[0].sum() / n) if n else nan
    out["confidence"] = float(conf[0].sum() / n) if n else nan
    out["gap"] = out["confidence"] - out["accuracy"]
    out["brier"] = float(sums[0] / n) if n else nan
    out["nll"] = float(sums[1] / n) if n and n_logit == n else nan
    out["n_voxels"] = n
    return out
