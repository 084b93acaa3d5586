"""The results dict of a ``metrics.json``: its keys, their order and their table headers, once.

``train.evaluate`` (a model on volumes) and ``score`` (saved probabilities on cases) both hand
their per-volume numbers to ``assemble``. With ``V`` volumes and ``K - 1`` foreground classes:

    dice, hd95              nanmean over the (V, K-1) table (each volume: over its classes)
    ece, cece, mce, brier,  the per-volume mean of the region meter (``*_mean_over_volumes``)
      nll, gap
    ece_all, cece_all       the pooled all-voxel meter
    prob_gap, tce, ece_true the mean over volumes against the true probabilities q
    dice_bayes              Dice against argmax q (nanmean over the (V, K-1) table)

``nanmean`` ignores None and NaN and is NaN when nothing is finite (an empty structure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: headline keys copied from the (per-volume mean of the) region meter
CAL_KEYS = ("ece", "cece", "mce", "brier", "nll")
#: per-volume means against the true probabilities (``metrics.truth``)
TRUTH_KEYS = ("prob_gap", "tce", "ece_true")
#: what each volume's row takes from its meter
VOLUME_CAL_KEYS = (*CAL_KEYS, "gap", "n_voxels")
#: metrics.json key -> column header of a results table
TABLE_COLUMNS = {
    "dice": "DSC",
    "dice_bayes": "DSC vs argmax q",
    "hd95": "HD95 (mm)",
    "ece": "ECE (fg)",
    "ece_true": "ECE vs q (fg)",
    "tce": "TCE (fg)",
    "cece": "CECE (fg)",
    "ece_all": "ECE (all)",
    "gap": "conf - acc (fg)",
    "prob_gap": "abs(p - q) (fg)",
    "temperature": "T",
}
#: keys where a smaller number is the better one
LOWER_IS_BETTER = {"ece", "cece", "ece_all", "ece_true", "tce", "hd95", "prob_gap", "nll"}


def nanmean(values) -> float:
    """Mean of the finite values (None counts as NaN); NaN when none is finite."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def volume_rows(columns: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """``CalibrationMeter.compute()["per_volume"]`` (a list per key) as one dict per volume."""
    n = len(columns[VOLUME_CAL_KEYS[0]])
    return [{key: columns[key][i] for key in VOLUME_CAL_KEYS} for i in range(n)]


def assemble(
    *,
    names: Sequence[str],
    class_names: Sequence[str],
    dice: np.ndarray,
    hd95: np.ndarray,
    volume_cal: Sequence[Mapping[str, Any]],
    cal: dict[str, Any],
    cal_all: dict[str, Any],
    region: str,
    meter: dict[str, Any],
    meter_all: dict[str, Any],
    histogram: dict[str, Any],
    temperature: float | None,
    truth: Sequence[Mapping[str, float]] | None = None,
    bayes: np.ndarray | None = None,
    absent_truth: str = "none",
) -> dict[str, Any]:
    """The results dict, keys in ``metrics.json`` order.

    ``names``: the V volumes; ``class_names``: all K classes, background first; ``dice``,
    ``hd95``, ``bayes`` (Dice against argmax q): ``(V, K-1)``; ``volume_cal``: each volume's
    meter numbers (``VOLUME_CAL_KEYS``); ``cal`` / ``cal_all``: ``compute()`` of the region
    and the all-voxel meter; ``meter``, ``meter_all``, ``histogram``: their ``to_dict()``;
    ``truth``: each volume's ``true_calibration`` (None without true probabilities).
    ``absent_truth``: without true probabilities, ``"none"`` writes the truth keys and
    ``dice_bayes`` as None (a run's metrics.json), ``"omit"`` leaves them out (``score``'s).
    """
    if absent_truth not in ("none", "omit"):
        raise ValueError(f"absent_truth must be 'none' or 'omit', got {absent_truth!r}")
    has_truth = truth is not None
    write_truth = has_truth or absent_truth == "none"
    fg = list(class_names[1:])
    per_volume = []
    for i, name in enumerate(names):
        row = {
            "name": name,
            "dice": nanmean(dice[i]),
            "hd95": nanmean(hd95[i]),
            "dice_per_class": dict(zip(fg, map(float, dice[i]), strict=True)),
            "hd95_per_class": dict(zip(fg, map(float, hd95[i]), strict=True)),
        }
        if write_truth:
            for key in TRUTH_KEYS:
                row[key] = truth[i][key] if has_truth else None
            row["dice_bayes"] = nanmean(bayes[i]) if has_truth else None
        row.update({key: volume_cal[i][key] for key in VOLUME_CAL_KEYS})
        per_volume.append(row)

    per_class = {}
    for k, name in enumerate(fg):
        per_class[name] = {"dice": nanmean(dice[:, k]), "hd95": nanmean(hd95[:, k])}
        if has_truth:
            per_class[name]["dice_bayes"] = nanmean(bayes[:, k])
    out = {
        "dice": nanmean(dice.ravel()),
        "hd95": nanmean(hd95.ravel()),
        **{key: float(cal[f"{key}_mean_over_volumes"]) for key in CAL_KEYS},
        "ece_all": float(cal_all["ece"]),
        "cece_all": float(cal_all["cece"]),
        "gap": float(cal["gap_mean_over_volumes"]),
    }
    if write_truth:
        for key in TRUTH_KEYS:
            out[key] = nanmean([t[key] for t in truth]) if has_truth else None
        out["dice_bayes"] = nanmean(bayes.ravel()) if has_truth else None
    out.update(
        {
            "region": region,
            "n_volumes": len(names),
            "per_class": per_class,
            "per_volume": per_volume,
            "calibration": {region: cal, "all": cal_all},
            "meter": meter,
            "meter_all": meter_all,
            "histogram": histogram,
            "temperature": temperature,
        }
    )
    return out
