"""``metrics.results``: the one assembler of a metrics.json results dict (keys, order, truth)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mls_tutorial.metrics.results import CAL_KEYS, TRUTH_KEYS, assemble, nanmean, volume_rows


def _inputs(truth: bool):
    cal_row = {**dict.fromkeys(CAL_KEYS, 0.1), "gap": 0.05, "n_voxels": 10}
    cal = {f"{k}_mean_over_volumes": 0.1 for k in (*CAL_KEYS, "gap")}
    return dict(
        names=["a", "b"],
        class_names=["background", "x", "y"],
        dice=np.array([[0.5, np.nan], [0.7, 0.9]]),
        hd95=np.array([[1.0, 2.0], [np.nan, np.nan]]),
        volume_cal=[cal_row, cal_row],
        cal=cal,
        cal_all={"ece": 0.2, "cece": 0.3},
        region="foreground",
        meter={},
        meter_all={},
        histogram={},
        temperature=None,
        truth=[dict.fromkeys(TRUTH_KEYS, 0.01), dict.fromkeys(TRUTH_KEYS, 0.03)] if truth else None,
        bayes=np.array([[0.8, 0.6], [1.0, 1.0]]) if truth else None,
    )


def test_nanmean_skips_none_and_nan_and_is_nan_when_nothing_is_finite():
    assert nanmean([1.0, None, np.nan, 3.0]) == 2.0
    assert math.isnan(nanmean([None, np.nan]))


def test_keys_in_metrics_json_order_with_and_without_truth():
    head = ["dice", "hd95", *CAL_KEYS, "ece_all", "cece_all", "gap"]
    tail = ["region", "n_volumes", "per_class", "per_volume", "calibration", "meter"]
    tail += ["meter_all", "histogram", "temperature"]
    with_truth = assemble(**_inputs(True))
    assert list(with_truth) == head + [*TRUTH_KEYS, "dice_bayes"] + tail
    assert with_truth["tce"] == pytest.approx(0.02) and with_truth["dice_bayes"] == 0.85
    assert list(with_truth["per_class"]["x"]) == ["dice", "hd95", "dice_bayes"]
    # a run's file keeps the truth keys as None; score's leaves them out
    run = assemble(**_inputs(False))
    assert list(run) == list(with_truth) and run["tce"] is None and run["dice_bayes"] is None
    assert run["per_volume"][0]["ece_true"] is None
    scored = assemble(**_inputs(False), absent_truth="omit")
    assert list(scored) == head + tail and "tce" not in scored["per_volume"][0]
    assert scored["dice"] == pytest.approx(0.7) and scored["per_volume"][0]["dice"] == 0.5
    assert scored["per_class"]["y"] == {"dice": 0.9, "hd95": 2.0}
    with pytest.raises(ValueError, match="absent_truth"):
        assemble(**_inputs(False), absent_truth="drop")


def test_volume_rows_turns_meter_columns_into_rows():
    cols = {k: [1, 2] for k in (*CAL_KEYS, "gap", "n_voxels")} | {"other": [0, 0]}
    rows = volume_rows(cols)
    assert len(rows) == 2 and rows[1]["gap"] == 2 and "other" not in rows[0]
