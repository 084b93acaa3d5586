"""Tests for mls_tutorial.data: the bundled MNI task, synthetic shapes, ACDC and Decathlon loaders."""

from __future__ import annotations

import json
import socket

import nibabel as nib
import numpy as np
import pytest
import torch

from mls_tutorial.data import DATASETS, DataBundle, SliceDataset, Volume, build_data
from mls_tutorial.data import mni as mni_mod

# ----------------------------------------------------------------------------- helpers


def _forbid_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("network access during a data build")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _check_contract(b: DataBundle) -> None:
    assert isinstance(b, DataBundle)
    json.dumps(b.params)
    assert len(b.class_names) == len(b.class_colors) == b.num_classes
    img, lab = b.train[0]
    assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == b.in_channels
    assert lab.dtype == torch.int64 and tuple(lab.shape) == tuple(img.shape[1:])
    assert b.val and b.test
    for v in b.val + b.test:
        assert isinstance(v, Volume)
        s, c, h, w = v.image.shape
        assert v.image.dtype == torch.float32 and c == b.in_channels
        assert v.label.dtype == torch.int64 and tuple(v.label.shape) == (s, h, w)
        assert 0 <= int(v.label.min()) and int(v.label.max()) < b.num_classes
        assert len(v.spacing) == 3 and all(isinstance(x, float) and x > 0 for x in v.spacing)
        if v.prob is not None:
            assert v.prob.dtype == torch.float32 and tuple(v.prob.shape) == (s, b.num_classes, h, w)


def _all_prob_labels(b: DataBundle):
    prob = torch.cat([b.train.prob] + [v.prob for v in b.val + b.test]).double()
    labels = torch.cat([b.train.labels.long()] + [v.label for v in b.val + b.test])
    return prob, labels


# ----------------------------------------------------------------------------- MNI


@pytest.fixture(scope="module")
def mni():
    """Default bundle built with the network forbidden and the template cache cleared."""
    with pytest.MonkeyPatch.context() as mp:
        _forbid_network(mp)
        mni_mod.load_template.cache_clear()
        sampled = build_data("mni")
        hard = build_data("mni", labels="hard")
    return sampled, hard


def test_mni_contract_and_defaults(mni):
    b, _ = mni
    _check_contract(b)
    assert b.num_classes == 4 and b.in_channels == 1
    assert b.params == {
        "n_train_subjects": 2,
        "n_val_subjects": 2,
        "n_test_subjects": 4,
        "labels": "sampled",
        "noise": [0.01, 0.05],
        "seed": 0,
    }
    n_slices = {k: len(v) for k, v in b.info["slices"].items()}
    assert len(b.train) == 2 * n_slices["train"]
    assert len(b.val) == 2 and len(b.test) == 4
    assert all(v.num_slices == n_slices["val"] for v in b.val)
    assert all(v.num_slices == n_slices["test"] for v in b.test)
    assert all(v.spacing == (2.0, 2.0, 2.0) for v in b.val + b.test)
    assert tuple(b.train[0][0].shape) == (1, 112, 96)
    # about 32 / 9 / 16 slice positions in the design notes
    assert 25 <= n_slices["train"] <= 35 and 8 <= n_slices["val"] <= 12
    assert 14 <= n_slices["test"] <= 22


def test_mni_template_matches_nilearn_loaders(monkeypatch):
    """Our strided 1 mm read equals nilearn's own 2 mm loaders; q follows the recipe."""
    from nilearn.datasets import (
        load_mni152_gm_template,
        load_mni152_template,
        load_mni152_wm_template,
    )

    _forbid_network(monkeypatch)
    tpl = mni_mod.load_template()

    def ours(a):  # back from (z, row, col) to nilearn's (x, y, z)
        return a[:, ::-1, :].transpose(2, 1, 0)

    t1 = load_mni152_template(resolution=2).get_fdata()
    gm = load_mni152_gm_template(resolution=2).get_fdata()
    wm = load_mni152_wm_template(resolution=2).get_fdata()
    np.testing.assert_allclose(ours(tpl["t1"]), t1, atol=1e-6)
    # T1 is uint8 / 255; 51 / 255 is exactly 0.2 (not brain), which float32 rounding in nilearn's
    # loader lifts just above 0.2: compare half a grey level above the threshold
    brain = t1 > 0.2 + 0.5 / 255
    csf = np.clip(1 - gm - wm, 0, None)
    tissue = np.stack([csf, gm, wm]) * brain
    tissue = tissue / np.where(brain, tissue.sum(0), 1.0)
    ref = np.concatenate([(~brain)[None].astype(float), tissue])
    q = np.stack([ours(tpl["q"][:, k]) for k in range(4)])
    np.testing.assert_allclose(q, ref, atol=1e-6)


def test_mni_prob_is_a_distribution_and_hard_labels_are_argmax(mni):
    b, hard = mni
    prob, _ = _all_prob_labels(b)
    assert float(prob.min()) >= 0
    torch.testing.assert_close(prob.sum(1), torch.ones_like(prob[:, 0]), atol=1e-5, rtol=0)
    hprob, hlab = _all_prob_labels(hard)
    assert torch.equal(hlab, hprob.argmax(1))
    # labels choice draws from its own stream: identical images and maps
    assert torch.equal(hard.train.images, b.train.images)
    assert torch.equal(hprob, prob)


def test_mni_sampled_labels_follow_prob(mni):
    b, hard = mni
    prob, lab = _all_prob_labels(b)
    _, hlab = _all_prob_labels(hard)
    brain = prob[:, 0] < 1e-6
    # disagreement with argmax: its expectation is E[1 - max_k q_k] over brain voxels
    expected = float((1 - prob.max(1).values)[brain].mean())
    measured = float((lab != hlab)[brain].double().mean())
    assert 0.05 < expected and abs(measured - expected) < 0.01, (measured, expected)
    # a categorical draw: among voxels with q_k in a bin, label k appears with frequency mean(q_k)
    for k in (1, 2, 3):
        qk = prob[:, k]
        sel = (qk > 0.3) & (qk < 0.7)
        freq = float((lab[sel] == k).double().mean())
        assert abs(freq - float(qk[sel].mean())) < 0.02, (k, freq)
    # q = 0 classes are never drawn (background never sampled inside the brain)
    assert not bool((lab[brain] == 0).any())


def test_mni_deterministic_by_seed():
    a = build_data("mni", n_train_subjects=1, n_val_subjects=1, n_test_subjects=1, seed=3)
    b = build_data("mni", n_train_subjects=1, n_val_subjects=1, n_test_subjects=1, seed=3)
    c = build_data("mni", n_train_subjects=1, n_val_subjects=1, n_test_subjects=1, seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(
        a.train.labels, b.train.labels
    )
    assert torch.equal(a.test[0].image, b.test[0].image) and torch.equal(
        a.test[0].label, b.test[0].label
    )
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.test[0].label, c.test[0].label)


def test_mni_splits_are_separate_blocks_and_images_unique(mni):
    b, _ = mni
    sl = b.info["slices"]
    sets = {k: set(v) for k, v in sl.items()}
    assert not (
        sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"]
    )
    assert set(b.train.positions) == sets["train"]
    # at least a 2-slice gap between positions of different splits
    for a, c in (("train", "val"), ("train", "test"), ("val", "test")):
        assert min(abs(i - j) for i in sets[a] for j in sets[c]) > 2
    # no evaluation slice equals any training image (not even an undeformed copy)
    train = b.train.images[:, 0].reshape(len(b.train), -1)
    for v in b.val + b.test:
        ev = v.image[:, 0].reshape(v.num_slices, -1)
        assert float(torch.cdist(ev, train).min()) > 1.0
    # simulated subjects differ from each other on the same slices
    assert not torch.allclose(b.test[0].image, b.test[1].image)


def test_mni_deformation_is_shared_by_image_and_prob(mni):
    """Brain vs background is read from the image almost perfectly at the prob's brain border;
    a 3-pixel misalignment of the maps would cost about 3% of that accuracy."""
    b, _ = mni
    for v in b.test[:2]:
        x = v.image[:, 0].flatten().numpy()
        q0 = v.prob[:, 0].flatten().numpy()
        bg, br = x[q0 > 0.99], x[q0 < 0.01]
        ths = np.quantile(x, np.linspace(0.3, 0.9, 121))
        acc = max(((bg < t).sum() + (br >= t).sum()) / (bg.size + br.size) for t in ths)
        assert acc > 0.995
        # T1 contrast is kept: mean intensity WM > GM > CSF > background
        means = [x[v.prob[:, k].flatten().numpy() > 0.9].mean() for k in range(4)]
        assert means[3] > means[2] > means[1] > means[0]


@pytest.mark.parametrize(
    "params",
    [
        {"labels": "soft"},
        {"n_train_subjects": 0},
        {"n_test_subjects": 1.5},
        {"noise": (0.1, 0.05)},
        {"noise": -0.1},
        {"noise": (0.01, 0.02, 0.03)},
        {"noise": "low"},
        {"seed": -1},
        {"unknown": 1},
    ],
)
def test_mni_bad_params_raise(params):
    with pytest.raises(ValueError, match=next(iter(params))):
        build_data("mni", **params)


def test_build_data_names():
    assert set(DATASETS) == {"mni", "synthetic", "acdc", "decathlon"}
    with pytest.raises(ValueError, match="name"):
        build_data("mnist")
    with pytest.raises(ValueError, match="root"):
        build_data("acdc")


def test_contract_classes_reject_bad_input():
    img, lab = torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="label shape"):
        Volume("v", img, lab[:, :3], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="int64"):
        Volume("v", img, lab.int(), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        Volume("v", img, lab, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="prob shape"):
        Volume("v", img, lab, (1.0, 1.0, 1.0), torch.zeros(2, 3, 4, 5))
    good = Volume("v", img, lab, (1.0, 1.0, 1.0))
    train = SliceDataset(img, lab)
    fields = dict(
        num_classes=2,
        in_channels=1,
        class_names=("a", "b"),
        class_colors=("k", "r"),
        description="",
        params={},
    )
    DataBundle(train, [good], [good], **fields)
    with pytest.raises(ValueError, match="class_names"):
        DataBundle(train, [good], [good], **{**fields, "class_names": ("a",)})
    with pytest.raises(ValueError, match="params"):
        DataBundle(train, [good], [good], **{**fields, "params": {"x": torch.zeros(1)}})
    bad = Volume("bad", img, lab + 2, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="bad"):
        DataBundle(train, [good], [bad], **fields)
    with pytest.raises(ValueError, match="train labels"):
        DataBundle(SliceDataset(img, lab + 2), [good], [good], **fields)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_contract_deterministic_and_ambiguous():
    kw = {"n_train": 24, "n_val": 1, "n_test": 1, "slices": 4}
    a = build_data("synthetic", **kw, seed=5)
    b = build_data("synthetic", **kw, seed=5)
    c = build_data("synthetic", **kw, seed=6)
    _check_contract(a)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(
        a.test[0].label, b.test[0].label
    )
    assert not torch.equal(a.train.images, c.train.images)
    prob, lab = _all_prob_labels(a)
    torch.testing.assert_close(prob.sum(1), torch.ones_like(prob[:, 0]), atol=1e-5, rtol=0)
    assert torch.equal(lab, prob.argmax(1))
    assert set(torch.unique(lab).tolist()) == {0, 1, 2, 3}

    def threshold_accuracy(bundle, where=None):
        x, y = bundle.train.images[:, 0], bundle.train.labels.long()
        mu = torch.linspace(0, 1, bundle.num_classes, dtype=torch.float64)
        pred = torch.bucketize(x.double(), (mu[1:] + mu[:-1]) / 2)
        ok = pred == y
        return float(ok[where].double().mean() if where is not None else ok.double().mean())

    border = a.train.prob.max(1).values < 0.9
    assert threshold_accuracy(a) < 0.95
    assert threshold_accuracy(a, border) < 0.8
    # control: without noise or blur the same threshold rule reads every label
    clean = build_data("synthetic", **kw, seed=5, noise=0.0, blur=0.0)
    assert threshold_accuracy(clean) == 1.0


def test_synthetic_sampled_labels():
    a = build_data("synthetic", n_train=16, n_val=1, n_test=1, slices=2, labels="sampled", blur=3.0)
    prob, lab = _all_prob_labels(a)
    differ = float((lab != prob.argmax(1)).double().mean())
    expected = float((1 - prob.max(1).values).mean())
    assert expected > 0.02 and abs(differ - expected) < 0.01


# ----------------------------------------------------------------------------- ACDC


def _save(path, arr, zooms=(1.4, 1.4, 10.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*zooms[:3], 1.0])), str(path))


def _make_acdc(root, n_patients=5, shape=(20, 24, 3), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for p in range(1, n_patients + 1):
        folder = root / "training" / f"patient{p:03d}"
        for f in (1, 12):
            name = f"patient{p:03d}_frame{f:02d}"
            img = rng.integers(0, 500, size=shape).astype(np.int16)
            gt = rng.integers(0, 4, size=shape).astype(np.uint8)
            _save(folder / f"{name}.nii.gz", img)
            _save(folder / f"{name}_gt.nii.gz", gt)
            arrays[name] = (img, gt)
        _save(folder / f"patient{p:03d}_4d.nii.gz", np.zeros((*shape, 2), np.int16))
    return arrays


def _ref_zscore(a):
    a = a.astype(np.float64)
    return (a - a.mean()) / a.std()


def test_acdc_loads_layout(tmp_path):
    arrays = _make_acdc(tmp_path)
    b = build_data("acdc", root=str(tmp_path), size=(20, 24), seed=1)
    _check_contract(b)
    assert b.num_classes == 4 and b.class_names[3] == "left ventricle"
    pats = b.info["patients"]
    assert sorted(sum(pats.values(), [])) == [f"patient{p:03d}" for p in range(1, 6)]
    assert all(len(pats[k]) >= 1 for k in ("train", "val", "test"))
    for v in b.val + b.test:
        img, gt = arrays[v.name]
        assert v.name.split("_")[0] in pats["val"] + pats["test"]
        assert v.spacing == pytest.approx((10.0, 1.4, 1.4))
        np.testing.assert_allclose(
            v.image[:, 0].numpy(), _ref_zscore(img).transpose(2, 0, 1), atol=1e-5
        )
        np.testing.assert_array_equal(v.label.numpy(), gt.transpose(2, 0, 1))
    assert len(b.train) == 3 * 2 * len(pats["train"])  # 3 slices, 2 frames per patient
    again = build_data("acdc", root=str(tmp_path), size=(20, 24), seed=1)
    assert again.info["patients"] == pats and torch.equal(again.train.images, b.train.images)
    # crop rows 20 -> 16 (start 2), pad cols 24 -> 32 (4 each side), as MONAI's ResizeWithPadOrCrop
    with pytest.warns(UserWarning, match="drops"):  # cropping 20 rows to 16 loses labels
        c = build_data("acdc", root=str(tmp_path / "training"), size=(16, 32), seed=1)
    v = c.test[0]
    img, gt = arrays[v.name]
    ref = np.pad(_ref_zscore(img)[2:18], ((0, 0), (4, 4), (0, 0))).transpose(2, 0, 1)
    np.testing.assert_allclose(v.image[:, 0].numpy(), ref, atol=1e-5)


def test_acdc_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_data("acdc", root=str(tmp_path / "nowhere"))
    _make_acdc(tmp_path, n_patients=3, shape=(8, 8, 2))
    p2 = tmp_path / "training" / "patient002"
    (p2 / "patient002_frame12_gt.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="patient002_frame12.nii.gz"):
        build_data("acdc", root=str(tmp_path), size=8)
    _save(p2 / "patient002_frame12_gt.nii.gz", np.zeros((8, 9, 2), np.uint8))
    with pytest.raises(ValueError, match="patient002_frame12_gt.nii.gz"):
        build_data("acdc", root=str(tmp_path), size=8)
    _save(p2 / "patient002_frame12_gt.nii.gz", np.full((8, 8, 2), 4, np.uint8))
    with pytest.raises(ValueError, match="patient002_frame12_gt.nii.gz"):
        build_data("acdc", root=str(tmp_path), size=8)
    _save(p2 / "patient002_frame12_gt.nii.gz", np.zeros((8, 8, 2), np.uint8))
    (p2 / "patient002_frame01.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    with pytest.raises(ValueError, match="patient002_frame01.nii.gz"):
        build_data("acdc", root=str(tmp_path), size=8)


# ----------------------------------------------------------------------------- Decathlon


def _make_msd(root, task="Task04_Hippocampus", n=5, shape=(12, 14, 4), channels=None):
    rng = np.random.default_rng(1)
    task_dir = root / task
    items, arrays = [], {}
    for i in range(n):
        name = f"case_{i:03d}"
        img = rng.normal(100, 20, size=shape + ((channels,) if channels else ())).astype(np.float32)
        lab = rng.integers(0, 3, size=shape).astype(np.uint8)
        _save(task_dir / "imagesTr" / f"{name}.nii.gz", img, zooms=(1.0, 1.2, 1.5))
        _save(task_dir / "labelsTr" / f"{name}.nii.gz", lab, zooms=(1.0, 1.2, 1.5))
        items.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        arrays[name] = (img, lab)
    modality = {str(c): f"MR{c}" for c in range(channels or 1)}
    meta = {
        "name": task,
        "description": "tiny",
        "reference": "",
        "licence": "",
        "release": "",
        "tensorImageSize": "4D" if channels else "3D",
        "modality": modality,
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": n,
        "numTest": 0,
        "training": items,
        "test": [],
    }
    (task_dir / "dataset.json").write_text(json.dumps(meta))
    return arrays


def test_decathlon_loads_layout(tmp_path):
    arrays = _make_msd(tmp_path)
    b = build_data("decathlon", root=str(tmp_path), task="Task04_Hippocampus", seed=2)
    _check_contract(b)
    assert b.num_classes == 3 and b.in_channels == 1
    assert b.class_names == ("background", "Anterior", "Posterior")
    assert b.info["size"] == [16, 16]  # padded to a multiple of 16
    names = sum(b.info["volumes"].values(), [])
    assert sorted(names) == sorted(arrays)
    for v in b.val + b.test:
        img, lab = arrays[v.name]
        assert v.spacing == pytest.approx((1.5, 1.0, 1.2))
        ref = np.pad(_ref_zscore(img), ((2, 2), (1, 1), (0, 0))).transpose(2, 0, 1)
        np.testing.assert_allclose(v.image[:, 0].numpy(), ref, atol=1e-5)
        np.testing.assert_array_equal(
            v.label.numpy(), np.pad(lab, ((2, 2), (1, 1), (0, 0))).transpose(2, 0, 1)
        )
    again = build_data("decathlon", root=str(tmp_path), task="Task04_Hippocampus", seed=2)
    assert again.info["volumes"] == b.info["volumes"]


def test_decathlon_multichannel(tmp_path):
    arrays = _make_msd(tmp_path, task="Task05_Prostate", n=3, channels=2)
    b = build_data("decathlon", root=str(tmp_path), task="Task05_Prostate", size=(12, 14))
    assert b.in_channels == 2 and b.train[0][0].shape == (2, 12, 14)
    v = b.test[0]
    img = arrays[v.name][0]
    for ch in range(2):
        np.testing.assert_allclose(
            v.image[:, ch].numpy(), _ref_zscore(img[..., ch]).transpose(2, 0, 1), atol=1e-5
        )


def test_decathlon_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Task02_Heart"):
        build_data("decathlon", root=str(tmp_path), task="Task02_Heart")
    _make_msd(tmp_path, n=3)
    labels = tmp_path / "Task04_Hippocampus" / "labelsTr"
    kw = {"root": str(tmp_path), "task": "Task04_Hippocampus"}
    meta_path = labels.parent / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "licence"}))
    with pytest.raises(ValueError, match=r"dataset.json lacks the key\(s\) \['licence'\]"):
        build_data("decathlon", **kw)
    meta_path.write_text(json.dumps(meta))
    (labels / "case_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="imagesTr/case_001.nii.gz"):
        build_data("decathlon", **kw)
    _save(labels / "case_001.nii.gz", np.zeros((12, 14, 5), np.uint8))
    with pytest.raises(ValueError, match="case_001.nii.gz"):
        build_data("decathlon", **kw)
    _save(labels / "case_001.nii.gz", np.zeros((12, 14, 4), np.uint8))
    (labels.parent / "imagesTr" / "case_002.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="imagesTr/case_002.nii.gz"):
        build_data("decathlon", **kw)


def test_phantoms_are_written_in_the_real_layouts_deterministically(tmp_path):
    """``data.phantoms.write_phantoms``: ACDC and Decathlon layouts, spacing in the affine, the
    label sets of each, the same bytes from the same seed, and ``build_data("acdc")`` reads it."""
    from mls_tutorial.data.phantoms import write_phantoms

    write_phantoms(tmp_path / "a", 3, 16, seed=1)
    write_phantoms(tmp_path / "b", 3, 16, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 3 * 4 + 3 * 2 + 1  # 2 frames x (image, gt) + hippocampus pairs + json
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    gt = nib.load(tmp_path / "a/ACDC/training/patient001/patient001_frame01_gt.nii.gz")
    assert gt.shape == (16, 16, 12) and gt.header.get_zooms() == (1.5, 1.5, 8.0)
    assert set(np.unique(np.asarray(gt.dataobj))) <= {0, 1, 2, 3}
    task = tmp_path / "a" / "Task04_Hippocampus"
    hip = nib.load(task / "labelsTr" / "hippocampus_002.nii.gz")
    assert hip.shape == (8, 8, 8) and set(np.unique(np.asarray(hip.dataobj))) <= {0, 1, 2}
    dataset = json.loads((task / "dataset.json").read_text())
    assert dataset["numTraining"] == 3 and len(dataset["training"]) == 3
    acdc = build_data("acdc", root=str(tmp_path / "a" / "ACDC"), size=(16, 16), seed=1)
    assert acdc.num_classes == 4 and len(acdc.test) >= 1
