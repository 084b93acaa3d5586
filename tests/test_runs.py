"""Run folders: config keys, load-if-cached-else-train, resume, temperature scaling, tables."""

from __future__ import annotations

import csv
import inspect
import io
import json
import math

import numpy as np
import pytest
import torch
from _tiny_runs import BASE, DATA

from mls_tutorial.results import format_csv, format_markdown, results_table, write_results
from mls_tutorial.runs import (
    CONFIG_FILE,
    FIGURES,
    METRICS_FILE,
    WEIGHTS_FILE,
    find_runs,
    load_or_train,
    load_run,
    normalize_config,
    run_key,
    run_name,
    save_figures,
)
from mls_tutorial.train import CHECKPOINT_NAME, evaluate, fit, load_checkpoint


def cfg(**kw):
    return {**BASE, **kw}


def _train(root, **kw):
    return load_or_train(cfg(**kw), root, device="cpu", progress=False, figures=False, log=None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        _train(root, loss="ce", seed=seed)
    _train(root, loss="mbls", loss_kwargs={"margin": 2.0})
    return root


# -------------------------------------------------------------------------- config


def test_normalize_fills_defaults_and_keys_are_stable():
    a = normalize_config(cfg(loss="mbls"))
    assert a["loss_kwargs"]["margin"] == 10.0 and a["loss_kwargs"]["alpha"] == 0.1
    from mls_tutorial.data import DATASETS

    noise_default = inspect.signature(DATASETS["synthetic"]).parameters["noise"].default
    assert a["data_params"]["noise"] == noise_default  # the dataset's own default, filled in
    assert run_key(cfg(loss="mbls")) == run_key(cfg(loss="mbls", loss_kwargs={"margin": 10}))
    assert run_key(dict(reversed(list(cfg(loss="ce").items())))) == run_key(cfg(loss="ce"))
    assert run_key(cfg(loss="ce")) != run_key(cfg(loss="ce", seed=2))
    assert run_name(cfg(loss="mbls", loss_kwargs={"margin": 5}, seed=3)).startswith("mbls-m5-s3-")
    assert run_name(cfg(loss="ce")).startswith("ce-mna-s1-")
    assert json.loads(json.dumps(a)) == a


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"preset": "huge"}, "preset"),
        ({"iterations": 0}, "iterations"),
        ({"lr": 0}, "lr"),
        ({"colour": 1}, "unknown config key"),
        ({"data": "nope"}, "data"),
        ({"data_params": {"sizee": 3}}, "data_params"),
        ({"select_metric": "val_accuracy"}, "select_metric"),
        (
            {"loss": "focal", "loss_kwargs": {"gama": 2}},
            r"unknown loss_kwargs \['gama'\] for loss='focal'; its parameters: gamma, ignore_index",
        ),
    ],
)
def test_bad_configs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize_config(cfg(**bad))


# ------------------------------------------------------------------- load_or_train


def test_run_folder_holds_every_file_and_reloads(root):
    (run,) = find_runs(root, loss="ce", seed=1)
    for name in (CONFIG_FILE, "history.json", METRICS_FILE, CHECKPOINT_NAME, "example.npz"):
        assert (run.path / name).is_file(), name
    assert run.config == normalize_config(cfg(loss="ce", seed=1))
    assert run.history["iteration"] == [1, 2, 3, 4]
    assert load_checkpoint(run.path / CHECKPOINT_NAME)["iteration"] == 4
    ex = run.example()
    k, (h, w) = 4, ex["image"].shape
    assert ex["probs"].shape == (k, h, w) and ex["true_prob"].shape == (k, h, w)
    assert ex["label"].shape == (h, w)
    np.testing.assert_allclose(ex["probs"].sum(0), 1.0, atol=1e-5)
    # metrics.json equals a fresh evaluation of the reloaded model
    from mls_tutorial.data import build_data

    data = build_data("synthetic", **DATA)
    again = evaluate(run.load_model("cpu"), data.test, data.num_classes, device="cpu")
    for key in ("dice", "hd95", "ece", "cece", "ece_all", "gap", "prob_gap"):
        assert again[key] == pytest.approx(run.metrics[key], abs=1e-9), key
    # and the stored example equals the reloaded model's prediction on that slice
    vol = data.test[0]
    i = int(ex["slice_index"])
    with torch.no_grad():
        probs = torch.softmax(run.load_model("cpu")(vol.image[i : i + 1]), 1)[0].numpy()
    np.testing.assert_allclose(probs, ex["probs"], atol=1e-6)


def test_second_call_is_cached_and_trains_nothing(root):
    (first,) = find_runs(root, loss="ce", seed=1)
    stamp = (first.path / CHECKPOINT_NAME).stat().st_mtime_ns
    messages = []
    again = load_or_train(
        cfg(loss="ce", seed=1), root, device="cpu", progress=False, log=messages.append
    )
    assert again.cached and again.path == first.path
    assert (first.path / CHECKPOINT_NAME).stat().st_mtime_ns == stamp
    assert messages and "cached" in messages[0]


def test_never_overwrites_a_folder_of_another_config(tmp_path):
    config = cfg(loss="ce", iterations=2)
    folder = tmp_path / run_name(config)
    folder.mkdir()
    other = normalize_config(cfg(loss="ce", iterations=3))
    (folder / CONFIG_FILE).write_text(json.dumps(other))
    with pytest.raises(ValueError, match="different config"):
        load_or_train(config, tmp_path, device="cpu", progress=False, log=None)
    assert json.loads((folder / CONFIG_FILE).read_text()) == other
    (folder / CONFIG_FILE).unlink()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        load_or_train(config, tmp_path, device="cpu", progress=False, log=None)


def test_force_retrains_and_keeps_the_old_folder_aside(tmp_path):
    first = _train(tmp_path, loss="ce", iterations=2)
    old_metrics = (first.path / METRICS_FILE).read_text()
    again = load_or_train(
        cfg(loss="ce", iterations=2),
        tmp_path,
        device="cpu",
        progress=False,
        figures=False,
        log=None,
        force=True,
    )
    assert not again.cached and again.path == first.path
    (kept,) = (tmp_path / ".replaced").iterdir()
    assert kept.name.startswith(first.path.name)
    assert (kept / METRICS_FILE).read_text() == old_metrics
    assert [r.path for r in find_runs(tmp_path)] == [first.path]


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    from mls_tutorial.data import build_data
    from mls_tutorial.losses import build_loss
    from mls_tutorial.models import build_unet
    from mls_tutorial.train import seed_everything

    config = cfg(loss="ce", iterations=6, val_every=3)
    norm = normalize_config(config)
    folder = tmp_path / "a" / run_name(config)
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps(norm))
    seed_everything(norm["seed"])  # what load_or_train does before building the model
    model = build_unet(1, 4, "tiny")
    fit(
        model,
        build_loss("ce"),
        build_data("synthetic", **DATA),
        iterations=3,
        batch_size=4,
        val_every=3,
        device="cpu",
        progress=False,
        run_dir=folder,
        seed=1,
        select_metric=norm["select_metric"],
    )
    messages = []
    resumed = load_or_train(
        config, tmp_path / "a", device="cpu", progress=False, figures=False, log=messages.append
    )
    assert "resuming" in messages[0]
    straight = load_or_train(
        config, tmp_path / "b", device="cpu", progress=False, figures=False, log=None
    )
    assert resumed.history["loss"] == straight.history["loss"]
    assert resumed.metrics["dice"] == straight.metrics["dice"]


def test_temperature_scaling_reuses_the_trained_run(root):
    (ce,) = find_runs(root, loss="ce", seed=1, temperature_scaling=False)
    ts = load_or_train(
        cfg(loss="ce", seed=1, temperature_scaling=True),
        root,
        device="cpu",
        progress=False,
        figures=False,
        log=None,
    )
    assert ts.path != ce.path and ts.label == "CE + TS"
    t = ts.metrics["temperature"]
    assert t > 0 and math.isfinite(t)
    same = (ts.path / WEIGHTS_FILE).read_bytes() == (ce.path / WEIGHTS_FILE).read_bytes()
    assert same  # no retraining: the CE weights are reused
    assert not (ts.path / CHECKPOINT_NAME).exists()  # and no second training state
    from mls_tutorial.data import build_data

    data = build_data("synthetic", **DATA)
    ref = evaluate(ce.load_model("cpu"), data.test, 4, device="cpu", temperature=t)
    assert ts.metrics["ece"] == pytest.approx(ref["ece"], abs=1e-12)
    (ts.path / METRICS_FILE).unlink()  # keep the module's root as the other tests expect
    for f in ts.path.iterdir():
        f.unlink()
    ts.path.rmdir()


def test_load_run_and_example_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / CONFIG_FILE).write_text("{}")
    with pytest.raises(FileNotFoundError, match="history.json"):
        load_run(tmp_path / "r")
    with pytest.raises(FileNotFoundError):
        find_runs(tmp_path / "missing")


# --------------------------------------------------------------------------- tables


def test_results_table_mean_and_spread_over_seeds(root):
    runs = find_runs(root)
    rows = results_table(runs)
    assert [r["method"] for r in rows] == ["CE", "MbLS m=2"]
    ce = rows[0]
    values = [r.metrics["ece"] for r in runs if r.config["loss"] == "ce"]
    assert ce["n_seeds"] == 2 and ce["seeds"] == [1, 2]
    assert ce["ece"] == pytest.approx(sum(values) / 2, abs=1e-15)
    assert ce["ece_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2), abs=1e-15)
    assert rows[1]["ece_std"] is None and rows[1]["margin"] == 2.0

    md = format_markdown(rows).splitlines()
    assert md[0].startswith("| method | seeds | DSC |") and len(md) == 4
    assert f"{ce['dice']:.3f} ± {ce['dice_std']:.3f}" in md[2]
    parsed = list(csv.DictReader(io.StringIO(format_csv(rows))))  # one line per run
    assert [(p["method"], int(p["seed"])) for p in parsed] == [
        ("CE", 1),
        ("CE", 2),
        ("MbLS m=2", 1),
    ]
    assert float(parsed[0]["ece"]) == pytest.approx(values[0], rel=1e-12)
    assert float(parsed[1]["val_dice"]) == pytest.approx(runs[1].metrics["val"]["dice"], rel=1e-12)


def test_write_results_and_figures(root, tmp_path):
    runs = find_runs(root)
    paths = write_results(results_table(runs), tmp_path, "t")
    assert json.loads(paths["json"].read_text())[0]["method"] == "CE"
    assert paths["md"].read_text().startswith("| method")
    written = save_figures(runs[0])
    assert sorted(p.name for p in written) == sorted(FIGURES)
    assert all(p.stat().st_size > 1000 for p in written)
