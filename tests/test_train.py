"""fit / evaluate / temperature scaling on the synthetic dataset with the tiny U-Net.

References are independent: float64 NumPy formulas written here (ECE, CECE, Dice, |p - q|,
NLL over a temperature grid refined by SciPy), never the library's own helpers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from mls_tutorial.data import build_data
from mls_tutorial.losses import build_loss
from mls_tutorial.models import build_unet
from mls_tutorial.train import (
    CHECKPOINT_NAME,
    StreamBatchSampler,
    evaluate,
    fit,
    fit_temperature,
    load_checkpoint,
    optimal_temperature,
    save_checkpoint,
)

ITER = 8


@pytest.fixture(scope="module")
def data():
    return build_data("synthetic", n_train=24, size=32, slices=4, n_val=2, n_test=2, seed=3)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_unet(1, 4, "tiny")


def _fit(data, model=None, **kw):
    model = model if model is not None else _model()
    kw = {"iterations": ITER, "batch_size": 4, "progress": False, "device": "cpu", **kw}
    return model, fit(model, build_loss("ce"), data, **kw)


@pytest.fixture(scope="module")
def trained(data):
    model, history = _fit(data, iterations=12, val_every=4)
    return model.eval(), history


def _params(model):
    return torch.cat(
        [p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()]
    )


# ------------------------------------------------------------------------------ fit


def test_same_seed_same_weights_other_seed_differs(data):
    a, ha = _fit(data, seed=5, val_every=0)
    b, hb = _fit(data, seed=5, val_every=0)
    c, _ = _fit(data, seed=6, val_every=0)
    assert torch.equal(_params(a), _params(b))
    assert ha["loss"] == hb["loss"]
    assert not torch.equal(_params(a), _params(c))
    assert not torch.equal(_params(a), _params(_model()))  # it trained


def test_history_and_model_selection(data, trained, tmp_path):
    model, h = trained
    assert h["iteration"] == list(range(1, 13))
    assert len(h["loss"]) == 12 and all(math.isfinite(v) for v in h["loss"])
    assert h["val_iteration"] == [4, 8, 12]
    dice = h["val_fg_dice"]
    assert len(dice) == 3 and len(h["val_fg_ece"]) == 3
    assert h["best_iteration"] == h["val_iteration"][int(np.argmax(dice))]
    assert h["best_value"] == max(dice)
    # the returned model holds the selected weights: its validation Dice is the best one
    res = evaluate(model, data.val, 4, device="cpu", hd95=False)
    assert res["dice"] == pytest.approx(max(dice), abs=1e-12)


def test_select_last_keeps_the_final_weights_but_records_validation(data, tmp_path):
    model, h = _fit(data, val_every=4, select_metric="last", run_dir=tmp_path)
    assert h["val_iteration"] == [4, 8] and h["best_iteration"] == ITER
    ck = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ck["best_model"] is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, ck["model"][key]), key


def test_selection_by_a_metric_to_minimise(data):
    _, h = _fit(data, val_every=2, select_metric="val_fg_ece")
    assert h["best_value"] == min(h["val_fg_ece"])


class _StopAt(torch.nn.Module):
    """CE that raises KeyboardInterrupt at the given call (a user pressing Ctrl-C)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, logits, target):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return torch.nn.functional.cross_entropy(logits, target)


def test_checkpoint_weights_only_and_resume_matches_straight_run(data, tmp_path):
    straight, hs = _fit(data, run_dir=tmp_path / "a", lr_step=3, val_every=3)
    with pytest.raises(KeyboardInterrupt):
        fit(
            _model(),
            _StopAt(6),
            data,
            iterations=ITER,
            batch_size=4,
            progress=False,
            device="cpu",
            run_dir=tmp_path / "b",
            lr_step=3,
            val_every=3,
        )
    ck = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert ck["iteration"] == 3 and len(ck["history"]["loss"]) == 3
    resumed, h2 = _fit(
        data, _model(seed=99), run_dir=tmp_path / "b", lr_step=3, val_every=3, resume=True
    )
    assert h2["loss"] == hs["loss"]
    assert h2["val_fg_dice"] == hs["val_fg_dice"]
    a = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert a["iteration"] == b["iteration"] == ITER
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(_params(straight), _params(resumed))
    assert not list((tmp_path / "b").glob("*.tmp"))  # atomic writes leave no temp file


def test_resume_refuses_a_different_seed(data, tmp_path):
    _fit(data, run_dir=tmp_path, iterations=2, val_every=0)
    with pytest.raises(ValueError, match="seed"):
        _fit(data, run_dir=tmp_path, seed=9, resume=True, val_every=0)


class _NaNAt(torch.nn.Module):
    """CE that returns NaN from the given call on."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if self.calls >= self.at else loss


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(data, tmp_path):
    model = _model()
    with pytest.raises(FloatingPointError, match=r"iteration 7\b.*iteration 4"):
        fit(
            model,
            _NaNAt(7),
            data,
            iterations=20,
            batch_size=4,
            progress=False,
            device="cpu",
            run_dir=tmp_path,
            val_every=0,
            checkpoint_every=4,
            log_every=3,
        )
    ck = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ck["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_progress_bar_can_be_disabled(data, capsys):
    _fit(data, iterations=2, val_every=0, progress=True)
    assert "train" in capsys.readouterr().err
    _fit(data, iterations=2, val_every=0, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"iterations": 0}, "iterations"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"select_metric": "val_accuracy"}, "select_metric"),
        ({"resume": True}, "run_dir"),
        ({"val_every": -1}, "val_every"),
    ],
)
def test_fit_rejects_bad_arguments(data, kw, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        _fit(data, **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_rejects_an_unavailable_device(data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        _fit(data, device="cuda")


def test_fit_rejects_non_bundle_data():
    with pytest.raises(ValueError, match="DataBundle"):
        fit(_model(), build_loss("ce"), [1, 2, 3], iterations=1, batch_size=1)


def test_sampler_is_resumable_and_shards_are_disjoint():
    full = list(StreamBatchSampler(10, 3, seed=1, stop=12))
    tail = list(StreamBatchSampler(10, 3, seed=1, start=5, stop=12))
    assert tail == full[5:]
    flat = [i for b in full for i in b]
    assert sorted(flat[:10]) == list(range(10))  # epoch 0 is a permutation
    r0 = [i for b in StreamBatchSampler(10, 5, seed=2, stop=1, world_size=2, rank=0) for i in b]
    r1 = [i for b in StreamBatchSampler(10, 5, seed=2, stop=1, world_size=2, rank=1) for i in b]
    assert sorted(r0 + r1) == list(range(10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP runs on CUDA only")
def test_amp_on_cuda_trains_finite(data):
    model, h = _fit(data, device="cuda", amp=True, iterations=4, val_every=2)
    assert all(math.isfinite(v) for v in h["loss"])


# ------------------------------------------------------------------------ evaluate


def _oracle_ece(conf, correct, n_bins=15):
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        total += abs(correct[sel].sum() - conf[sel].sum())
    return total / conf.size


def _oracle(model, volumes, temperature=1.0):
    """Per-volume foreground ECE/CECE, pooled all-voxel ECE, Dice, gap and |p - q| in float64."""
    rows, all_conf, all_hit = [], [], []
    for vol in volumes:
        with torch.no_grad():
            z = model(vol.image).double() / temperature
        p = torch.softmax(z, 1).numpy()  # (S, K, H, W)
        y = vol.label.numpy()
        pred = p.argmax(1)
        conf = p.max(1)
        fg = y != 0
        k = p.shape[1]
        cece = np.mean([_oracle_ece(p[:, c][fg], (y[fg] == c).astype(float)) for c in range(k)])
        dice = []
        for c in range(1, k):
            a, b = pred == c, y == c
            if a.sum() + b.sum():
                dice.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        q = vol.prob.numpy()
        rows.append(
            {
                "ece": _oracle_ece(conf[fg], (pred == y)[fg].astype(float)),
                "cece": cece,
                "gap": conf[fg].mean() - (pred == y)[fg].mean(),
                "prob_gap": np.abs(p - q).mean(1)[fg].mean(),
                "dice": np.mean(dice),
                "nll": -np.log(np.take_along_axis(p, y[:, None], 1)[:, 0][fg]).mean(),
            }
        )
        all_conf.append(conf.ravel())
        all_hit.append((pred == y).ravel().astype(float))
    out = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
    out["ece_all"] = _oracle_ece(np.concatenate(all_conf), np.concatenate(all_hit))
    out["rows"] = rows
    return out


def test_evaluate_matches_float64_oracle(data, trained):
    model, _ = trained
    res = evaluate(model, data.test, 4, device="cpu", class_names=data.class_names)
    ref = _oracle(model, data.test)
    for key in ("ece", "cece", "gap", "prob_gap", "nll", "ece_all"):
        assert res[key] == pytest.approx(ref[key], abs=1e-6), key
    assert res["dice"] == pytest.approx(ref["dice"], abs=1e-6)  # MONAI Dice sums in float32
    for row, ref_row in zip(res["per_volume"], ref["rows"], strict=True):
        assert row["ece"] == pytest.approx(ref_row["ece"], abs=1e-6)
    assert res["n_volumes"] == 2 and res["temperature"] is None
    assert set(res["per_class"]) == set(data.class_names[1:])


def test_evaluate_result_contract_and_json(data, trained):
    model, _ = trained
    res = evaluate(model, data.test, 4, device="cpu")
    for key in (
        "dice",
        "hd95",
        "ece",
        "cece",
        "mce",
        "brier",
        "nll",
        "ece_all",
        "cece_all",
        "gap",
        "prob_gap",
        "temperature",
        "per_class",
        "per_volume",
        "calibration",
        "meter",
        "meter_all",
        "histogram",
        "n_volumes",
    ):
        assert key in res, key
    again = json.loads(json.dumps(res))
    from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram

    meter = CalibrationMeter.from_dict(again["meter"])
    assert meter.compute()["ece_mean_over_volumes"] == pytest.approx(res["ece"], abs=1e-12)
    hist = LogitDistanceHistogram.from_dict(again["histogram"])
    n_vox = sum(v.label.numel() for v in data.test)
    assert hist.histogram("mean")["n"] == n_vox


def test_evaluate_with_temperature_equals_scaled_logits(data, trained):
    model, _ = trained
    t = 1.7
    res = evaluate(model, data.test, 4, device="cpu", temperature=t)
    ref = _oracle(model, data.test, temperature=t)
    assert res["temperature"] == t
    assert res["ece"] == pytest.approx(ref["ece"], abs=1e-6)
    assert res["nll"] == pytest.approx(ref["nll"], abs=1e-6)


def test_hd95_is_in_millimetres(data, trained):
    from mls_tutorial.data import Volume

    model, _ = trained
    scaled = [Volume(v.name, v.image, v.label, (2.0, 2.0, 2.0), v.prob) for v in data.test]
    a = evaluate(model, data.test, 4, device="cpu")
    b = evaluate(model, scaled, 4, device="cpu")
    assert math.isfinite(a["hd95"]) and a["hd95"] > 0
    assert b["hd95"] == pytest.approx(2 * a["hd95"], rel=1e-6)
    assert b["dice"] == a["dice"]


def test_evaluate_rejects_bad_input(data, trained):
    model, _ = trained
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [], 4)
    with pytest.raises(ValueError, match="temperature"):
        evaluate(model, data.test, 4, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        evaluate(model, data.test, 3)
    with pytest.raises(ValueError, match="region"):
        evaluate(model, data.test, 4, region="background")


# ---------------------------------------------------------------- temperature scaling


def _nll_np(z, y, t):
    z = z / t
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def test_fit_temperature_minimises_validation_nll(data, trained):
    model, _ = trained
    t = fit_temperature(model, data.val, device="cpu")
    with torch.no_grad():
        z = torch.cat([model(v.image).movedim(1, -1).reshape(-1, 4) for v in data.val]).double()
    y = torch.cat([v.label.reshape(-1) for v in data.val]).numpy()
    ref = minimize_scalar(
        lambda lt: _nll_np(z.numpy(), y, math.exp(lt)),
        bounds=(-4, 4),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert t == pytest.approx(math.exp(ref.x), rel=1e-4)
    assert _nll_np(z.numpy(), y, t) <= _nll_np(z.numpy(), y, 1.0) + 1e-12


def test_optimal_temperature_recovers_a_known_scale():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(100_000, 4, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(torch.softmax(base, 1), 1, generator=g)[:, 0]
    t = optimal_temperature((base * 3).float(), y)  # logits 3x too confident
    assert t == pytest.approx(3.0, rel=0.03)


def test_optimal_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        optimal_temperature(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape|must be"):
        optimal_temperature(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    save_checkpoint({"w": torch.ones(2), "meta": {"it": 3, "name": "x"}}, tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["meta"] == {"it": 3, "name": "x"}
