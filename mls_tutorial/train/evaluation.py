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
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mls_tutorial.device import autocast, pick_device
from mls_tutorial.train import distributed as dist_utils


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
    on_logits: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on whole ``volumes``; keys as in ``docs/architecture.md``.

    ``region`` is the voxel set of the headline calibration numbers (``foreground``: ground
    truth != 0, the paper's protocol; ``union``: ground truth or prediction foreground; ``all``).
    ``temperature`` T divides the logits (post-hoc temperature scaling). ``hd95=False`` skips the
    surface distances (fast validation during training). Dice and HD95 exclude the background.
    Volumes with true probabilities ``prob`` add ``tce``, ``ece_true``, ``prob_gap`` (see
    ``metrics.truth``) and ``dice_bayes`` (Dice against ``argmax prob``).
    ``on_logits(logits, labels)``, when given, sees each volume's logits ``(S, K, H, W)`` (after
    the temperature) and labels ``(S, H, W)`` on ``device``, this rank's volumes only (how ``fit``
    feeds an adaptive loss without a second forward pass).
    Under torch.distributed every rank must call it (collectives inside).
    """
    check_temperature(temperature)
    device = dist_utils.local_device(pick_device(device))
    net = unwrap(model)
    was_training = net.training
    net.eval()

    def logits_of(vol) -> torch.Tensor:
        logits = predict_logits(net, vol.image, device=device, batch_size=batch_size, amp=amp)
        logits = logits if temperature is None else logits / temperature
        if on_logits is not None:
            on_logits(logits, vol.label.to(device))
        return logits

    try:
        return _evaluate_volumes(
            logits_of,
            volumes,
            num_classes,
            device,
            region,
            hd95,
            class_names,
            n_bins,
            temperature=None if temperature is None else float(temperature),
        )
    finally:
        net.train(was_training)


@torch.no_grad()
def evaluate_true_probabilities(
    volumes: Sequence[Any],
    num_classes: int,
    *,
    region: str = "foreground",
    hd95: bool = True,
    class_names: Sequence[str] | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """The reference row: the true probabilities ``q = Volume.prob`` scored as a prediction.

    Same keys as ``evaluate`` (logits ``log q``, so ``softmax = q``), against the same sampled
    labels: the best Dice and ECE any network can expect on average. ``tce``, ``ece_true`` and
    ``prob_gap`` are 0 and ``dice_bayes`` 1 up to float32 rounding (and argmax ties in ``q``).
    """
    if any(getattr(v, "prob", None) is None for v in volumes):
        raise ValueError("every volume needs true probabilities (Volume.prob), e.g. data='mni'")
    return _evaluate_volumes(
        lambda vol: vol.prob.clamp_min(1e-30).log(),
        volumes,
        num_classes,
        torch.device("cpu"),
        region,
        hd95,
        class_names,
        n_bins,
        temperature=None,
    )


def _evaluate_volumes(
    logits_of, volumes, num_classes, device, region, hd95, class_names, n_bins, *, temperature
) -> dict[str, Any]:
    """The body of ``evaluate``: ``logits_of(volume) -> (S, K, H, W)`` logits on ``device``."""
    from mls_tutorial.metrics import REGIONS, CalibrationMeter, LogitDistanceHistogram
    from mls_tutorial.metrics.results import assemble, volume_rows
    from mls_tutorial.metrics.truth import TRUTH_COLUMNS, true_calibration, truth_table

    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    check_volumes(volumes, num_classes)
    if class_names is None:
        class_names = ["background"] + [f"class{k}" for k in range(1, num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")

    meter = CalibrationMeter(
        num_classes, n_bins=n_bins, region=region, per_volume=True, device=device
    )
    meter_all = CalibrationMeter(num_classes, n_bins=n_bins, region="all", device=device)
    hist = LogitDistanceHistogram(num_classes, device=device)
    # per volume: truth_table over the region voxels (tce, ece_true, prob_gap)
    truth = torch.zeros(len(volumes), n_bins, len(TRUTH_COLUMNS), dtype=torch.float64)
    truth = truth.to(device)
    mine = {}
    for v in _shard(len(volumes)):
        vol = volumes[v]
        target = vol.label.to(device)
        logits = logits_of(vol)
        meter.update(logits, target)
        meter_all.update(logits, target)
        hist.update(logits)
        probs = torch.softmax(logits, dim=1)
        pred = probs.argmax(dim=1)
        if getattr(vol, "prob", None) is not None:
            mask = _region_mask(region, target, pred)
            truth[v] = truth_table(probs, vol.prob.to(device), mask, n_bins)
        mine[v] = _segmentation_scores(vol, pred.cpu().numpy(), num_classes, hd95)

    dist_utils.all_reduce_sum(truth)
    scores = {}
    for part in dist_utils.all_gather_objects(mine):
        scores.update(part)
    dice_v, hd_v, bayes_v = (
        np.stack([scores[v][j] for v in range(len(volumes))]) for j in range(3)
    )  # each (V, K-1)
    has_prob = all(getattr(vol, "prob", None) is not None for vol in volumes)
    cal, cal_all = meter.compute(), meter_all.compute()  # collectives: every rank, this order
    return assemble(
        names=[str(getattr(vol, "name", f"volume{i}")) for i, vol in enumerate(volumes)],
        class_names=class_names,
        dice=dice_v,
        hd95=hd_v,
        volume_cal=volume_rows(cal["per_volume"]),
        cal=cal,
        cal_all=cal_all,
        region=region,
        meter=_merged_dict(meter),
        meter_all=_merged_dict(meter_all),
        histogram=_merged_dict(hist),
        temperature=temperature,
        truth=[true_calibration(t) for t in truth] if has_prob else None,
        bayes=bayes_v,
    )


def _region_mask(region: str, target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    if region == "foreground":
        return target != 0
    if region == "union":
        return (target != 0) | (pred != 0)
    return torch.ones_like(target, dtype=torch.bool)


def _segmentation_scores(vol, pred: np.ndarray, num_classes: int, hd95: bool):
    """Foreground Dice, HD95 (mm; NaN when skipped) and Dice against ``argmax prob`` (NaN
    without true probabilities) of one volume, each ``(K-1,)``."""
    from mls_tutorial.metrics import dice_per_class, hd95_per_class

    label = vol.label.numpy()
    dice = np.asarray(dice_per_class(pred, label, num_classes), dtype=np.float64)
    if hd95:
        hd = np.asarray(
            hd95_per_class(pred, label, num_classes, spacing=tuple(vol.spacing)), dtype=np.float64
        )
    else:
        hd = np.full(num_classes - 1, np.nan)
    if getattr(vol, "prob", None) is not None:
        bayes = vol.prob.argmax(dim=1).numpy()
        dice_bayes = np.asarray(dice_per_class(pred, bayes, num_classes), dtype=np.float64)
    else:
        dice_bayes = np.full(num_classes - 1, np.nan)
    return dice, hd, dice_bayes


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
