"""tce / ece_true / prob_gap against a float64 loop oracle; dice_bayes and the q reference row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mls_tutorial.metrics import true_calibration_error, truth_table
from mls_tutorial.metrics.truth import true_calibration


def oracle(probs: np.ndarray, q: np.ndarray, mask: np.ndarray, n_bins: int) -> dict:
    """Voxel by voxel in float64 (no vectorised binning, no shared code with the library)."""
    k = probs.shape[1]
    p = np.moveaxis(probs, 1, -1).reshape(-1, k)[mask.reshape(-1)]
    t = np.moveaxis(q, 1, -1).reshape(-1, k)[mask.reshape(-1)]
    tce, cw = 0.0, 0.0
    bins = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for pv, tv in zip(p, t, strict=True):
        j = int(np.argmax(pv))
        conf = float(pv[j])
        tce += abs(conf - tv[j])
        cw += float(np.mean(np.abs(pv - tv)))
        b = 0
        while b < n_bins - 1 and conf > (b + 1) / n_bins:  # bins (lo, hi], 0 in the first
            b += 1
        bins[b][0] += 1
        bins[b][1] += conf
        bins[b][2] += tv[j]
    n = len(p)
    ece = sum(abs(c - s) for _, c, s in bins) / n
    return {"tce": tce / n, "ece_true": ece, "prob_gap": cw / n}


def random_case(seed: int, shape=(3, 4, 9, 7)):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 3, 1)
    q = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, 1)
    mask = torch.rand((shape[0], *shape[2:]), generator=g) > 0.3
    return probs, q, mask


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_bins", [1, 15])
def test_matches_the_float64_oracle(seed, n_bins):
    probs, q, mask = random_case(seed)
    got = true_calibration_error(probs, q, mask, n_bins=n_bins)
    want = oracle(probs.numpy(), q.numpy(), mask.numpy(), n_bins)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["n_voxels"] == int(mask.sum())
    assert got["ece_true"] <= got["tce"] + 1e-12  # triangle inequality inside each bin


def test_tables_add_up_over_batches_and_confidence_edges_bin_like_the_meter():
    probs, q, mask = random_case(7, shape=(4, 3, 5, 5))
    whole = truth_table(probs, q, mask)
    parts = truth_table(probs[:2], q[:2], mask[:2]) + truth_table(probs[2:], q[2:], mask[2:])
    assert torch.allclose(whole, parts, atol=1e-12)
    # bins are (lo, hi]: a confidence on the edge 14/15 lies in bin 13, a confidence 1 in bin 14
    p = torch.tensor([[1 / 15, 1 - 1 / 15], [1.0, 0.0]], dtype=torch.float64).T[None, :, :, None]
    t = torch.full_like(p, 0.5)  # p: (1, 2 classes, 2 voxels, 1)
    table = truth_table(p, t, n_bins=15)
    assert table[13, 0] == 1 and table[14, 0] == 1


def test_perfect_and_known_cases():
    probs, q, _ = random_case(3)
    assert true_calibration_error(q, q)["tce"] == 0.0
    # confidence 0.9 on class 0 where class 0 truly has probability 0.6 everywhere
    p = torch.tensor([0.9, 0.1], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    t = torch.tensor([0.6, 0.4], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    res = true_calibration_error(p.contiguous(), t.contiguous())
    assert res["tce"] == pytest.approx(0.3) and res["ece_true"] == pytest.approx(0.3)
    assert res["prob_gap"] == pytest.approx(0.3)
    empty = true_calibration(torch.zeros(15, 5))
    assert math.isnan(empty["tce"]) and empty["n_voxels"] == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p, q, m: (p, q[:, :2], m), "q .*shape"),
        (lambda p, q, m: (p, q, m[:, :2]), "mask"),
        (lambda p, q, m: (p * float("nan"), q, m), "probs holds NaN"),
        (lambda p, q, m: (p, q.long(), m), "q must be a floating-point"),
        (lambda p, q, m: (p, q, m.float()), "mask"),
    ],
)
def test_bad_inputs_name_the_problem(change, match):
    probs, q, mask = random_case(0)
    with pytest.raises(ValueError, match=match):
        true_calibration_error(*change(probs, q, mask))
    with pytest.raises(ValueError, match="n_bins"):
        true_calibration_error(probs, q, mask, n_bins=0)


def test_evaluate_reports_truth_metrics_and_the_reference_row():
    """``evaluate`` on a tiny bundle with known q: its tce / dice_bayes equal direct formulas,
    and ``evaluate_true_probabilities`` scores q itself (tce 0, dice_bayes 1)."""
    from mls_tutorial.data import Volume
    from mls_tutorial.metrics import dice_per_class
    from mls_tutorial.train import evaluate, evaluate_true_probabilities

    g = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(3, 3, 8, 8, generator=g) * 3, 1)
    label = torch.multinomial(q.movedim(1, -1).reshape(-1, 3), 1, generator=g).view(3, 8, 8)
    image = torch.randn(3, 1, 8, 8, generator=g)
    vol = Volume("v", image, label, (1.0, 1.0, 1.0), q)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    res = evaluate(net, [vol], 3, device="cpu", hd95=False)
    with torch.no_grad():
        probs = torch.softmax(net(image), 1).double()
    fg = label != 0
    want = oracle(probs.numpy(), q.double().numpy(), fg.numpy(), 15)
    assert res["tce"] == pytest.approx(want["tce"], abs=1e-6)
    assert res["ece_true"] == pytest.approx(want["ece_true"], abs=1e-6)
    bayes = dice_per_class(probs.argmax(1).numpy(), q.argmax(1).numpy(), 3)
    assert res["dice_bayes"] == pytest.approx(float(np.nanmean(bayes)), abs=1e-12)
    ref = evaluate_true_probabilities([vol], 3, hd95=False)
    assert ref["tce"] == pytest.approx(0.0, abs=1e-6) and ref["dice_bayes"] == 1.0
    direct = dice_per_class(q.argmax(1).numpy(), label.numpy(), 3)
    assert ref["dice"] == pytest.approx(float(np.nanmean(direct)), abs=1e-12)
    no_q = Volume("v", image, label, (1.0, 1.0, 1.0))
    assert evaluate(net, [no_q], 3, device="cpu", hd95=False)["tce"] is None
    with pytest.raises(ValueError, match="true probabilities"):
        evaluate_true_probabilities([no_q], 3)
