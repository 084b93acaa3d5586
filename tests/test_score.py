"""`score` on saved probability maps: float64 oracles, sampling-noise bounds, the three layouts,
bad input, temperature scaling on validation cases only, atomic output, the CLI.

Synthetic cases are non-cubic (every axis a different length), so an axis-order mistake cannot
pass. True probabilities q: a foreground box where q_0 = 0 and the foreground classes share the
mass at random, background elsewhere (q = one-hot 0), so that the ground-truth foreground (the
box) does not depend on the labels drawn and a calibrated q has foreground ECE near 0.
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from mls_tutorial.cli import main
from mls_tutorial.score import (
    OUTPUT_FILES,
    Case,
    ScoreInputError,
    fit_temperature_on_cases,
    read_dataset_json,
    score_cases,
    score_folder,
)
from mls_tutorial.score.case import score_case, score_device
from mls_tutorial.score.output import MANIFEST
from mls_tutorial.train import optimal_temperature

SHAPE = (14, 11, 9)  # X, Y, Z: all different
SPACING = (0.8, 1.2, 3.0)
K = 3
B = 15


def true_probs(rng, shape=SHAPE, k=K) -> np.ndarray:
    """(K, X, Y, Z) float64: background outside a box, a random foreground mix inside."""
    q = np.zeros((k, *shape))
    q[0] = 1.0
    box = tuple(slice(2, n - 2) for n in shape)
    z = rng.normal(size=(k - 1, *shape)) * 1.5
    mix = np.exp(z) / np.exp(z).sum(0)
    q[(slice(None), *box)] = 0.0
    q[(slice(1, None), *box)] = mix[(slice(None), *box)]
    return q


def sample(rng, q: np.ndarray) -> np.ndarray:
    u = rng.random(q.shape[1:])
    return (u[None] >= np.cumsum(q, 0)[:-1]).sum(0).astype(np.int64)


def sharpen(q: np.ndarray, power: float) -> np.ndarray:
    """``softmax(power * log q)`` in float32 (exact zeros stay zero)."""
    with np.errstate(divide="ignore"):
        z = power * np.log(q)
    z = z - z.max(0)
    e = np.exp(z)
    return (e / e.sum(0)).astype(np.float32)


def make_cases(seed: int, n: int = 3, power: float = 1.0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = true_probs(rng, shape)
        out.append((f"case{i:02d}", sharpen(q, power), sample(rng, q), q))
    return out


# ------------------------------------------------------------------------------ writers


def write_label(folder, name, label, spacing=SPACING):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(label.astype(np.uint8), np.diag([*spacing, 1.0])), folder / f"{name}.nii.gz"
    )


def write_layout(folder, layout, name, p):
    """Write ``p (C, X, Y, Z)`` as ``layout`` would store it."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "nnunet":
        np.savez_compressed(folder / f"{name}.npz", probabilities=p.transpose(0, 3, 2, 1))
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump({"spacing": SPACING[::-1]}, f)
        seg = p.argmax(0).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, np.diag([*SPACING, 1.0])), folder / f"{name}.nii.gz")
    elif layout == "nifti":
        img = nib.Nifti1Image(np.moveaxis(p, 0, -1), np.diag([*SPACING, 1.0]))
        nib.save(img, folder / f"{name}.nii.gz")
    else:
        np.save(folder / f"{name}.npy", p)


def write_folders(tmp_path, cases, layout="numpy"):
    pred, labels = tmp_path / f"pred_{layout}", tmp_path / "labels"
    for name, p, y, _ in cases:
        write_layout(pred, layout, name, p)
        write_label(labels, name, y)
    return pred, labels


# ------------------------------------------------------------------------------ oracles


def oracle(cases, power_cases=None):
    """Float64 reference of the calibration numbers on the aligned arrays."""
    fg_ece, fg_cece, fg_gap, fg_nll, fg_brier = [], [], [], [], []
    all_hits = np.zeros(B)
    all_conf = np.zeros(B)
    all_n = np.zeros(B)
    dist, n_dist = {2.0: 0, 5.0: 0, 10.0: 0}, 0
    for _, p, y, _ in cases:
        p64 = p.astype(np.float64).reshape(K, -1)
        logp = np.log(np.maximum(p64, np.finfo(np.float32).tiny))
        s = np.exp(logp - logp.max(0))
        s = s / s.sum(0)
        yy = y.reshape(-1)
        conf, pred = s.max(0), s.argmax(0)
        bins = np.clip(np.ceil(conf * B).astype(int) - 1, 0, B - 1)
        hit = (pred == yy).astype(float)
        np.add.at(all_n, bins, 1)
        np.add.at(all_hits, bins, hit)
        np.add.at(all_conf, bins, conf)
        fg = yy != 0
        n = fg.sum()
        h = np.bincount(bins[fg], hit[fg], B)
        c = np.bincount(bins[fg], conf[fg], B)
        fg_ece.append(np.abs(h - c).sum() / n)
        eces = []
        for k in range(K):
            bk = np.clip(np.ceil(s[k, fg] * B).astype(int) - 1, 0, B - 1)
            hk = np.bincount(bk, (yy[fg] == k).astype(float), B)
            ck = np.bincount(bk, s[k, fg], B)
            eces.append(np.abs(hk - ck).sum() / n)
        fg_cece.append(np.mean(eces))
        fg_gap.append(conf[fg].mean() - hit[fg].mean())
        lsm = logp - logp.max(0) - np.log(np.exp(logp - logp.max(0)).sum(0))
        fg_nll.append(-lsm[yy[fg], np.flatnonzero(fg)].mean())
        onehot = np.eye(K)[yy[fg]].T
        fg_brier.append(((s[:, fg] - onehot) ** 2).sum(0).mean())
        d = logp.max(0) - logp
        d = np.where(np.arange(K)[:, None] == logp.argmax(0), np.nan, d)
        for m in dist:
            dist[m] += int(np.nansum(d > m))
        n_dist += (K - 1) * logp.shape[1]
    return {
        "ece": np.mean(fg_ece),
        "cece": np.mean(fg_cece),
        "gap": np.mean(fg_gap),
        "nll": np.mean(fg_nll),
        "brier": np.mean(fg_brier),
        "ece_all": np.abs(all_hits - all_conf).sum() / all_n.sum(),
        "shares": {f"{m:g}": v / n_dist for m, v in dist.items()},
    }


def ece_noise_bound(cases) -> float:
    """Mean over cases of sum_b (n_b/N) * 5 sd_b, sd_b = sqrt(sum_v c_v (1 - c_v)) / n_b: five
    standard deviations of the sampled accuracy of each bin of a calibrated prediction."""
    bounds = []
    for _, p, y, _ in cases:
        conf = p.astype(np.float64).max(0).reshape(-1)[y.reshape(-1) != 0]
        bins = np.clip(np.ceil(conf * B).astype(int) - 1, 0, B - 1)
        var = np.bincount(bins, conf * (1 - conf), B)
        bounds.append(5 * np.sqrt(var).sum() / conf.size)
    return float(np.mean(bounds))


# ------------------------------------------------------------------------------ the API


def _pairs(cases):
    return [Case(p, y, SPACING, name) for name, p, y, _ in cases]


def test_labels_sampled_from_q_give_foreground_ece_within_sampling_noise():
    cases = make_cases(seed=1, n=4, shape=(30, 26, 22))
    res = score_cases(_pairs(cases), progress=False)
    bound = ece_noise_bound(cases)
    assert 0 <= res["ece"] < bound, (res["ece"], bound)
    assert bound < 0.15  # the bound is informative, not vacuous
    # a clearly sharpened q is caught: its ECE is far above the same bound
    sharp = [(n, sharpen(q, 3.0), y, q) for n, _, y, q in cases]
    assert score_cases(_pairs(sharp), progress=False)["ece"] > 2 * bound


def test_sharpened_q_scores_what_the_float64_oracle_computes():
    cases = make_cases(seed=2, n=3, power=2.0)
    res = score_cases(_pairs(cases), progress=False)
    ref = oracle(cases)
    for key in ("ece", "cece", "gap", "nll", "brier", "ece_all"):
        assert res[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert res["score"]["distance_share_above"] == pytest.approx(ref["shares"], abs=1e-12)
    assert res["gap"] > 0.05  # sharpened: over-confident, and the summary says so
    from mls_tutorial.score import summary_text

    assert "over-confident" in summary_text(res)


def test_true_probabilities_add_tce_and_it_vanishes_for_q_itself():
    cases = make_cases(seed=3, n=2)
    pairs = [Case(q.astype(np.float32), y, SPACING, n, q) for n, _, y, q in cases]
    res = score_cases(pairs, progress=False)
    assert res["tce"] < 1e-6 and res["prob_gap"] < 1e-6
    assert "tce" not in score_cases(_pairs(cases), progress=False)  # absent without q


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_dice_and_hd95_equal_the_oracles_monai_for_hd95():
    from monai.metrics import compute_hausdorff_distance

    cases = make_cases(seed=4, n=2, power=1.5)
    res = score_cases(_pairs(cases), progress=False)
    names = list(res["per_class"])
    for (_, p, y, _), row in zip(cases, res["per_volume"], strict=True):
        pred = p.argmax(0)
        onehot = [torch.from_numpy(np.eye(K)[a].transpose(3, 0, 1, 2)[None]) for a in (pred, y)]
        hd = compute_hausdorff_distance(
            *onehot, include_background=False, percentile=95, spacing=list(SPACING)
        )[0].numpy()
        for c in range(1, K):
            inter = np.sum((pred == c) & (y == c))
            dice = 2 * inter / (np.sum(pred == c) + np.sum(y == c))
            assert row["dice_per_class"][names[c - 1]] == pytest.approx(dice, rel=1e-6)
            assert row["hd95_per_class"][names[c - 1]] == pytest.approx(float(hd[c - 1]), rel=1e-6)


def test_the_three_layouts_give_identical_metrics(tmp_path):
    cases = make_cases(seed=5, n=2, power=1.7)
    direct = score_cases(_pairs(cases), progress=False)
    keys = ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier")
    for layout in ("nnunet", "nifti", "numpy"):
        pred, labels = write_folders(tmp_path, cases, layout)
        m = score_folder(pred, labels, tmp_path / f"out_{layout}", progress=False)
        assert m["source"]["layout"] == layout
        for key in keys:  # each layout is read in its memory order: float64 sums in another order
            assert m[key] == pytest.approx(direct[key], rel=1e-12, abs=0), (layout, key)
        assert m["per_volume"][0]["hd95_per_class"] == direct["per_volume"][0]["hd95_per_class"]
        written = sorted(p.name for p in (tmp_path / f"out_{layout}").iterdir())
        assert written == sorted(OUTPUT_FILES) and OUTPUT_FILES[-1] == MANIFEST


def test_validation_cases_fit_t_and_are_never_reported(tmp_path):
    val = make_cases(seed=6, n=2, power=3.0)  # strongly over-confident: T near 3
    rep = [(f"rep{i}", p, y, q) for i, (_, p, y, q) in enumerate(make_cases(7, n=2, power=1.5))]
    pred, labels = write_folders(tmp_path, val + rep)
    m = score_folder(pred, labels, tmp_path / "out", val_cases=["case00", "case01"], progress=False)
    expected = fit_temperature_on_cases(_pairs(val), progress=False)["temperature"]
    assert m["temperature_fit"]["temperature"] == pytest.approx(expected, rel=1e-9)
    assert m["temperature_fit"]["cases"] == ["case00", "case01"]
    # the oracle T on the validation voxels alone (all of them: fewer than max_voxels)
    z = torch.cat(
        [
            torch.from_numpy(np.log(np.maximum(p.reshape(K, -1).T.astype(np.float64), 1e-38)))
            for _, p, _, _ in val
        ]
    )
    y = torch.cat([torch.from_numpy(y.reshape(-1)) for _, _, y, _ in val])
    assert expected == pytest.approx(optimal_temperature(z.clamp_min(-87.0), y), rel=1e-3)
    rows = (tmp_path / "out" / "cases.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["rep0", "rep1"]
    assert m["source"]["reported_cases"] == ["rep0", "rep1"]
    ts = m["temperature_scaled"]
    assert ts["temperature"] == expected and abs(ts["gap"]) < abs(m["gap"]) + 0.5
    # the reported numbers are those of the reported cases alone, scored at the fitted T
    alone = score_cases(_pairs(rep), temperature=expected, progress=False)
    assert ts["ece"] == alone["temperature_scaled"]["ece"] and m["ece"] == alone["ece"]
    assert (
        "Temperature scaling fitted on 2 validation case(s)"
        in (tmp_path / "out" / "summary.md").read_text()
    )


def test_saturated_float16_probabilities_are_clipped_without_nan():
    cases = make_cases(seed=8, n=2, power=6.0)
    half = [(n, p.astype(np.float16), y, q) for n, p, y, q in cases]
    res = score_cases(_pairs(half), progress=False)
    s = res["score"]
    p_all = np.concatenate([p.reshape(K, -1) for _, p, _, _ in half], axis=1)
    assert s["saturated_share"] == pytest.approx(np.mean(p_all.max(0) == 1))
    assert s["zero_share"] == pytest.approx(np.mean(p_all == 0))
    assert s["saturated_share"] > 0.5 and s["dtypes"] == ["float16"]
    assert s["log_clip"] == pytest.approx(math.log(np.finfo(np.float16).tiny))
    assert all(math.isfinite(res[k]) for k in ("ece", "nll", "brier", "cece"))
    from mls_tutorial.score import summary_text

    assert "Saturation" in summary_text(res)


def test_background_option_equals_relabelled_arrays():
    cases = make_cases(seed=9, n=2, power=1.3)
    perm = [2, 1, 0]  # class 2 becomes the background
    moved = [(n, p[perm], np.array(perm)[y], q) for n, p, y, q in cases]
    a = score_cases(_pairs(cases), progress=False)
    b = score_cases(_pairs(moved), background=2, progress=False)
    for key in ("dice", "ece", "cece", "gap", "nll", "ece_all"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key


def test_dataset_json_gives_class_names_and_a_softmax_map_is_no_region_map(tmp_path):
    cases = make_cases(seed=10, n=1)
    pred, labels = write_folders(tmp_path, cases, "nnunet")
    (pred / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "RV": 1, "LV": 2}}))
    assert read_dataset_json(pred).class_names == ("background", "RV", "LV")
    m = score_folder(pred, labels, tmp_path / "out", progress=False)
    assert list(m["per_class"]) == ["RV", "LV"]
    regions = {
        "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "regions_class_order": [1, 2],
    }
    (pred / "dataset.json").write_text(json.dumps(regions))
    # region-based: one sigmoid channel per region (test_score_regions.py); 3 channels for 2
    with pytest.raises(ScoreInputError, match="3 probability channels, but the region-based"):
        score_folder(pred, labels, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


# ------------------------------------------------------------------------------ bad input


def _one(tmp_path, p, y, layout="numpy"):
    return write_folders(tmp_path, [("bad", p, y, None)], layout)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda p, y: (np.log(p + 1e-6) * 3, y), "logits saved by mistake"),
        (lambda p, y: (p * 0.7, y), "sigmoid"),
        (lambda p, y: (np.where(p > 0.5, np.nan, p).astype(np.float32), y), "NaN"),
        (lambda p, y: (p, np.where(y == 2, 3, y)), r"labels in \[0, 3\] lie outside \[0, 3\)"),
    ],
    ids=["logits", "sigmoid", "nan", "labels"],
)
def test_bad_values_raise_naming_the_case(tmp_path, mutate, pattern):
    ((_, p, y, _),) = make_cases(seed=11, n=1)
    p, y = mutate(p, y)
    pred, labels = _one(tmp_path, p.astype(np.float32), y)
    with pytest.raises(ScoreInputError, match=pattern) as err:
        score_folder(pred, labels, tmp_path / "out", progress=False)
    assert "case bad" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_reversed_axes_name_the_simpleitk_mixup(tmp_path):
    ((_, p, y, _),) = make_cases(seed=12, n=1)
    pred, labels = _one(tmp_path, np.ascontiguousarray(p.transpose(0, 3, 2, 1)), y)
    with pytest.raises(ScoreInputError, match=r"\(9, 11, 14\).*\(14, 11, 9\).*reversed"):
        score_folder(pred, labels, tmp_path / "out", progress=False)
    pred, labels = _one(tmp_path / "last", np.ascontiguousarray(np.moveaxis(p, 0, -1)), y)
    with pytest.raises(ScoreInputError, match="channel axis looks last"):
        score_folder(pred, labels, tmp_path / "out", progress=False)


def test_missing_labels_are_listed_or_skipped(tmp_path):
    cases = make_cases(seed=13, n=3)
    pred, labels = write_folders(tmp_path, cases)
    (labels / "case01.nii.gz").unlink()
    with pytest.raises(ScoreInputError, match=r"1 case\(s\).*case01.*--allow-missing"):
        score_folder(pred, labels, tmp_path / "out", progress=False)
    m = score_folder(pred, labels, tmp_path / "out", allow_missing=True, progress=False)
    assert m["source"]["skipped_without_label"] == ["case01"] and m["n_volumes"] == 2


def test_empty_folder_npz_without_probabilities_and_bad_out(tmp_path):
    (tmp_path / "empty").mkdir()
    labels = tmp_path / "labels"
    ((_, p, y, _),) = make_cases(seed=14, n=1)
    write_label(labels, "a", y)
    with pytest.raises(ScoreInputError, match="empty"):
        score_folder(tmp_path / "empty", labels, tmp_path / "out", progress=False)
    bad = tmp_path / "npz"
    bad.mkdir()
    np.savez(bad / "a.npz", softmax=p)
    with pytest.raises(ScoreInputError, match="no key 'probabilities'"):
        score_folder(bad, labels, tmp_path / "out", progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    pred, _ = _one(tmp_path, p, y)
    with pytest.raises(ScoreInputError, match="non-empty folder"):
        score_folder(pred, labels, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    two = write_folders(tmp_path / "v", [("a", p, y, None), ("b", p, y, None)])
    with pytest.raises(ScoreInputError, match="not among the scored"):
        score_folder(*two, tmp_path / "out", val_cases=["zz"], progress=False)
    with pytest.raises(ScoreInputError, match="no case is left to report"):
        score_folder(*two, tmp_path / "out", val_cases=["a", "b"], progress=False)


def test_a_failed_rerun_keeps_the_earlier_output_whole(tmp_path):
    cases = make_cases(seed=15, n=2)
    pred, labels = write_folders(tmp_path, cases)
    score_folder(pred, labels, tmp_path / "out", progress=False)
    before = (tmp_path / "out" / "metrics.json").read_text()
    np.save(pred / "case01.npy", np.full((K, *SHAPE), 0.9, np.float32))  # the second case breaks
    with pytest.raises(ScoreInputError, match="case case01"):
        score_folder(pred, labels, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "metrics.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_cli_score_writes_everything_and_reports_errors(tmp_path, capsys):
    cases = make_cases(seed=16, n=3, power=2.0)
    pred, labels = write_folders(tmp_path, cases, "nifti")
    (tmp_path / "val.txt").write_text("case00\n")
    out = tmp_path / "out"
    code = main(["score", str(pred), str(labels), "--out", str(out), "--val-cases",
                 str(tmp_path / "val.txt"), "--classes", "bg", "A", "B", "--no-progress"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "over-confident" in text and "T = " in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["source"]["val_cases"] == ["case00"] and list(m["per_class"]) == ["A", "B"]
    assert set(m["score"]["distance_share_above"]) == {"2", "5", "10"}
    code = main(["score", str(pred), str(tmp_path / "nowhere"), "--out", str(out)])
    assert code == 1 and "LABELS folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_score_device_names_cpu_by_default_and_cuda_only_when_asked():
    assert score_device(None) == torch.device("cpu") == score_device("cpu")
    assert score_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises((ValueError, RuntimeError)):
        score_device("mps")  # no float64 on MPS (or no MPS here)


def test_device_cpu_writes_the_default_metrics_exactly(tmp_path):
    cases = make_cases(seed=17, n=3, power=2.0)
    pred, labels = write_folders(tmp_path, cases, "nnunet")
    score_folder(pred, labels, tmp_path / "default", val_cases=["case00"], progress=False)
    args = ["--val-cases", "case00", "--device", "cpu", "--no-progress"]
    assert main(["score", str(pred), str(labels), "--out", str(tmp_path / "cpu"), *args]) == 0
    default = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert json.loads((tmp_path / "cpu" / "metrics.json").read_text()) == default
    assert default["source"]["device"] == "cpu" and "temperature_scaled" in default


def _tensors_and_arrays(obj, seen=None):
    """Every tensor and array reachable from ``obj`` (dataclass, object, list, dict)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor | np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_and_arrays(value, seen)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors_and_arrays(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from _tensors_and_arrays(vars(obj), seen)


@pytest.mark.parametrize("device", DEVICES)
def test_a_case_score_holds_cpu_tensors_only_whatever_the_device(device):
    name, p, y, q = make_cases(seed=18, n=1)[0]
    cs = score_case(Case(p, y, SPACING, name, q), temperatures=(None, 1.5), device=device)
    found = list(_tensors_and_arrays(cs))
    tensors = [t for t in found if isinstance(t, torch.Tensor)]
    assert len(tensors) >= 6 and all(t.device.type == "cpu" for t in tensors)
    assert all(t.device == torch.device("cpu") for t in cs.tables)
    assert isinstance(cs.confusion, np.ndarray) and isinstance(cs.bayes_confusion, np.ndarray)
    assert pickle.loads(pickle.dumps(cs)).confusion.tolist() == cs.confusion.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_numbers_within_float_tolerance():
    cases = make_cases(seed=19, n=2, power=2.0)
    cpu = score_cases(_pairs(cases), temperature=1.5, progress=False)
    cuda = score_cases(_pairs(cases), temperature=1.5, progress=False, device="cuda")
    for res_cpu, res_cuda in ((cpu, cuda), (cpu["temperature_scaled"], cuda["temperature_scaled"])):
        for key in ("dice", "hd95", "ece", "cece", "ece_all", "gap", "nll", "brier"):
            assert res_cuda[key] == pytest.approx(res_cpu[key], rel=1e-9, abs=1e-12), key
        assert res_cuda["meter"]["count"] == res_cpu["meter"]["count"]  # no value on a bin edge
        assert res_cuda["histogram"]["cells"] == res_cpu["histogram"]["cells"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cli_score_device_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    pred, labels = write_folders(tmp_path, make_cases(seed=20, n=1))
    out = tmp_path / "out"
    assert main(["score", str(pred), str(labels), "--out", str(out), "--device", "cuda"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mls-tutorial score: error: --device 'cuda' is not usable")
    assert captured.err.count("\n") == 1 and not captured.out
    assert not out.exists()


def test_importing_the_package_loads_no_optional_engine():
    code = (
        "import sys, mls_tutorial, mls_tutorial.cli, mls_tutorial.score, mls_tutorial.report; "
        "bad = [m for m in ('nnunetv2', 'SimpleITK', 'dask') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
