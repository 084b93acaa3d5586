"""plots.paired_differences draws each seed's difference where the data put it (no pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mls_tutorial import plots  # noqa: E402

PAIRS = [
    {"pair": "MbLS - default", "seeds": [1, 2, 3], "diffs": {"Dice": [0.01, -0.02, 0.004],
                                                               "fg ECE": [-0.003, 0.001, -0.01]}},
    {"pair": "CE+m - CE", "seeds": [1, 3], "diffs": {"Dice": [0.02, 0.0], "fg ECE": [0.002, -0.004]}},
]  # fmt: skip


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _points(axis):
    """(x, y) of every single-point marker line; (x0, x1, y0, y1) of the mean bars."""
    dots, bars = [], []
    for line in axis.get_lines():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if line.get_label().startswith("seed"):
            dots.append((x[0], y[0], line.get_label()))
        elif line.get_label() == "mean":
            bars.append((x[0], x[1], y[0], y[1]))
    return dots, bars


def test_dots_sit_at_each_seed_difference_and_the_bar_at_the_mean():
    fig = plots.paired_differences(PAIRS, ["Dice", "fg ECE"], better={"fg ECE": "lower"})
    axes = fig.axes
    assert len(axes) == 2
    for axis, metric in zip(axes, ["Dice", "fg ECE"], strict=True):
        dots, bars = _points(axis)
        want = [(d, row, f"seed {s}") for row, p in enumerate(PAIRS)
                for s, d in zip(p["seeds"], p["diffs"][metric], strict=True)]  # fmt: skip
        assert [(pytest.approx(x), y, lab) for x, y, lab in dots] == want
        for row, (p, bar) in enumerate(zip(PAIRS, bars, strict=True)):
            mean = float(np.mean(p["diffs"][metric]))
            assert bar[0] == bar[1] == pytest.approx(mean)
            assert bar[2] < row < bar[3]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["MbLS - default", "CE+m - CE"]
    assert "method better" in axes[1].get_xlabel() and "<-" in axes[1].get_xlabel()
    assert "better" not in axes[0].get_xlabel()  # not told: no side claimed
    # seed colours are consistent across pairs: seed 3 has one colour in both rows
    colours = {lab: line.get_color() for line in axes[0].get_lines()
               if (lab := line.get_label()).startswith("seed")}  # fmt: skip
    assert len(set(colours.values())) == 3


@pytest.mark.parametrize(
    "pairs, metrics, better, match",
    [
        ([], ["Dice"], None, "pairs is empty"),
        (PAIRS, [], None, "metrics is empty"),
        (PAIRS, ["NLL"], None, r"no differences for \['NLL'\]"),
        ([{"pair": "x", "seeds": [1, 2], "diffs": {"Dice": [0.1]}}], ["Dice"], None, "one difference per seed"),
        (PAIRS, ["Dice"], {"Dice": "up"}, "'lower' or 'higher'"),
    ],
)  # fmt: skip
def test_bad_input_names_the_problem(pairs, metrics, better, match):
    with pytest.raises(ValueError, match=match):
        plots.paired_differences(pairs, metrics, better=better)
