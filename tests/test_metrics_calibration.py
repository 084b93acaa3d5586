"""CalibrationMeter and the functional forms against a float64 NumPy oracle (1e-12)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_metrics_oracle import bin_index, flatten, softmax
from test_metrics_oracle import metrics as oracle

from mls_tutorial.metrics import (
    CalibrationMeter,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)

KEYS = ("ece", "mce", "rmsce", "ace", "cece", "brier", "accuracy", "confidence")
K = 4


def sample(seed: int, shape=(3, K, 9, 11), scale=3.0, special=True):
    """float32 logits, their float32 softmax with exact 0/1/edge/tie rows, int64 labels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * scale
    probs = torch.softmax(logits, dim=1)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if special:
        flat = probs.movedim(1, -1).reshape(-1, shape[1])  # a copy
        k = shape[1]
        rows = [
            [1.0] + [0.0] * (k - 1),  # confidence exactly 1 (must be in the LAST bin)
            [0.0] * (k - 1) + [1.0],
            [0.5, 0.5] + [0.0] * (k - 2),  # edge 0.5 and a tie (top label -> class 0)
            [0.25, 0.75] + [0.0] * (k - 2),  # dyadic edges
            [1.0 / k] * k,  # k-way tie
            [float(np.float32(1 / 15)), float(np.float32(14 / 15))] + [0.0] * (k - 2),
        ]
        flat[: len(rows)] = torch.tensor(rows)
        probs = flat.reshape(shape[0], *shape[2:], k).movedim(-1, 1).contiguous()
    return logits, probs, target


def np_flat(scores, target):
    return flatten(scores.double().numpy(), target.numpy())


def assert_close(result: dict, expected: dict, keys=KEYS, tol=1e-12):
    for key in keys:
        a, b = result[key], expected[key]
        if math.isnan(b):
            assert math.isnan(a), key
        else:
            assert abs(a - b) <= tol, (key, a, b)


@pytest.mark.parametrize("n_bins", [1, 2, 10, 15, 16])
def test_matches_float64_oracle(n_bins):
    _, probs, target = sample(0)
    meter = CalibrationMeter(K, n_bins=n_bins)
    meter.update_probs(probs, target)
    result = meter.compute()
    p, y = np_flat(probs, target)
    expected = oracle(p, y, n_bins)
    assert_close(result, expected)
    assert result["n_voxels"] == expected["n_voxels"] == y.size
    np.testing.assert_allclose(result["ece_per_class"], expected["ece_per_class"], atol=1e-12)
    assert math.isnan(result["nll"])  # probabilities only: no NLL


def test_logits_path_and_nll():
    logits, _, target = sample(1, special=False)
    meter = CalibrationMeter(K)
    meter.update(logits, target)
    result = meter.compute()
    z, y = np_flat(logits, target)
    expected = oracle(softmax(z), y, 15, logits=z)  # float64 softmax of the float32 logits
    assert_close(result, expected, keys=(*KEYS, "nll"))
    assert negative_log_likelihood(logits, target) == pytest.approx(result["nll"], abs=1e-12)


def test_nll_is_nan_once_probabilities_were_scored():
    logits, probs, target = sample(13)
    meter = CalibrationMeter(K)
    meter.update(logits, target)
    assert not math.isnan(meter.compute()["nll"])
    meter.update_probs(probs, target)
    assert math.isnan(meter.compute()["nll"]) and not math.isnan(meter.compute()["brier"])


def test_half_precision_logits_are_upcast():
    logits, _, target = sample(2, special=False)
    half = logits.half()
    a, b = CalibrationMeter(K), CalibrationMeter(K)
    a.update(half, target)
    b.update(half.float(), target)
    assert a.compute() == b.compute()


def test_functional_forms():
    _, probs, target = sample(3)
    p, y = np_flat(probs, target)
    expected = oracle(p, y, 10)
    assert expected_calibration_error(probs, target, n_bins=10) == pytest.approx(
        expected["ece"], abs=1e-12
    )
    assert classwise_calibration_error(probs, target, n_bins=10) == pytest.approx(
        expected["cece"], abs=1e-12
    )
    assert brier_score(probs, target) == pytest.approx(expected["brier"], abs=1e-12)


@pytest.mark.parametrize("region", ["all", "foreground", "union"])
@pytest.mark.parametrize("ignore_index", [None, 255, 2])
def test_regions_and_ignore_index(region, ignore_index):
    _, probs, target = sample(4)
    if ignore_index is not None:
        target = target.clone()
        target[:, :3] = ignore_index
    meter = CalibrationMeter(K, region=region, ignore_index=ignore_index)
    meter.update_probs(probs, target)
    p, y = np_flat(probs, target)
    keep = np.ones(len(y), bool) if ignore_index is None else y != ignore_index
    if region == "foreground":
        keep &= y != 0
    elif region == "union":
        keep &= (y != 0) | (p.argmax(1) != 0)
    expected = oracle(p[keep], y[keep], 15)
    result = meter.compute()
    assert_close(result, expected)
    assert result["n_voxels"] == keep.sum() < len(y) or region == "all" and ignore_index is None


@pytest.mark.parametrize("from_logits", [False, True])
def test_chunking_and_permutation_invariance(from_logits):
    logits, probs, target = sample(5, shape=(1, K, 4000))
    scores = logits if from_logits else probs

    def add(meter, s, y):
        (meter.update if from_logits else meter.update_probs)(s, y)

    whole = CalibrationMeter(K)
    add(whole, scores, target)
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(0))
    pieces = CalibrationMeter(K)
    bounds = [0, 1, 7, 1000, 1001, 2500, 4000]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        sel = perm[a:b]
        # a different layout each time: (N, K) rows, or (1, K, S) volumes
        chunk_s, chunk_y = scores[0][:, sel], target[0][sel]
        if a % 2:
            add(pieces, chunk_s.T.contiguous(), chunk_y)
        else:
            add(pieces, chunk_s[None], chunk_y[None])
    r1, r2 = whole.compute(), pieces.compute()
    assert_close(r2, r1, keys=(*KEYS, "nll"))
    np.testing.assert_array_equal(whole.reliability()["counts"], pieces.reliability()["counts"])
    for c in range(K):
        np.testing.assert_array_equal(
            whole.reliability(c)["counts"], pieces.reliability(c)["counts"]
        )


@pytest.mark.parametrize("shape", [(3, K, 5, 11), (40, K)])
def test_cpu_pieces_give_the_same_numbers(monkeypatch, shape):
    """The CPU path cuts a batch into cache-sized pieces: force tiny ones (columns, then rows)."""
    from mls_tutorial.metrics import _binning

    logits, _, target = sample(12, shape=shape, special=False)
    whole = CalibrationMeter(K, region="union")
    whole.update(logits, target)
    monkeypatch.setattr(_binning, "PIECE_VOXELS_ONE_THREAD", 7)
    monkeypatch.setattr(_binning, "PIECE_VOXELS_THREADS", 7)
    pieces = CalibrationMeter(K, region="union")
    pieces.update(logits, target)
    assert_close(pieces.compute(), whole.compute(), keys=(*KEYS, "nll"))
    np.testing.assert_array_equal(pieces.reliability()["counts"], whole.reliability()["counts"])
    bad = target.clone()
    bad.view(-1)[-1] = K  # a bad label in the last piece: nothing of the batch is kept
    with pytest.raises(ValueError, match="labels"):
        pieces.update(logits, bad)
    assert pieces.compute()["n_voxels"] == whole.compute()["n_voxels"]


def test_edges_exact_zero_and_one():
    n_bins = 10
    # confidence 1.0 -> last bin; 0.5 -> bin 4 = (0.4, 0.5]; next float above 0.5 -> bin 5
    above = float(np.nextafter(np.float32(0.5), np.float32(1)))
    probs = torch.tensor(
        [[1.0, 0.0], [0.5, 0.5], [above, 1 - above], [0.0, 1.0]], dtype=torch.float32
    )
    target = torch.tensor([0, 1, 0, 1])
    meter = CalibrationMeter(2, n_bins=n_bins)
    meter.update_probs(probs, target)
    top = meter.reliability()
    assert top["counts"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 2]
    assert top["counts"].sum() == 4 and len(top["edges"]) == n_bins + 1
    cls0 = meter.reliability(0)["counts"]  # s_0 = 1, 0.5, above, 0
    assert cls0[0] == 1 and cls0[4] == 1 and cls0[5] == 1 and cls0[-1] == 1
    assert bin_index(np.array([0.5, above]), n_bins).tolist() == [4, 5]  # the oracle agrees
    # tie [0.5, 0.5]: top label is class 0, label 1 -> a miss in bin 4
    assert top["accuracy"][4] == 0.0


def test_absent_class_is_averaged_in():
    _, probs, target = sample(6)
    target = target.clamp(max=K - 2)  # class K - 1 is never the label
    meter = CalibrationMeter(K)
    meter.update_probs(probs, target)
    result = meter.compute()
    p, y = np_flat(probs, target)
    expected = oracle(p, y, 15)
    assert_close(result, expected)
    # the absent class counts in the mean: its ECE is the mean of s_{K-1} (accuracy 0)
    assert result["ece_per_class"][-1] == pytest.approx(p[:, -1].mean(), abs=1e-12)
    assert result["cece"] == pytest.approx(np.mean(result["ece_per_class"]), abs=1e-15)


def test_empty_region_is_nan_never_zero():
    _, probs, _ = sample(7)
    target = torch.zeros(probs.shape[0], *probs.shape[2:], dtype=torch.int64)
    meter = CalibrationMeter(K, region="foreground")
    meter.update_probs(probs, target)
    result = meter.compute()
    assert result["n_voxels"] == 0
    for key in (*KEYS, "nll"):
        assert math.isnan(result[key]), key
    rel = meter.reliability()
    assert rel["n"] == 0 and math.isnan(rel["ece"]) and np.isnan(rel["accuracy"]).all()
    fresh = CalibrationMeter(K).compute()
    assert math.isnan(fresh["ece"]) and fresh["n_voxels"] == 0


def test_per_volume_values_means_and_pooled():
    vols = [sample(10 + i, shape=(2, K, 7, 5)) for i in range(3)]
    meter = CalibrationMeter(K, per_volume=True, region="foreground")
    empty_probs = vols[0][1]
    empty_target = torch.zeros(2, 7, 5, dtype=torch.int64)
    for logits, _, target in vols:
        meter.update(logits, target)
    meter.update_probs(empty_probs, empty_target)  # an empty region: NaN, excluded from means
    result = meter.compute()
    per = result["per_volume"]
    assert result["n_volumes"] == 4 and result["n_empty_volumes"] == 1
    assert math.isnan(per["ece"][3]) and per["n_voxels"][3] == 0
    expected, all_p, all_y, all_z = [], [], [], []
    for logits, _, target in vols:
        z, y = np_flat(logits, target)
        p = softmax(z)
        fg = y != 0
        expected.append(oracle(p[fg], y[fg], 15, logits=z[fg]))
        all_p.append(p[fg]), all_y.append(y[fg]), all_z.append(z[fg])
    for i, exp in enumerate(expected):
        for key in KEYS:
            assert per[key][i] == pytest.approx(exp[key], abs=1e-12), key
    for key in KEYS:
        assert result[f"{key}_mean_over_volumes"] == pytest.approx(
            np.mean([e[key] for e in expected]), abs=1e-12
        )
    pooled = oracle(np.concatenate(all_p), np.concatenate(all_y), 15, logits=np.concatenate(all_z))
    assert_close(result, pooled)
    # the probabilities-only volume scored no voxel, so the NLL stays defined
    assert result["nll"] == pytest.approx(pooled["nll"], abs=1e-12)
    # the count-weighted mean of per-volume ECE is >= the pooled ECE
    n = np.array(per["n_voxels"][:3])
    assert (np.array(per["ece"][:3]) * n).sum() / n.sum() >= result["ece"] - 1e-15


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m: m.update_probs(torch.rand(2, K, 3), torch.zeros(2, 4, dtype=torch.long)),
            "shape",
        ),
        (
            lambda m: m.update_probs(torch.rand(2, 3, 3), torch.zeros(2, 3, dtype=torch.long)),
            "classes",
        ),
        (
            lambda m: m.update_probs(torch.rand(2, K), torch.tensor([0, K])),
            r"labels must be in \[0, 4\)",
        ),
        (lambda m: m.update_probs(torch.rand(2, K), torch.tensor([-1, 0])), "labels"),
        (lambda m: m.update_probs(torch.rand(2, K) + 0.5, torch.tensor([0, 1])), r"\[0, 1\]"),
        (lambda m: m.update_probs(-torch.rand(2, K), torch.tensor([0, 1])), r"\[0, 1\]"),
        (lambda m: m.update_probs(torch.full((2, K), math.nan), torch.tensor([0, 1])), "NaN"),
        (lambda m: m.update(torch.tensor([[0.0, math.nan, 1, 2]]), torch.tensor([0])), "NaN"),
        (lambda m: m.update(torch.tensor([[0.0, math.inf, 1, 2]]), torch.tensor([0])), "inf"),
        (lambda m: m.update(torch.rand(2, K), torch.rand(2)), "integer"),
        (lambda m: m.update(torch.zeros(2, K, dtype=torch.long), torch.tensor([0, 1])), "floating"),
        (lambda m: m.update(torch.rand(K), torch.tensor([0])), "shape"),
        (lambda m: m.update([[0.1] * K], torch.tensor([0])), "numpy"),
    ],
)
def test_bad_input_raises_and_leaves_state(call, match):
    meter = CalibrationMeter(K)
    _, probs, target = sample(8)
    meter.update_probs(probs, target)
    before = meter.compute()
    with pytest.raises(ValueError, match=match):
        call(meter)
    assert meter.compute() == before


def test_bad_construction():
    for kwargs, match in [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": K, "n_bins": 0}, "n_bins"),
        ({"num_classes": K, "n_bins": 2.5}, "n_bins"),
        ({"num_classes": K, "region": "roi"}, "region"),
    ]:
        with pytest.raises(ValueError, match=match):
            CalibrationMeter(**kwargs)
    with pytest.raises(ValueError, match="cls"):
        CalibrationMeter(K).reliability(cls=K)


def test_ignored_label_out_of_range_is_allowed_only_as_ignore_index():
    probs = torch.full((3, K), 0.25)
    target = torch.tensor([0, 255, 1])
    meter = CalibrationMeter(K, ignore_index=255)
    meter.update_probs(probs, target)
    assert meter.compute()["n_voxels"] == 2
    with pytest.raises(ValueError, match="ignore_index=255"):
        meter.update_probs(probs, torch.tensor([0, 254, 1]))


def test_reliability_matches_oracle():
    _, probs, target = sample(9)
    meter = CalibrationMeter(K, n_bins=7)
    meter.update_probs(probs, target)
    p, y = np_flat(probs, target)
    from test_metrics_oracle import row

    for cls in (None, 0, 3):
        rel = meter.reliability(cls)
        c, hit = (p.max(1), p.argmax(1) == y) if cls is None else (p[:, cls], y == cls)
        exp = row(c, hit, 7)
        np.testing.assert_array_equal(rel["counts"], exp["counts"])
        np.testing.assert_allclose(rel["confidence"], exp["conf"], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(rel["accuracy"], exp["acc"], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(rel["edges"], np.arange(8) / 7, atol=0)
        assert rel["ece"] == pytest.approx(exp["ece"], abs=1e-12) and rel["n"] == len(y)


def test_state_dict_and_json_round_trip():
    meter = CalibrationMeter(K, n_bins=12, per_volume=True, region="union", ignore_index=255)
    for seed in (20, 21):
        logits, _, target = sample(seed)
        meter.update(logits, target)
    expected = meter.compute()
    text = json.dumps(meter.to_dict())
    rebuilt = CalibrationMeter.from_dict(json.loads(text))
    assert rebuilt.compute() == expected
    other = CalibrationMeter(K, n_bins=12, per_volume=True, region="union", ignore_index=255)
    other.load_state_dict(meter.state_dict())
    assert other.compute() == expected
    np.testing.assert_array_equal(other.reliability(1)["counts"], meter.reliability(1)["counts"])
    with pytest.raises(ValueError, match="config"):
        CalibrationMeter(K, n_bins=10).load_state_dict(meter.state_dict())
    with pytest.raises(ValueError, match="CalibrationMeter"):
        CalibrationMeter.from_dict({"type": "something else"})
    meter.reset()
    assert meter.compute()["n_voxels"] == 0 and meter.compute()["n_volumes"] == 0


def test_state_does_not_grow_with_voxels():
    meter = CalibrationMeter(K)
    sizes = []
    for seed in range(3):
        logits, _, target = sample(seed, shape=(4, K, 32, 32))
        meter.update(logits, target)
        sizes.append(sum(t.numel() * t.element_size() for t in meter._tables.values()))
    assert sizes[0] == sizes[-1] < 10_000


def test_lanes_as_used_on_cuda(monkeypatch):
    """Several copies of the tables (CUDA's lanes), exercised on CPU: same numbers."""
    from mls_tutorial.metrics import _binning

    _, probs, target = sample(31, shape=(2, K, 30, 7))
    plain = CalibrationMeter(K, region="union")
    plain.update_probs(probs, target)
    monkeypatch.setattr(_binning, "lanes_for", lambda device: 8)
    laned = CalibrationMeter(K, region="union", per_volume=True)
    laned.update_probs(probs, target)
    assert laned._tables["count"].numel() == 8 * plain._tables["count"].numel()
    result = laned.compute()
    assert_close(result, plain.compute())
    rebuilt = CalibrationMeter.from_dict(laned.to_dict())
    assert rebuilt.compute() == result


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits, probs, target = sample(30, shape=(2, K, 64, 64))
    results = []
    for device in ("cpu", "cuda"):
        meter = CalibrationMeter(K, region="union")
        meter.update(logits.to(device), target.to(device))
        meter.update_probs(probs.to(device), target.to(device))
        assert meter._tables["count"].device.type == device
        results.append(meter.compute())
    assert_close(results[1], results[0], keys=(*KEYS, "nll"))


def test_add_volume_counts_a_volume_fed_in_pieces_as_one_volume():
    g = torch.Generator().manual_seed(7)
    vols = [
        (
            torch.randn(1, 3, 6, 5, 4, generator=g) * 3,
            torch.randint(0, 3, (1, 6, 5, 4), generator=g),
        )
    ]
    vols.append(
        (
            torch.randn(1, 3, 4, 5, 4, generator=g) * 3,
            torch.randint(0, 3, (1, 4, 5, 4), generator=g),
        )
    )
    whole = CalibrationMeter(3, region="foreground", per_volume=True)
    pieces = CalibrationMeter(3, region="foreground", per_volume=True)
    for z, y in vols:
        whole.update(z, y)
        part = CalibrationMeter(3, region="foreground")
        for s in (slice(0, 2), slice(2, None)):  # two pieces along the first spatial axis
            part.update(z[:, :, s], y[:, s])
        pieces.add_volume(part)
    a, b = whole.compute(), pieces.compute()
    assert b["n_volumes"] == 2
    for key in ("ece", "cece", "nll", "ece_mean_over_volumes", "gap_mean_over_volumes"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key
    with pytest.raises(ValueError, match="configs differ"):
        pieces.add_volume(CalibrationMeter(3, region="all"))
