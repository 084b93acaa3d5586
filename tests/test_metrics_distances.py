"""LogitDistanceHistogram against a NumPy reference; exactness at margins and bin edges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mls_tutorial.metrics import LogitDistanceHistogram, distance_summary

K = 4


def reference(logits: np.ndarray, mask: np.ndarray | None = None):
    """Non-winning distances and per-voxel means (float32, as in the paper), one row a voxel."""
    z = np.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1]).astype(np.float32)
    if mask is not None:
        z = z[mask.reshape(-1)]
    winner = z.argmax(1)
    d = z.max(1, keepdims=True) - z  # float32, like the histogram
    others = np.ones_like(d, dtype=bool)
    others[np.arange(len(z)), winner] = False
    mean = d.sum(1, dtype=np.float32) / np.float32(z.shape[1] - 1)
    return d[others].astype(np.float64), mean.astype(np.float64)


def ref_hist(values: np.ndarray, edges: np.ndarray):
    """Right-closed bins with 0 in the first; values above the last edge overflow."""
    idx = np.clip(np.searchsorted(edges, values, side="left") - 1, 0, None)
    over = values > edges[-1]
    return np.bincount(idx[~over], minlength=len(edges) - 1), int(over.sum())


def integer_logits(seed: int, shape=(2, K, 9, 8)) -> torch.Tensor:
    """Logits on a 0.5 grid: every distance and mean lands exactly on margins and edges."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-30, 30, shape, generator=g).float() / 2


@pytest.mark.parametrize("logits_fn", [integer_logits, lambda s: torch.randn(2, K, 9, 8) * 8])
def test_histograms_match_reference(logits_fn):
    torch.manual_seed(0)
    logits = logits_fn(0)
    hist = LogitDistanceHistogram(K, max_distance=20.0, n_bins=40)
    hist.update(logits[:1])
    hist.update(logits[1:])
    d, mean = reference(logits.numpy())
    for summary, values in (("all", d), ("mean", mean)):
        h = hist.histogram(summary)
        counts, over = ref_hist(values, h["edges"])
        np.testing.assert_array_equal(h["counts"], counts)
        assert h["overflow"] == over and h["n"] == len(values) and h["summary"] == summary
    assert hist.histogram()["n"] == logits[:, 0].numel() * (K - 1)  # winner excluded


def test_fraction_above_is_exact_at_margins_and_edges():
    logits = integer_logits(1)
    hist = LogitDistanceHistogram(K, max_distance=20.0, n_bins=8, margins=(0, 1.25, 5, 7, 30))
    hist.update(logits)
    d, mean = reference(logits.numpy())
    assert (d == 5.0).any() and (d == 0.0).any()  # values sit exactly on margins
    for margin in (0, 1.25, 5, 7, 30, 2.5, 20.0):  # margins, then bin edges (width 2.5)
        assert hist.count_above(margin) == int((d > margin).sum())
        assert hist.fraction_above(margin) == pytest.approx((d > margin).mean(), abs=0)
        assert hist.fraction_above(margin, "mean") == pytest.approx((mean > margin).mean(), abs=0)
    with pytest.raises(ValueError, match="exact margins"):
        hist.fraction_above(4.0)
    with pytest.raises(ValueError, match="margin"):
        hist.fraction_above(-1.0)
    with pytest.raises(ValueError, match="summary"):
        hist.fraction_above(5, summary="median")


def test_mask_ties_and_overflow():
    logits = torch.tensor([[5.0, 5.0, 0.0, -130.0], [1.0, 2.0, 3.0, 4.0]]).reshape(2, K, 1)
    hist = LogitDistanceHistogram(K, max_distance=40.0, n_bins=80)
    hist.update(logits, mask=torch.tensor([[True], [False]]))
    h = hist.histogram()
    # winner class 0; class 1 ties it (d = 0, first bin); d = 5 in (4.5, 5]; d = 135 overflows
    assert h["n"] == 3 and h["overflow"] == 1 and h["counts"][0] == 1 and h["counts"][9] == 1
    assert hist.histogram("mean")["overflow"] == 1  # mean (0 + 5 + 135) / 3 > 40
    assert math.isnan(LogitDistanceHistogram(K).fraction_above(5))


def test_bad_input():
    hist = LogitDistanceHistogram(K)
    with pytest.raises(ValueError, match="NaN"):
        hist.update(torch.tensor([[0.0, math.nan, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        hist.update(torch.zeros(2, K + 1))
    with pytest.raises(ValueError, match="mask"):
        hist.update(torch.zeros(2, K, 3), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        hist.update(torch.zeros(2, K, 3), mask=torch.ones(2, 3))
    for kwargs in ({"max_distance": 0}, {"n_bins": 0}, {"margins": (-1,)}, {"num_classes": 1}):
        with pytest.raises(ValueError):
            LogitDistanceHistogram(**{"num_classes": K, **kwargs})
    assert hist.histogram()["n"] == 0  # nothing was added by the failed calls


def test_serialisation_round_trip():
    hist = LogitDistanceHistogram(K, max_distance=10.0, n_bins=20, margins=(0.3, 5))
    hist.update(integer_logits(2))
    rebuilt = LogitDistanceHistogram.from_dict(json.loads(json.dumps(hist.to_dict())))
    for summary in ("all", "mean"):
        a, b = hist.histogram(summary), rebuilt.histogram(summary)
        np.testing.assert_array_equal(a["counts"], b["counts"])
        assert a["overflow"] == b["overflow"]
    assert rebuilt.fraction_above(0.3) == hist.fraction_above(0.3)
    with pytest.raises(ValueError, match="config"):
        LogitDistanceHistogram(K).load_state_dict(hist.state_dict())
    hist.reset()
    assert hist.histogram()["n"] == 0


def test_distance_summary_is_the_float64_mean_and_exact_shares():
    torch.manual_seed(3)
    chunks = [torch.randn(2, K, 9, 8) * 6, integer_logits(4), torch.randn(1, K, 5, 3) * 20]
    d = np.concatenate([reference(c.numpy())[0] for c in chunks])
    out = distance_summary(chunks, margins=(0, 5, 7.5))
    assert out["n"] == d.size and out["voxels"] == sum(c[:, 0].numel() for c in chunks)
    assert out["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["max"] == pytest.approx(d.max(), rel=1e-6)
    for m in (0, 5, 7.5):
        assert out["share_above"][m] == (d > m).mean()  # exact, as the histogram counts
    # one tensor = the same tensor in chunks; agrees with the histogram's exact counts
    whole = torch.cat([integer_logits(5), integer_logits(6)])
    hist = LogitDistanceHistogram(K)
    hist.update(whole)
    a = distance_summary(whole, margins=(5,))
    b = distance_summary([whole[:1], whole[1:]], margins=(5,))
    assert a == b and a["share_above"][5.0] == hist.fraction_above(5)
    assert distance_summary(whole.half(), (5,))["n"] == a["n"]  # half precision upcast


def test_distance_summary_names_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        distance_summary(torch.tensor([[0.0, math.inf, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        distance_summary(torch.zeros(3))
    with pytest.raises(ValueError, match="disagree on K"):
        distance_summary([torch.zeros(1, 3), torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="no chunk"):
        distance_summary([])
    with pytest.raises(ValueError, match="margins"):
        distance_summary(torch.zeros(1, 3), margins=(-1,))
    with pytest.raises(ValueError, match="no voxel"):
        distance_summary(torch.zeros(0, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits = torch.randn(2, K, 33, 17) * 9
    mask = torch.rand(2, 33, 17) > 0.3
    results = []
    for device in ("cpu", "cuda"):
        hist = LogitDistanceHistogram(K)
        hist.update(logits.to(device), mask=mask.to(device))
        assert hist._counts.device.type == device
        results.append([hist.histogram(s)["counts"].tolist() for s in ("all", "mean")])
        results[-1].append(hist.fraction_above(5))
    assert results[0] == results[1]
