"""Calibration against the TRUE class probabilities ``q`` (known for the bundled MNI data only).

Binned ECE scores confidences against labels drawn from ``q``: an estimate, noisy where few
voxels fall in a bin and blind to errors that cancel inside a bin. With ``q`` known, three
exact numbers over a voxel set (the foreground, say), with ``s = softmax(z)``,
``c = max_k s_k`` the confidence and ``k* = argmax_k s_k`` the predicted class:

    tce        = mean_v |c_v - q_{v,k*}|                  true top-label error, no bins, no labels
    ece_true   = sum_b (n_b / N) |mean_b c - mean_b q_k*| the binned ECE with every label replaced
                                                          by its expectation (what ECE estimates)
    prob_gap   = mean_v mean_k |s_{v,k} - q_{v,k}|        the classwise form of tce

``ece_true <= tce`` (the triangle inequality inside each bin). Bins are those of
``CalibrationMeter``: ``B`` equal-width bins ``(lo, hi]`` with 0 in the first.

``dice_bayes`` (see ``train.evaluate``) is Dice against ``argmax q``, the Bayes-optimal
segmentation, next to Dice against the sampled labels.
"""

from __future__ import annotations

import torch

from ._inputs import check_int

#: columns of a ``truth_table``: per bin, sums over the voxels of the bin
TRUTH_COLUMNS = ("count", "conf", "q_pred", "abs_top", "abs_classwise")


def _check(probs: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None) -> None:
    if probs.ndim < 2:
        raise ValueError(f"probs must be (N, K, *spatial), got shape {tuple(probs.shape)}")
    if tuple(q.shape) != tuple(probs.shape):
        raise ValueError(
            f"q (true probabilities) shape {tuple(q.shape)} != probs shape {tuple(probs.shape)}"
        )
    for name, x in (("probs", probs), ("q", q)):
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or inf values")
    if mask is not None and (
        mask.dtype != torch.bool or tuple(mask.shape) != (probs.shape[0], *probs.shape[2:])
    ):
        raise ValueError(
            f"mask must be a bool tensor of shape {(probs.shape[0], *probs.shape[2:])}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )


def truth_table(
    probs: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None, n_bins: int = 15
) -> torch.Tensor:
    """``(n_bins, 5)`` float64 sums per confidence bin (``TRUTH_COLUMNS``) over masked voxels.

    Tables of several batches (or ranks) add up; ``true_calibration`` turns one into numbers.
    """
    n_bins = check_int(n_bins, "n_bins", 1)
    _check(probs, q, mask)
    p = probs.movedim(1, -1).reshape(-1, probs.shape[1]).double()
    t = q.movedim(1, -1).reshape(-1, q.shape[1]).double().to(p.device)
    if mask is not None:
        keep = mask.reshape(-1).to(p.device)
        p, t = p[keep], t[keep]
    conf, pred = p.max(dim=1)
    q_pred = t.gather(1, pred[:, None])[:, 0]
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp_(0, n_bins - 1)
    cols = torch.stack(
        [torch.ones_like(conf), conf, q_pred, (conf - q_pred).abs(), (p - t).abs().mean(dim=1)], 1
    )
    table = torch.zeros(n_bins, len(TRUTH_COLUMNS), dtype=torch.float64, device=p.device)
    return table.index_add_(0, bins, cols)


def true_calibration(table: torch.Tensor) -> dict[str, float]:
    """``tce``, ``ece_true`` and ``prob_gap`` from a ``truth_table`` (NaN for no voxels)."""
    table = table.double().cpu()
    n = float(table[:, 0].sum())
    if n == 0:
        nan = float("nan")
        return {"tce": nan, "ece_true": nan, "prob_gap": nan, "n_voxels": 0}
    ece_true = float((table[:, 1] - table[:, 2]).abs().sum() / n)
    return {
        "tce": float(table[:, 3].sum() / n),
        "ece_true": ece_true,
        "prob_gap": float(table[:, 4].sum() / n),
        "n_voxels": int(n),
    }


def true_calibration_error(
    probs: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None, n_bins: int = 15
) -> dict[str, float]:
    """``tce``, ``ece_true``, ``prob_gap`` of ``probs (N, K, *spatial)`` against ``q``."""
    return true_calibration(truth_table(probs, q, mask, n_bins))
