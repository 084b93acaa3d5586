"""CalibrationMeter against torchmetrics, netcal and MONAI where their conventions coincide.

Peers bin ``[lo, hi)`` (torchmetrics, netcal) or use float32 edges shifted by eps (MONAI), we bin
``(lo, hi]``: the samples below keep every probability at least 1e-6 away from a bin edge, and
are not saturated (netcal clips to [eps, 1 - eps]; torchmetrics puts 1.0 in a hidden bin).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mls_tutorial.metrics import CalibrationMeter

K, B = 4, 15


def away_from_edges(n: int, seed: int, scale: float = 1.5):
    """float32 probabilities (n', K) with every value >= 1e-6 from an edge b/B, labels (n',)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, K, generator=g) * scale, dim=1)
    target = torch.randint(0, K, (n,), generator=g)
    scaled = probs.double() * B
    ok = ((scaled - scaled.round()).abs() > 1e-6 * B).all(dim=1)
    return probs[ok], target[ok]


def meter_on(probs, target) -> dict:
    meter = CalibrationMeter(K, n_bins=B)
    meter.update_probs(probs, target)
    return meter.compute()


def test_torchmetrics_binary_float64_per_class():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    probs, target = away_from_edges(20_000, 0)
    result = meter_on(probs, target)
    for k in range(K):
        theirs = tm.binary_calibration_error(probs[:, k].double(), (target == k).long(), n_bins=B)
        assert theirs.dtype == torch.float64
        assert result["ece_per_class"][k] == pytest.approx(float(theirs), abs=1e-12)


@pytest.mark.parametrize(("norm", "key"), [("l1", "ece"), ("max", "mce"), ("l2", "rmsce")])
def test_torchmetrics_multiclass_top_label(norm, key):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    probs, target = away_from_edges(10_000, 1)
    result = meter_on(probs, target)
    theirs = tm.multiclass_calibration_error(probs, target, num_classes=K, n_bins=B, norm=norm)
    assert result[key] == pytest.approx(float(theirs), abs=1e-5)


@pytest.mark.parametrize(("name", "key"), [("ECE", "ece"), ("MCE", "mce"), ("ACE", "ace")])
def test_netcal_top_label(name, key):
    netcal_metrics = pytest.importorskip("netcal.metrics")
    probs, target = away_from_edges(10_000, 2)
    result = meter_on(probs, target)
    theirs = getattr(netcal_metrics, name)(bins=B).measure(probs.double().numpy(), target.numpy())
    assert result[key] == pytest.approx(float(theirs), abs=1e-10)


def test_monai_per_volume_classwise():
    monai_metrics = pytest.importorskip("monai.metrics")
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(1, K, 48, 40, generator=g) * 1.5, dim=1)
    target = torch.randint(0, K, (1, 48, 40), generator=g)
    scaled = probs.double() * B
    assert ((scaled - scaled.round()).abs() > 1e-6).all()  # away from the edges
    meter = CalibrationMeter(K, n_bins=B, per_volume=True)
    meter.update_probs(probs, target)
    result = meter.compute()
    onehot = torch.nn.functional.one_hot(target, K).movedim(-1, 1).float()
    metric = monai_metrics.CalibrationErrorMetric(
        num_bins=B, include_background=True, metric_reduction="none", right=True
    )
    theirs = metric(y_pred=probs, y=onehot)[0]
    np.testing.assert_allclose(result["ece_per_class"], theirs.double().numpy(), atol=1e-5)
    assert result["per_volume"]["cece"][0] == pytest.approx(float(theirs.mean()), abs=1e-5)
