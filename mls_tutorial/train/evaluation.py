"""Whole-volume evaluation: segmentation quality and calibration, as one JSON-able dict.

A 2D model runs over each ``Volume``'s slices in batches; its logits (optionally divided by a
temperature T) feed

- ``dice_per_class`` / ``hd95_per_class`` per volume (HD95 in mm using ``Volume.spacing``);
- a per-volume foreground ``CalibrationMeter`` (the paper's protocol: ECE/CECE over ground-truth
  foreground voxels of each volume, then the unweighted mean over volumes) and a pooled all-voxel
  meter (``ece_all``, ``cece_all``);
- a ``LogitDistanceHistogram`` of ``d_k = max_j z_j - z_k`` over every voxel;
- the signed gap ``mean(conf) - mean(acc)`` over foreground voxels and ``prob_gap``, the mean over
  foreground voxels and classes of ``|p_k - q_k|`` to the true class probabilities
  ``Volume.prob`` (both per volume, then the unweighted mean over volumes).

Under ``torch.distributed`` each rank evaluates a contiguous share of the volumes; meter tables,
histogram and sums are reduced and per-volume results gathered (rank-major, i.e. in the original
order), so every rank gets the numbers a single process computes on all volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mls_tutorial.device import autocast, pick_device
from mls_tutorial.train import distributed as dist_utils

REGIONS = ("foreground", "all", "union")
# headline keys copied from the (per-volume mean of the) region meter
_CAL_KEYS = ("ece", "cece", "mce", "brier", "nll")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def check_volumes(volumes: Sequence[Any], num_classes: int) -> None:
    if isinstance(volumes, torch.utils.data.Dataset) and not isinstance(volumes, Sequence):
        raise ValueError("volumes must be a list of Volume objects (DataBundle.val / .test)")
    if len(volumes) == 0:
        raise ValueError("volumes is empty: nothing to evaluate")
    for v in volumes:
        for attr in ("image", "label", "spacing"):
            if not hasattr(v, attr):
                raise ValueError(
                    f"volumes must hold Volume objects; {type(v).__name__} has no .{attr}"
                )
        if v.image.ndim != 4 or v.label.ndim != 3 or v.image.shape[0] != v.label.shape[0]:
            raise ValueError(
                f"volume {getattr(v, 'name', '?')}: image must be (S, C, H, W) and label (S, H, W), "
                f"got {tuple(v.image.shape)} and {tuple(v.label.shape)}"
            )
        if int(v.label.max()) >= num_classes or int(v.label.min()) < 0:
            raise ValueError(
                f"volume {getattr(v, 'name', '?')}: labels must lie in [0, {num_classes}), got "
                f"[{int(v.label.min())}, {int(v.label.max())}]"
            )


def check_temperature(temperature: float | None) -> None:
    if temperature is None:
        return
    if isinstance(temperature, bool) or not (
        isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0 or None, got {temperature!r}")


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 32,
    amp: bool = True,
) -> torch.Tensor:
    """Logits ``(S, K, H, W)`` float32 on ``device`` for slices ``image (S, C, H, W)``."""
    if image.shape[0] == 0:
        raise ValueError("image has no slices")
    out = []
    for i in range(0, image.shape[0], batch_size):
        x = image[i : i + batch_size].to(device, non_blocking=True)
        with autocast(device, enabled=amp):
            out.append(model(x).float())
    return torch.cat(out)


def _shard(n: int) -> range:
    """This rank's contiguous share of ``range(n)`` (rank-major order = the original order)."""
    r, w = dist_utils.rank(), dist_utils.world_size()
    return range(n * r // w, n * (r + 1) // w)


def _nanmean(values) -> float:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    volumes: Sequence[Any],
    num_classes: int,
    *,
    device: str | torch.device | None = None,
    region: str = "foreground",
    temperature: float | None = None,
    batch_size: int = 32,
    amp: bool = True,
    hd95: bool = True,
    class_names: Sequence[str] | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Evaluate ``model`` on whole ``volumes``; keys as in ``docs/architecture.md``.

    ``region`` is the voxel set of the headline calibration numbers (``foreground``: ground
    truth != 0, the paper's protocol; ``union``: ground truth or prediction foreground; ``all``).
    ``temperature`` T divides the logits (post-hoc temperature scaling). ``hd95=False`` skips the
    surface distances (fast validation during training). Dice and HD95 exclude the background.
    Under torch.distributed every rank must call it (collectives inside).
    """
    from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram

    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    check_temperature(temperature)
    check_volumes(volumes, num_classes)
    if class_names is None:
        class_names = ["background"] + [f"class{k}" for k in range(1, num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    device = dist_utils.local_device(pick_device(device))
    net = unwrap(model)
    was_training = net.training
    net.eval()

    meter = CalibrationMeter(
        num_classes, n_bins=n_bins, region=region, per_volume=True, device=device
    )
    meter_all = CalibrationMeter(num_classes, n_bins=n_bins, region="all", device=device)
    hist = LogitDistanceHistogram(num_classes, device=device)
    # per volume: number of region voxels, sum over them of mean_k |p_k - q_k|
    prob_sums = torch.zeros(len(volumes), 2, dtype=torch.float64, device=device)
    mine = {}
    try:
        for v in _shard(len(volumes)):
            vol = volumes[v]
            target = vol.label.to(device)
            logits = predict_logits(net, vol.image, device=device, batch_size=batch_size, amp=amp)
            if temperature is not None:
                logits = logits / temperature
            meter.update(logits, target)
            meter_all.update(logits, target)
            hist.update(logits)
            probs = torch.softmax(logits, dim=1)
            pred = probs.argmax(dim=1)
            if getattr(vol, "prob", None) is not None:
                mask = _region_mask(region, target, pred)
                prob_sums[v, 0] = mask.sum()
                prob_sums[v, 1] = (
                    (probs - vol.prob.to(device)).abs().mean(dim=1)[mask].double().sum()
                )
            mine[v] = _segmentation_scores(vol, pred.cpu().numpy(), num_classes, hd95)
    finally:
        net.train(was_training)

    dist_utils.all_reduce_sum(prob_sums)
    scores = {}
    for part in dist_utils.all_gather_objects(mine):
        scores.update(part)
    dice_v = np.stack([scores[v][0] for v in range(len(volumes))])  # (V, K-1)
    hd_v = np.stack([scores[v][1] for v in range(len(volumes))])
    cal, cal_all = meter.compute(), meter_all.compute()
    has_prob = all(getattr(vol, "prob", None) is not None for vol in volumes)
    ps = prob_sums.cpu().numpy()
    prob_gap_v = ps[:, 1] / np.where(ps[:, 0] > 0, ps[:, 0], np.nan) if has_prob else None

    fg_names = list(class_names[1:])
    per_volume = []
    for i, vol in enumerate(volumes):
        row = {
            "name": str(getattr(vol, "name", f"volume{i}")),
            "dice": _nanmean(dice_v[i]),
            "hd95": _nanmean(hd_v[i]),
            "dice_per_class": dict(zip(fg_names, map(float, dice_v[i]), strict=True)),
            "hd95_per_class": dict(zip(fg_names, map(float, hd_v[i]), strict=True)),
            "prob_gap": None if prob_gap_v is None else float(prob_gap_v[i]),
        }
        for key in (*_CAL_KEYS, "gap", "n_voxels"):
            row[key] = cal["per_volume"][key][i]
        per_volume.append(row)

    return {
        "dice": _nanmean(dice_v.ravel()),
        "hd95": _nanmean(hd_v.ravel()),
        **{key: float(cal[f"{key}_mean_over_volumes"]) for key in _CAL_KEYS},
        "ece_all": float(cal_all["ece"]),
        "cece_all": float(cal_all["cece"]),
        "gap": float(cal["gap_mean_over_volumes"]),
        "prob_gap": _nanmean(prob_gap_v) if has_prob else None,
        "temperature": None if temperature is None else float(temperature),
        "region": region,
        "n_volumes": len(volumes),
        "per_class": {
            name: {"dice": _nanmean(dice_v[:, k]), "hd95": _nanmean(hd_v[:, k])}
            for k, name in enumerate(fg_names)
        },
        "per_volume": per_volume,
        "calibration": {region: cal, "all": cal_all},
        "meter": _merged_dict(meter),
        "meter_all": _merged_dict(meter_all),
        "histogram": _merged_dict(hist),
    }


def _region_mask(region: str, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    if region == "foreground":
        return target != 0
    if region == "union":
        return (target != 0) | (pred != 0)
    return torch.ones_like(target, dtype=torch.bool)


def _segmentation_scores(vol, pred: np.ndarray, num_classes: int, hd95: bool):
    """Foreground Dice and HD95 (mm; NaN when skipped) of one volume, each ``(K-1,)``."""
    from mls_tutorial.metrics import dice_per_class, hd95_per_class

    label = vol.label.numpy()
    dice = np.asarray(dice_per_class(pred, label, num_classes), dtype=np.float64)
    if hd95:
        hd = np.asarray(
            hd95_per_class(pred, label, num_classes, spacing=tuple(vol.spacing)), dtype=np.float64
        )
    else:
        hd = np.full(num_classes - 1, np.nan)
    return dice, hd


def _merged_dict(obj) -> dict[str, Any]:
    """``obj.to_dict()`` of the union of every rank's data (``to_dict`` alone is rank-local).

    Metric states are additive tables (their ``compute`` all-reduces them with SUM): numeric
    entries are added across ranks and per-volume entries (``volumes``) concatenated rank-major.
    """
    parts = dist_utils.all_gather_objects(obj.to_dict())
    out = dict(parts[0])
    if len(parts) == 1:
        return out
    for key, value in out.items():
        if key == "volumes":
            out[key] = [v for p in parts for v in p[key]]
        elif key not in ("type", "config") and isinstance(value, list | int | float):
            out[key] = sum(np.asarray(p[key]) for p in parts).tolist()
    return out


def collect_logits(
    model: torch.nn.Module,
    volumes: Sequence[Any],
    *,
    device: torch.device,
    batch_size: int = 32,
    amp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every voxel's logits ``(M, K)`` float32 and labels ``(M,)`` over all ``volumes``."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    try:
        zs, ys = [], []
        for vol in volumes:
            z = predict_logits(net, vol.image, device=device, batch_size=batch_size, amp=amp)
            zs.append(z.movedim(1, -1).reshape(-1, z.shape[1]))
            ys.append(vol.label.to(device).reshape(-1))
    finally:
        net.train(was_training)
    return torch.cat(zs), torch.cat(ys)
