"""plots.multipliers: the augmented-Lagrangian picture and the multipliers of a CALS run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mls_tutorial import plots
from mls_tutorial.losses.adaptive import penalty_phr


def _history(v=4, k=3):
    rng = np.random.default_rng(0)
    lam = rng.uniform(1e-6, 1.0, size=(v, k))
    return {
        "iteration": list(range(1, 41)),
        "loss": list(np.linspace(1.0, 0.2, 40)),
        "val_iteration": [10, 20, 30, 40][:v],
        "val_fg_dice": list(rng.uniform(0, 1, v)),
        "loss_state": [
            {"lambda": lam[i].tolist(), "rho": [1.0 + i] * k, "constraint": (-lam[i]).tolist()}
            for i in range(v)
        ],
    }, lam


def test_multiplier_history_reads_loss_state():
    history, lam = _history()
    h = plots.multiplier_history(history)
    np.testing.assert_array_equal(h["iteration"], [10, 20, 30, 40])
    np.testing.assert_array_equal(h["lambda"], lam)
    np.testing.assert_array_equal(h["rho"][:, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(h["constraint"], -lam)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"loss": [1.0]}, "no 'loss_state'"),
        ({"loss_state": [{"rho": [1.0]}]}, "'lambda'"),
        ({"loss_state": [{"lambda": 1.0}]}, "K numbers"),
        ([1, 2], "must be a dict"),
    ],
)
def test_multiplier_history_names_what_is_missing(bad, match):
    with pytest.raises(ValueError, match=match):
        plots.multiplier_history(bad)


def test_training_curves_adds_the_multiplier_panel():
    history, lam = _history()
    fig = plots.training_curves(history, class_names=["a", "b", "c"])
    assert len(fig.axes) == 3
    ax = fig.axes[2]
    assert ax.get_yscale() == "log"
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith(("a", "b", "c"))]
    assert [ln.get_label().split()[0] for ln in lines] == ["a", "b", "c"]
    for i, ln in enumerate(lines):
        np.testing.assert_array_equal(ln.get_ydata(), lam[:, i])
    plt.close(fig)
    # without loss_state: the two panels of before; two given axes: no third panel
    plain = {k: v for k, v in history.items() if k != "loss_state"}
    fig = plots.training_curves(plain)
    assert len(fig.axes) == 2
    plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    plots.training_curves(history, ax=axes)
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="2 names for 3 multipliers"):
        plots.training_curves(history, class_names=["a", "b"])
    plt.close("all")


def test_multiplier_curves_draws_lambdas_and_constraints():
    history, lam = _history()
    fig = plots.multiplier_curves(history)
    ax_lam, ax_h = fig.axes
    np.testing.assert_array_equal(ax_lam.get_lines()[1].get_ydata(), lam[:, 1])
    np.testing.assert_array_equal(ax_h.get_lines()[2].get_ydata(), -lam[:, 2])
    assert "rho 4" in ax_lam.get_lines()[0].get_label()  # the last rho
    plt.close(fig)


def test_augmented_lagrangian_curves_match_the_loss_penalty():
    lambdas, rho = (0.0, 0.5, 2.0), 1.5
    fig = plots.augmented_lagrangian_curves(lambdas, rho=rho, alpha=0.7)
    ax_p, ax_g = fig.axes
    for i, lm in enumerate(lambdas):
        h = torch.as_tensor(ax_p.get_lines()[i].get_xdata(), dtype=torch.float64)
        value, slope = penalty_phr(h, torch.tensor(lm, dtype=torch.float64), torch.tensor(rho))
        np.testing.assert_allclose(ax_p.get_lines()[i].get_ydata(), value.numpy(), atol=1e-12)
        np.testing.assert_allclose(ax_g.get_lines()[i].get_ydata(), slope.numpy(), atol=1e-12)
    hinge = ax_p.get_lines()[len(lambdas)]
    np.testing.assert_allclose(hinge.get_ydata(), 0.7 * np.maximum(hinge.get_xdata(), 0))
    plt.close(fig)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rho": 0.0}, "rho"), ({"lambdas": (-1.0,)}, "lambdas"), ({"alpha": -1.0}, "alpha")],
)
def test_augmented_lagrangian_curves_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.augmented_lagrangian_curves(**kwargs)


def test_class_distance_histograms_count_each_class_where_it_loses():
    # two voxels, K = 3: winners 0 and 2; d = max z - z
    z = np.array([[[3.0, 0.0], [1.0, 1.5], [0.0, 4.0]]])  # (N=1, K=3, 2 voxels)
    fig = plots.class_distance_histograms({"run": z}, margin=2.5, max_distance=5.0, n_bins=5)
    panels = fig.axes
    assert len(panels) == 3
    # class 1 loses in both voxels: d = 2 and 2.5 -> bins [2,3) twice; none above 2.5
    (stairs,) = panels[1].patches
    np.testing.assert_allclose(stairs.get_data().values, [0, 0, 1.0, 0, 0])
    assert "0.0% > 2.5" in panels[1].get_legend().get_texts()[0].get_text()
    # class 0 loses only in voxel 2 (d = 4): one voxel, above the margin
    np.testing.assert_allclose(panels[0].patches[0].get_data().values, [0, 0, 0, 0, 1.0])
    assert "100.0% > 2.5" in panels[0].get_legend().get_texts()[0].get_text()
    plt.close(fig)
    # the same numbers as data: class 1 loses twice (d = 2, 2.5), class 0 once (d = 4)
    data = plots.class_distance_data(z, margin=2.5, max_distance=5.0, n_bins=5)
    np.testing.assert_array_equal(data["n"], [1, 2, 1])
    np.testing.assert_allclose(data["fraction_above"], [1.0, 0.0, 1.0])
    assert plots.class_distance_data(z)["fraction_above"] is None
    with pytest.raises(ValueError, match="NaN"):
        plots.class_distance_histograms({"x": np.full((1, 3, 2), np.nan)})
    with pytest.raises(ValueError, match="2 names for K = 3"):
        plots.class_distance_histograms({"x": z}, class_names=["a", "b"])
