"""The margin explorer, driven headless as a notebook would: build it from run folders, set the
slider's value in code, and check what it displays against the run folders' own numbers."""

from __future__ import annotations

import dataclasses
import json
import re

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram  # noqa: E402
from mls_tutorial.runs import DEFAULT_CONFIG, find_runs, load_run, save_figures  # noqa: E402
from mls_tutorial.widgets import margin_explorer  # noqa: E402

K = 3
NAMES, COLORS = ["background", "CSF", "tissue"], ["black", "tab:red", "tab:cyan"]


def make_run(root, loss, margin=None, alpha=None, scale=4.0, seed=1):
    """Write a finished run folder (config, history, metrics, example) from random logits."""
    g = torch.Generator().manual_seed(int(100 * (margin or 0) + 7 * seed + len(loss)))
    logits = scale * torch.randn(2, K, 16, 16, generator=g)
    target = torch.where(
        torch.rand(2, 16, 16, generator=g) < 0.75,
        logits.argmax(1),
        torch.randint(0, K, (2, 16, 16), generator=g),
    )
    meter = CalibrationMeter(K, region="foreground")
    meter.update(logits, target)
    hist = LogitDistanceHistogram(K)
    hist.update(logits)
    kwargs = {} if margin is None else {"margin": float(margin), "alpha": alpha}
    if loss == "ls":
        kwargs = {"alpha": alpha}
    config = {**DEFAULT_CONFIG, "loss": loss, "loss_kwargs": kwargs, "seed": seed}
    cal = meter.compute()
    metrics = {
        "dice": 0.7 + 0.01 * (margin or 0) + 0.001 * scale,
        "ece": cal["ece"],
        "cece": cal["cece"],
        "meter": meter.to_dict(),
        "histogram": hist.to_dict(),
        "data": {"class_names": NAMES, "class_colors": COLORS, "num_classes": K},
    }
    m = "na" if margin is None else f"{float(margin):g}"
    path = root / f"{loss}-m{m}-a{alpha}-s{seed}-0123abcd"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps(metrics))
    history = {"iteration": [1, 2], "loss": [1.0, 0.5], "val_iteration": [2], "val_fg_dice": [0.6]}
    (path / "history.json").write_text(json.dumps(history))
    probs = torch.softmax(logits[0], 0).numpy()
    np.savez(path / "example.npz", image=np.random.default_rng(0).normal(size=(16, 16)),
             label=target[0].numpy(), probs=probs)  # fmt: skip
    return path, logits


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """CE, LS and MbLS m in {0, 2, 5, 10} (alpha 0.1); returns (root, raw logits by folder name)."""
    root = tmp_path_factory.mktemp("runs")
    raw = {}
    for args in [("ce", None, None, 10.0), ("ls", None, 0.1, 3.0)] + [
        ("mbls", m, 0.1, 1.0 + m / 2) for m in (0, 2, 5, 10)
    ]:
        path, logits = make_run(root, *args)
        raw[path.name] = logits
    return root, raw


def distances(logits) -> np.ndarray:
    z = logits.double().numpy().swapaxes(0, 1).reshape(K, -1)
    winner = z.argmax(0)
    return (z.max(0) - z)[np.arange(K)[:, None] != winner[None, :]]


def json_metrics(run) -> dict:
    return json.loads((run.path / "metrics.json").read_text())


def margin_line(box):
    ax = box.panels["histogram"].axes[0]
    return [ln for ln in ax.lines if ln.get_gid() == "margin"][0]


def test_slider_moves_histogram_reliability_overlay_and_marker(sweep):
    root, raw = sweep
    box = margin_explorer(find_runs(root))
    assert isinstance(box, widgets.VBox)
    assert plt.get_fignums() == []  # one private Figure, nothing left in pyplot
    assert box.slider.continuous_update is False
    assert [v for _, v in box.slider.options] == [0.0, 2.0, 5.0, 10.0]
    assert box.alpha.layout.display == "none"  # one alpha: no selector
    assert box.image.value[:4] == b"\x89PNG" and box.error.value == ""
    assert box.run.margin == 0.0
    first, figure = box.image.value, box.figure

    box.slider.value = 5.0  # what a notebook's last cell does, headless

    run = box.run
    assert run.config["loss"] == "mbls" and run.margin == 5.0 and box.error.value == ""
    assert box.figure is figure and box.image.value != first
    assert list(margin_line(box).get_xdata()) == [5.0, 5.0]
    share = np.mean(distances(raw[run.path.name]) > 5.0)
    labels = [p.get_label() for p in box.panels["histogram"].axes[0].patches]
    assert any(lab.startswith("CE (") for lab in labels)
    assert any(f"MbLS m=5 ({share:.1%} > 5)" in lab for lab in labels)
    assert f"{share:.1%}" in box.status.value
    expected = json_metrics(run)
    assert box.markers and {line.get_gid() for _, line in box.markers} == {"dice", "ece", "cece"}
    for marker, line in box.markers:
        assert list(marker.get_xdata()) == [5.0]
        assert marker.get_ydata()[0] == pytest.approx(expected[line.get_gid()])
    rel = CalibrationMeter.from_dict(expected["meter"]).reliability()
    bars = [c for c in box.panels["reliability"].axes[0].containers if c.get_label() == "accuracy"]
    filled = rel["counts"] > 0
    np.testing.assert_allclose([b.get_height() for b in bars[0]], rel["accuracy"][filled])
    probs = np.load(run.path / "example.npz")["probs"]
    overlay_axes = box.panels["overlay"].axes
    assert overlay_axes[2].get_title() == "prediction"
    assert overlay_axes[1].get_title() == "test label (sampled)"  # the bundled task's labels
    pred_rgba = [im for im in overlay_axes[2].images if im.get_gid() == "overlay"][0].get_array()
    tissue = probs.argmax(0) == 2
    np.testing.assert_allclose(
        pred_rgba[tissue], [[*matplotlib.colors.to_rgb("tab:cyan"), 0.5]] * tissue.sum()
    )

    before = box.image.value
    box.slider.value = 10.0
    assert box.run.margin == 10.0 and box.image.value != before
    assert all(list(m.get_xdata()) == [10.0] for m, _ in box.markers)


def test_sweep_panel_dice_axis_does_not_magnify_tiny_differences(tmp_path):
    """Dice 0.529-0.534 across margins must not fill the panel (the axis spans >= 0.1)."""
    for m, dice in ((2, 0.529), (5, 0.534), (10, 0.531)):
        path, _ = make_run(tmp_path, "mbls", m, 0.1)
        metrics = json.loads((path / "metrics.json").read_text())
        (path / "metrics.json").write_text(json.dumps({**metrics, "dice": dice}))
    box = margin_explorer(find_runs(tmp_path))
    ax_dsc, ax_cal = box.panels["sweep"].axes
    lo, hi = ax_dsc.get_ylim()
    assert hi - lo >= 0.1 - 1e-12 and lo < 0.529 and hi > 0.534
    assert ax_cal.get_ylim()[0] == 0.0
    box.slider.value = 5.0
    assert ax_dsc.get_ylim() == (lo, hi)  # moving the marker keeps the axis


def test_summary_toggle_redraws_with_the_per_voxel_mean(sweep):
    box = margin_explorer(find_runs(sweep[0]))
    before = box.image.value
    box.summary.value = "mean"
    assert "mean over the K-1" in box.panels["histogram"].axes[0].get_xlabel()
    assert box.image.value != before


def test_alpha_selector_switches_the_sweep(sweep, tmp_path):
    root, _ = sweep
    for m in (3, 5):
        make_run(tmp_path, "mbls", m, 0.2)
    box = margin_explorer(find_runs(root) + find_runs(tmp_path))
    assert box.alpha.layout.display is None
    assert [v for _, v in box.alpha.options] == [0.1, 0.2]
    box.alpha.value = 0.2
    assert [v for _, v in box.slider.options] == [3.0, 5.0]
    assert box.slider.value == 3.0  # nearest to the previous margin 0
    assert box.run.config["loss_kwargs"]["alpha"] == 0.2 and box.run.margin == 3.0
    dice = [line for _, line in box.markers if line.get_gid() == "dice"][0]
    assert list(dice.get_xdata()) == [3.0, 5.0]


def test_train_button_adds_the_new_run(sweep, tmp_path):
    calls = []

    def train_fn(margin, alpha):
        calls.append((margin, alpha))
        path, _ = make_run(tmp_path, "mbls", margin, alpha)
        return load_run(path)

    box = margin_explorer(find_runs(sweep[0]), train_fn=train_fn)
    assert box.train_button in box.children[-2].children and not box.train_button.disabled
    before = box.image.value
    box.train_margin.value, box.train_alpha.value = 7.0, 0.1
    box.train_button.click()
    assert calls == [(7.0, 0.1)] and box.error.value == ""
    assert 7.0 in [v for _, v in box.slider.options] and box.slider.value == 7.0
    assert box.run.margin == 7.0 and box.image.value != before
    dice = [line for _, line in box.markers if line.get_gid() == "dice"][0]
    assert list(dice.get_xdata()) == [0.0, 2.0, 5.0, 7.0, 10.0]
    assert not box.train_button.disabled


def test_train_errors_are_shown_in_the_widget(sweep):
    calls = []

    def failing(margin, alpha):
        calls.append(margin)
        raise RuntimeError("simulated out of memory")

    box = margin_explorer(find_runs(sweep[0]), train_fn=failing)
    shown = box.run
    box.train_margin.value = -1.0
    box.train_button.click()
    assert calls == [] and "margin must be &gt;= 0" in box.error.value
    assert isinstance(box.last_error, ValueError)
    box.train_margin.value = 3.0
    box.train_button.click()
    assert calls == [3.0] and "simulated out of memory" in box.error.value
    assert isinstance(box.last_error, RuntimeError)
    assert box.run is shown and not box.train_button.disabled
    box.train_alpha.value = 0.0
    box.train_button.click()
    assert "alpha must be &gt; 0" in box.error.value
    n_runs = len(box.runs)
    box.train_fn, box.train_alpha.value = (lambda m, a: None), 0.1  # returns no run
    box.train_button.click()
    assert "no config" in box.error.value and len(box.runs) == n_runs and box.run is shown


def test_empty_sweep_with_train_fn_waits_for_a_run(sweep, tmp_path):
    ce = [r for r in find_runs(sweep[0]) if r.config["loss"] == "ce"]

    def train_fn(margin, alpha):
        return load_run(make_run(tmp_path, "mbls", margin, alpha)[0])

    box = margin_explorer(ce, train_fn=train_fn)
    assert box.run is None and box.slider.disabled and "No MbLS run yet" in box.status.value
    box.train_margin.value = 4.0
    box.train_button.click()
    assert box.error.value == "" and box.run.margin == 4.0 and not box.slider.disabled
    assert box.image.value[:4] == b"\x89PNG"


def test_a_broken_run_is_reported_and_the_rest_drawn(sweep):
    runs = find_runs(sweep[0])
    broken = []
    for run in runs:
        if run.config["loss"] == "mbls" and run.margin == 0.0:
            metrics = {k: v for k, v in run.metrics.items() if k != "histogram"}
            run = dataclasses.replace(run, metrics=metrics)
        broken.append(run)
    box = margin_explorer(broken)
    assert "histogram" in box.error.value and "KeyError" in box.error.value
    assert box.image.value[:4] == b"\x89PNG"
    assert len(box.panels["reliability"].axes) == 2  # the other panels are drawn
    box.slider.value = 2.0  # a sound run clears the error
    assert box.error.value == ""


def test_bad_arguments_raise(sweep):
    runs = find_runs(sweep[0])
    ce = [r for r in runs if r.config["loss"] == "ce"]
    with pytest.raises(ValueError, match="no MbLS run"):
        margin_explorer(ce)
    with pytest.raises(ValueError, match="runs"):
        margin_explorer("runs/")
    with pytest.raises(ValueError, match="example_index"):
        margin_explorer(runs, example_index=1)
    with pytest.raises(ValueError, match="example_index"):
        margin_explorer(runs, example_index=-1)
    with pytest.raises(ValueError, match="train_fn"):
        margin_explorer(runs, train_fn=3)
    with pytest.raises(ValueError, match="summary"):
        margin_explorer(runs, summary="median")
    with pytest.raises(ValueError, match="config"):
        margin_explorer([object()])
    bad = dataclasses.replace(runs[-1], config={**runs[-1].config, "loss_kwargs": {"margin": -2}})
    with pytest.raises(ValueError, match="margin"):
        margin_explorer([bad])


@pytest.mark.slow  # run_label imports the datasets (MONAI): seconds of imports
def test_run_folder_figures_are_drawn(sweep):
    """runs.save_figures draws every figure of a run folder through these plots."""
    run = [r for r in find_runs(sweep[0]) if r.margin == 5.0][0]
    written = save_figures(run)
    assert {p.name for p in written} == {
        "reliability.png",
        "classwise_reliability.png",
        "logit_distances.png",
        "training_curves.png",
        "example.png",
    }
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    assert re.match(r"mbls-m5-", run.path.name)


def test_ce_and_ce_with_temperature_scaling_are_two_references(sweep, tmp_path):
    """References are keyed by their label (registry.config_label), not by the loss name."""
    runs = find_runs(sweep[0])
    ce = next(r for r in runs if r.config["loss"] == "ce")
    ts = dataclasses.replace(
        ce,
        config={**ce.config, "temperature_scaling": True},
        metrics={**ce.metrics, "ece": ce.metrics["ece"] / 2},
    )
    ls3 = dataclasses.replace(
        next(r for r in runs if r.config["loss"] == "ls"),
        config={**ce.config, "loss": "ls", "loss_kwargs": {"alpha": 0.3}},
    )
    box = margin_explorer([*runs, ts, ls3])
    assert set(box._refs) == {"CE", "CE + TS", "LS", "LS a=0.3"}
    assert box._refs["CE"] is ce and box._refs["CE + TS"] is ts
    lines = {ln.get_label() for ax in box.panels["sweep"].axes for ln in ax.lines}
    assert {"CE ECE", "CE + TS ECE", "LS a=0.3 ECE"} <= lines, lines
