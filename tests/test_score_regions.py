"""Region-based (sigmoid) models in `score`: each region a two-class problem, against a float64
oracle written here from the binary formulas (ECE, CECE, gap, NLL, Brier, Dice, HD95, the
temperature), nnU-Net's folder layout end to end through the CLI, --write-calibrated read back,
and bad input.

Synthetic BraTS-like cases: nested ellipsoids whose true region probabilities ``q_r`` are nested
(whole tumour >= tumour core >= enhancing tumour); the label is ``#{r : u < q_r}`` for one uniform
``u`` per voxel, so region r's target ``[label in labels_r]`` is ``[u < q_r]``: calibrated ``q``.
The saved maps are ``sigmoid(SHARP logit q_r)`` in float32 (over-confident: T* near SHARP).
Every case has its own non-cubic shape.
"""

from __future__ import annotations

import json
import pickle

import nibabel as nib
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from test_score_hd95 import scipy_hd95

from mls_tutorial.cli import main
from mls_tutorial.score import ScoreInputError, read_dataset_json, score_folder
from mls_tutorial.score.output import MANIFEST
from mls_tutorial.score.regions import (
    fit_region_temperatures,
    regions_of,
    score_region_cases,
)

SPACING = (0.9, 1.3, 2.5)  # X, Y, Z
SHAPES = [(17, 13, 9), (15, 16, 8), (18, 12, 10), (14, 15, 11)]
REGIONS = {"whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
DATASET = {
    "channel_names": {"0": "T1", "1": "FLAIR"},
    "labels": {"background": 0, **{n: list(v) for n, v in REGIONS.items()}},
    "regions_class_order": [1, 2, 3],
    "numTraining": 4,
    "file_ending": ".nii.gz",
}
SHARP = 2.0
B = 15
TINY = float(np.finfo(np.float32).tiny)


def make_case(seed: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """Saved probabilities ``(3, X, Y, Z)`` float32 and the label map ``(X, Y, Z)``."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [rng.uniform(0.4, 0.6) * n for n in shape]
    radii = [rng.uniform(0.3, 0.4) * n for n in shape]
    r = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, radii, strict=True)))
    logit_q = np.stack([4 * (edge - r) / 0.5 for edge in (1.0, 0.7, 0.4)])  # nested
    logit_q = np.clip(logit_q, -4, 4)
    q = 1 / (1 + np.exp(-logit_q))
    label = (rng.random(shape)[None] < q).sum(0).astype(np.uint8)
    p = (1 / (1 + np.exp(-SHARP * logit_q))).astype(np.float32)
    return p, label


def make_cases(n: int = 4, seed: int = 0):
    return [(f"case{i:02d}", *make_case(seed + i, SHAPES[i % len(SHAPES)])) for i in range(n)]


# ------------------------------------------------------------------------------ the oracle


def binary_logit(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return np.log(p) - np.log1p(-p)


def _ece(conf, hit, n) -> float:
    bins = np.clip(np.ceil(conf * B).astype(int) - 1, 0, B - 1)
    return float(np.abs(np.bincount(bins, hit, B) - np.bincount(bins, conf, B)).sum() / n)


def oracle(cases, temperatures=None) -> dict[str, dict]:
    """Per region, from the binary formulas in float64: s = sigmoid(logit p / T)."""
    out = {}
    for c, (name, labels) in enumerate(REGIONS.items()):
        t_reg = 1.0 if temperatures is None else temperatures[name]
        per = {k: [] for k in ("ece", "cece", "gap", "nll", "brier", "dice", "hd95")}
        all_conf, all_hit = [], []
        for _, p, y in cases:
            s = 1 / (1 + np.exp(-binary_logit(p[c]) / t_reg))
            t = np.isin(y, labels)
            pred = p[c] > 0.5
            conf, hit = np.maximum(s, 1 - s), (pred == t).astype(float)
            fg = t
            n = fg.sum()
            per["ece"].append(_ece(conf[fg], hit[fg], n))
            ece1 = _ece(s[fg], t[fg].astype(float), n)
            ece0 = _ece(1 - s[fg], 1 - t[fg].astype(float), n)
            per["cece"].append((ece0 + ece1) / 2)
            per["gap"].append(conf[fg].mean() - hit[fg].mean())
            per["nll"].append(-np.log(s[fg]).mean())
            per["brier"].append((2 * (s[fg] - 1) ** 2).mean())
            per["dice"].append(2 * (pred & t).sum() / (pred.sum() + t.sum()))
            per["hd95"].append(scipy_hd95(pred.astype(np.uint8), t.astype(np.uint8), 1, SPACING))
            all_conf.append(conf.ravel())
            all_hit.append(hit.ravel())
        res = {k: float(np.mean(v)) for k, v in per.items()}
        conf, hit = np.concatenate(all_conf), np.concatenate(all_hit)
        res["ece_all"] = _ece(conf, hit, conf.size)
        out[name] = res
    return out


def oracle_temperature(cases, c: int) -> float:
    """argmin_T of the mean binary NLL over every voxel, float64, on log T."""
    logit = np.concatenate([binary_logit(p[c]).ravel() for _, p, _ in cases])
    t = np.concatenate([np.isin(y, REGIONS[list(REGIONS)[c]]).ravel() for _, _, y in cases])
    sign = np.where(t, 1.0, -1.0)

    def nll(log_t):
        return float(np.logaddexp(0, -sign * logit / np.exp(log_t)).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


KEYS = ("ece", "cece", "gap", "nll", "brier", "dice", "ece_all")


def _check(metrics, ref, rel=1e-6):
    for name, r in ref.items():
        got = metrics["regions"][name]
        for key in KEYS:
            assert got[key] == pytest.approx(r[key], rel=rel, abs=1e-9), (name, key)
        assert got["hd95"] == pytest.approx(r["hd95"], rel=1e-6), name
    for key in KEYS:
        assert metrics[key] == pytest.approx(np.mean([r[key] for r in ref.values()]), rel=rel)


# ------------------------------------------------------------------------------ the API


def _items(cases):
    return [(p, y, SPACING, name) for name, p, y in cases]


def test_each_region_scores_what_the_binary_float64_oracle_computes():
    cases = make_cases(3)
    m = score_region_cases(_items(cases), REGIONS, progress=False)
    _check(m, oracle(cases))
    assert m["data"]["class_names"] == list(REGIONS)
    assert list(m["per_class"]) == list(REGIONS) and m["n_volumes"] == 3
    # the logit distance of a binary map is |logit p|: the histogram's shares above margins
    for c, name in enumerate(REGIONS):
        logit = np.concatenate([np.abs(binary_logit(p[c])).ravel() for _, p, _ in cases])
        shares = m["regions"][name]["score"]["distance_share_above"]
        for margin in ("2", "5", "10"):
            assert shares[margin] == pytest.approx(np.mean(logit > float(margin))), margin


def test_one_temperature_per_region_fitted_on_validation_cases_only():
    val, rep = make_cases(2, seed=10), make_cases(3, seed=20)
    fit = fit_region_temperatures(_items(val), regions_of(REGIONS), progress=False)
    temps = {n: f["temperature"] for n, f in fit.items()}
    for c, name in enumerate(REGIONS):
        assert temps[name] == pytest.approx(oracle_temperature(val, c), rel=2e-3), name
        assert 1.3 < temps[name] < 3.0  # over-confident by SHARP = 2: T* near 2
    assert len(set(temps.values())) == 3  # one per region, not shared
    m = score_region_cases(_items(rep), REGIONS, temperatures=temps, progress=False)
    ts = m["temperature_scaled"]
    assert ts["temperature"] == temps
    ref = oracle(rep, temps)
    for name in REGIONS:
        for key in ("ece", "cece", "gap", "nll", "brier", "ece_all"):
            got = m["regions"][name]["temperature_scaled"][key]
            assert got == pytest.approx(ref[name][key], rel=1e-6, abs=1e-9), (name, key)
    assert ts["nll"] < m["nll"] and ts["ece_all"] < m["ece_all"]  # scaling helps here


def test_a_case_without_a_region_is_left_out_of_that_regions_means():
    """No enhancing tumour in the label nor the prediction of case 0 (common in BraTS): its
    per-case numbers for that region are NaN and the means are those of the other cases (the
    policy of a class absent from a softmax case); the other regions keep every case."""
    cases = make_cases(3, seed=70)
    name, p, y = cases[0]
    p, y = p.copy(), np.where(y == 3, 2, y).astype(np.uint8)
    p[2] = np.minimum(p[2], 0.4)
    m = score_region_cases(_items([(name, p, y), *cases[1:]]), REGIONS, progress=False)
    et = m["regions"]["enhancing tumor"]
    row = et["per_volume"][0]
    assert row["n_voxels"] == 0 and all(np.isnan(row[k]) for k in ("ece", "dice", "hd95"))
    ref = oracle(cases[1:])["enhancing tumor"]
    for key in ("ece", "cece", "gap", "nll", "brier", "dice", "hd95"):
        assert et[key] == pytest.approx(ref[key], rel=1e-6), key
    assert m["regions"]["whole tumor"]["per_volume"][0]["n_voxels"] > 0


def test_bad_region_input_gets_a_clear_error():
    (name, p, y), = make_cases(1)  # fmt: skip
    with pytest.raises(ScoreInputError, match="2 probability channels, but the region-based"):
        score_region_cases([(p[:2], y, SPACING, name)], REGIONS, progress=False)
    logits = binary_logit(p).astype(np.float32)
    with pytest.raises(ScoreInputError, match=r"outside \[0, 1\]: save sigmoid probabilities"):
        score_region_cases([(logits, y, SPACING, name)], REGIONS, progress=False)
    y5 = y.copy()
    y5[0, 0, 0] = 5
    with pytest.raises(ScoreInputError, match=r"label value\(s\) \[5\] belong to no region"):
        score_region_cases([(p, y5, SPACING, name)], REGIONS, progress=False)
    with pytest.raises(ScoreInputError, match="ignore label 5"):
        score_region_cases([(p, y5, SPACING, name)], REGIONS, ignore=5, progress=False)


def test_dataset_json_regions_follow_nnunet_v2(tmp_path):
    def info(data):
        (tmp_path / "dataset.json").write_text(json.dumps(data))
        return read_dataset_json(tmp_path)

    brats = info(DATASET)
    assert brats.regions == REGIONS and brats.regions_class_order == (1, 2, 3)
    # nnU-Net's integration test dataset 996: a single label is a region too; 'ignore' is not
    hippo = info(
        {
            "labels": {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3},
            "regions_class_order": [2, 1],
        }
    )
    assert hippo.regions == {"hippocampus": (1, 2), "anterior": (1,)} and hippo.ignore == 3
    # lists of one label only, or regions_class_order alone: not region-based (LabelManager)
    plain = info({"labels": {"background": 0, "a": [1], "b": 2}, "regions_class_order": None})
    assert plain.regions is None and plain.class_names == ("background", "a", "b")
    with pytest.raises(ScoreInputError, match="regions_class_order"):
        info({**DATASET, "regions_class_order": [1, 2]})


# ------------------------------------------------------------------------------ nnU-Net folders


def write_nnunet(folder, labels_dir, cases):
    """What ``nnUNetv2_predict --save_probabilities`` writes for a region-based model: CASE.npz
    (``probabilities`` (R, Z, Y, X) float32), CASE.pkl, the segmentation CASE.nii.gz
    (``regions_class_order``: later regions overwrite), dataset.json and plans.json."""
    folder.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*SPACING, 1.0])
    for name, p, y in cases:
        np.savez_compressed(folder / f"{name}.npz", probabilities=p.transpose(0, 3, 2, 1))
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump({"spacing": list(SPACING[::-1]), "shape_before_cropping": y.shape[::-1]}, f)
        seg = np.zeros(y.shape, np.uint8)
        for c, label in enumerate(DATASET["regions_class_order"]):
            seg[p[c] > 0.5] = label
        nib.save(nib.Nifti1Image(seg, affine), folder / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(y, affine), labels_dir / f"{name}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps(DATASET))
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset137_BraTS"}))


def test_score_cli_on_an_nnunet_region_folder_end_to_end(tmp_path, capsys):
    val, rep = make_cases(2, seed=30), make_cases(3, seed=40)
    rep = [(f"rep{i}", p, y) for i, (_, p, y) in enumerate(rep)]
    pred, labels = tmp_path / "pred", tmp_path / "labelsTs"
    write_nnunet(pred, labels, val + rep)
    out, cal = tmp_path / "out", tmp_path / "calibrated"
    args = ["score", str(pred), str(labels), "--out", str(out), "--no-progress"]
    assert main([*args, "--val-cases", "case00", "case01", "--write-calibrated", str(cal)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["region_based"] and m["source"]["reported_cases"] == ["rep0", "rep1", "rep2"]
    _check(m, oracle(rep))
    temps = m["temperature_scaled"]["temperature"]
    for c, name in enumerate(REGIONS):
        assert temps[name] == pytest.approx(oracle_temperature(val, c), rel=2e-3)
        assert m["temperature_fit"][name]["cases"] == ["case00", "case01"]
    rows = (out / "cases.csv").read_text().splitlines()
    assert rows[0].startswith("case,region,n_fg_voxels,dice,hd95,ece")
    assert len(rows) == 1 + 3 * 3 and rows[1].startswith("rep0,whole tumor,")
    summary = (out / "summary.md").read_text()
    assert "Region-based model: 3 sigmoid regions" in summary and "## enhancing tumor" in summary
    assert {p.name for p in out.iterdir()} >= {
        "reliability.png", "classwise_reliability.png", "logit_distances.png", MANIFEST}  # fmt: skip
    # the calibrated maps: sigmoid(logit / T_r) per channel, nnU-Net's files beside them
    again = score_folder(cal, labels, tmp_path / "again", progress=False)
    for name in REGIONS:
        ts = m["regions"][name]["temperature_scaled"]
        for key in ("ece", "cece", "gap", "nll", "brier", "ece_all"):
            assert again["regions"][name][key] == pytest.approx(ts[key], rel=1e-4, abs=1e-6)
        assert again["regions"][name]["dice"] == m["regions"][name]["dice"]
    assert (cal / "rep0.pkl").read_bytes() == (pred / "rep0.pkl").read_bytes()
    assert (cal / "dataset.json").is_file()


def test_device_cpu_scores_a_region_folder_exactly_as_the_default(tmp_path):
    pred, labels = tmp_path / "pred", tmp_path / "labelsTs"
    write_nnunet(pred, labels, make_cases(3, seed=50))
    kwargs = {"val_cases": ["case00"], "progress": False}
    score_folder(pred, labels, tmp_path / "default", **kwargs)
    score_folder(pred, labels, tmp_path / "cpu", device="cpu", **kwargs)
    default = json.loads((tmp_path / "default" / "metrics.json").read_text())
    assert json.loads((tmp_path / "cpu" / "metrics.json").read_text()) == default
    assert default["region_based"] and default["source"]["device"] == "cpu"
    items = _items(make_cases(2, seed=60))
    direct = score_region_cases(items, REGIONS, progress=False, device="cpu")
    assert direct == score_region_cases(items, REGIONS, progress=False)


def test_bad_region_folders_give_one_line_errors(tmp_path, capsys):
    cases = make_cases(1)
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    write_nnunet(pred, labels, cases)
    data = {**DATASET, "labels": {**DATASET["labels"], "necrosis": [1]}}
    data["regions_class_order"] = [1, 2, 3, 1]
    (pred / "dataset.json").write_text(json.dumps(data))
    args = ["score", str(pred), str(labels), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 probability channels, but the region-based model" in err
    assert "has 4 regions" in err
    (pred / "dataset.json").write_text(json.dumps(DATASET))
    name, p, y = cases[0]
    np.savez_compressed(pred / f"{name}.npz", probabilities=(p * 3).transpose(0, 3, 2, 1))
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "outside [0, 1]: save sigmoid probabilities" in err
    assert main([*args, "--classes", "a", "b", "c"]) == 1
    assert "--classes does not apply to a region-based model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["numpy", "nifti"])
def test_numpy_and_nifti_region_maps_with_a_dataset_json_score_like_nnunet(tmp_path, layout):
    """A ``dataset.json`` with regions in PRED makes any layout region-based: NumPy ``(R, X, Y,
    Z)`` and NIfTI ``(X, Y, Z, R)`` give the oracle's numbers, and --write-calibrated writes the
    same layout back."""
    from test_score import write_layout

    cases = make_cases(3, seed=50)
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    for name, p, y in cases:
        write_layout(pred, layout, name, p)
        labels.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(y, np.diag([*SPACING, 1.0])), labels / f"{name}.nii.gz")
    (pred / "dataset.json").write_text(json.dumps(DATASET))
    m = score_folder(pred, labels, tmp_path / "out", progress=False)
    assert m["source"]["layout"] == layout
    _check(m, oracle(cases))
    cal = tmp_path / "cal"
    ts = score_folder(pred, labels, tmp_path / "ts", val_cases=["case00"], write_calibrated=cal,
                      progress=False)  # fmt: skip
    again = score_folder(cal, labels, tmp_path / "again", progress=False)
    assert again["source"]["layout"] == layout
    for key in ("ece", "nll", "brier", "ece_all"):
        assert again[key] == pytest.approx(ts["temperature_scaled"][key], rel=1e-4, abs=1e-6)


def test_a_region_item_loads_its_two_class_case_from_file_names(tmp_path):
    """What the temperature fit reads per region: a ``RegionItem`` of ``CaseFiles`` pickles
    small (file names) and loads the region's two-class map and target."""
    from mls_tutorial.score.layouts import match_cases
    from mls_tutorial.score.regions import RegionItem

    cases = make_cases(1, seed=60)
    pred, labels = tmp_path / "pred", tmp_path / "labels"
    write_nnunet(pred, labels, cases)
    (files,), _ = match_cases(pred, labels)
    regions = tuple(regions_of(REGIONS))
    item = RegionItem(files, 0, regions[1], regions)
    blob = pickle.dumps(item)
    assert len(blob) < 2000  # names, not arrays
    case = pickle.loads(blob).load()
    _, p, y = cases[0]
    np.testing.assert_array_equal(case.probabilities[1], p[1])
    np.testing.assert_array_equal(case.probabilities[0], np.float32(1) - p[1])
    np.testing.assert_array_equal(case.labels, np.isin(y, REGIONS["tumor core"]))
