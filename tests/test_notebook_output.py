"""``NotebookOutput``: a notebook's figures saved and listed, its metrics.json written; the
records its last cell builds (``pick``, ``per_class``, ``run_record``, ``row_record``,
``reference_record``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mls_tutorial.notebook_output import (  # noqa: E402
    SCORES,
    NotebookOutput,
    per_class,
    pick,
    reference_record,
    row_record,
    run_record,
)


def test_figures_are_saved_listed_and_added_last_to_metrics(tmp_path):
    output = NotebookOutput(tmp_path / "new" / "folder")  # created
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    output.save(fig, "line.png")
    output.save(memoryview(b"\x89PNG\r\n\x1a\n-bytes"), "widget.png")  # a widget's value
    assert plt.fignum_exists(fig.number)  # left open: it still shows inline
    plt.close(fig)
    assert (output.path / "line.png").read_bytes().startswith(b"\x89PNG")
    assert (output.path / "widget.png").read_bytes().endswith(b"-bytes")
    written = output.write_metrics({"dice": 0.5, "nested": {"a": [1, 2]}})
    assert list(written) == ["dice", "nested", "figures"]
    assert written["figures"] == ["line.png", "widget.png"]
    text = (output.path / "metrics.json").read_text()
    assert text == json.dumps(written, indent=2) and json.loads(text) == written


#: an evaluation result as ``evaluate`` / a run's ``metrics`` / the true probabilities give it
RESULT = {
    **{k: 0.1 * i for i, k in enumerate(SCORES, start=1)},
    "prob_gap": 0.05,
    "per_class": {"csf": {"dice": 0.2, "hd95": 9.0}, "gm": {"dice": 0.7, "hd95": 3.0}},
}


def test_pick_keeps_the_order_asked_adds_a_suffix_and_names_a_missing_key():
    assert list(pick(RESULT, ("gap", "dice"))) == ["gap", "dice"]
    assert pick(RESULT, ("ece",), suffix="_ts") == {"ece_ts": RESULT["ece"]}
    with pytest.raises(KeyError, match="nll"):
        pick(RESULT, ("dice", "nll"))


def test_per_class_reads_one_number_per_class():
    assert per_class(RESULT) == {"csf": 0.2, "gm": 0.7}
    assert per_class(RESULT, "hd95") == {"csf": 9.0, "gm": 3.0}


def test_run_record_lists_a_run_then_its_scores_by_class_then_extra():
    run = SimpleNamespace(
        label="MbLS m=5", config={"loss": "mbls"}, margin=5.0, cached=True, metrics=RESULT
    )
    record = run_record(run, share_above_own_margin=0.25)
    assert list(record) == [
        "label", "loss", "margin", "cached", *SCORES, "per_class_dice", "per_class_hd95",
        "share_above_own_margin",
    ]  # fmt: skip
    assert record["label"] == "MbLS m=5" and record["loss"] == "mbls" and record["margin"] == 5.0
    assert record["cached"] is True and record["share_above_own_margin"] == 0.25
    assert record["ece"] == RESULT["ece"] and record["per_class_hd95"] == {"csf": 9.0, "gm": 3.0}
    assert list(run_record(run, keys=("dice",))) == [
        "label", "loss", "margin", "cached", "dice", "per_class_dice", "per_class_hd95"
    ]  # fmt: skip


def test_row_record_takes_the_row_s_means_and_the_run_s_classes():
    row = {
        "method": "CE + TS", "loss": "ce", "margin": None, "temperature_scaling": True,
        "family": "ce", **{k: 1.0 for k in (*SCORES, "prob_gap")},
    }  # fmt: skip
    record = row_record(row, RESULT, keys=(*SCORES, "prob_gap"))
    assert list(record) == [
        "name", "loss", "margin", "temperature_scaling", *SCORES, "prob_gap",
        "per_class_dice", "per_class_hd95",
    ]  # fmt: skip
    assert record["name"] == "CE + TS" and record["temperature_scaling"] is True
    assert record["dice"] == 1.0  # the row's, not the result's
    assert record["per_class_dice"] == {"csf": 0.2, "gm": 0.7}  # the result's


def test_reference_record_is_the_scores_and_the_dice_by_class():
    record = reference_record(RESULT, keys=("dice", "ece", "gap"))
    assert record == {
        "dice": RESULT["dice"], "ece": RESULT["ece"], "gap": RESULT["gap"],
        "per_class_dice": {"csf": 0.2, "gm": 0.7},
    }  # fmt: skip
    assert list(reference_record(RESULT)) == [
        "dice", "hd95", "ece", "cece", "gap", "per_class_dice"
    ]  # fmt: skip
