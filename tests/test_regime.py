"""The regime study: memorisation from the history, cells (choose on some seeds, report on
others), findings, tables and figures on hand-made runs; the study script end to end (--fast)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mls_tutorial.metrics import LogitDistanceHistogram
from mls_tutorial.regime import (
    cell_holes,
    cell_ranking,
    cell_row,
    finding_paragraph,
    history_divergence,
    ranking_holes,
    records_csv,
    regime_cells,
    regime_markdown,
    regime_study,
    run_record,
    seeds_lower,
)
from mls_tutorial.runs import Run, normalize_config, run_name

ROOT = Path(__file__).resolve().parents[1]
DATA = {"n_train": 4, "size": 16, "slices": 2, "n_val": 1, "n_test": 1, "seed": 0}
DEFAULTS = {"mbls": {"margin": 5.0, "alpha": 0.1}}


def histogram(scale: float) -> dict:
    h = LogitDistanceHistogram(4)
    h.update(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scale)
    return h.to_dict()


def make_run(tmp, loss, seed, iterations, *, val_ece, test_ece, val_dice=0.5, **kwargs) -> Run:
    cfg = normalize_config(
        {
            "data": "synthetic",
            "data_params": DATA,
            "loss": loss,
            "loss_kwargs": kwargs,
            "seed": seed,
            "iterations": iterations,
        }
    )
    metrics = {
        "dice": 0.5,
        "dice_bayes": 0.6,
        "hd95": 3.0,
        "ece": test_ece,
        "tce": 0.2,
        "gap": test_ece,
        "val": {"dice": val_dice, "ece": val_ece, "gap": val_ece},
        "per_class": {"class1": {"dice": 0.5, "hd95": 3.0}},
        "histogram": histogram(iterations / 500),
    }
    history = {
        "iteration": list(range(1, 5)),
        "loss": [1.0, 0.8, 0.6, 0.4],
        "val_iteration": [2, 4],
        "val_fg_nll": [0.5, 0.5 + iterations / 10000],
        "seconds": 1.0,
    }
    path = tmp / run_name(cfg)
    path.mkdir(parents=True, exist_ok=True)
    return Run(path=path, config=cfg, history=history, metrics=metrics)


# CE's test ECE per (iterations, seed); MbLS m=3 and m=5 are given as differences to it
CE_ECE = {(1000, 4): 0.10, (1000, 5): 0.20, (4000, 4): 0.30, (4000, 5): 0.40}


def study_runs(tmp: Path, m3_long=(-0.10, -0.12)) -> list[Run]:
    """Choosing seeds 1-2: m=3 has the lower validation ECE (but the worse test ECE, which
    must not matter); report seeds 4-5: m=3's advantage over CE given per length."""
    runs = []
    for n in (1000, 4000):
        for s in (1, 2):  # choosing seeds: adversarial test numbers
            runs.append(make_run(tmp, "ce", s, n, val_ece=0.3, test_ece=0.3))
            runs.append(make_run(tmp, "mbls", s, n, val_ece=0.10, test_ece=0.9, margin=3.0))
            runs.append(make_run(tmp, "mbls", s, n, val_ece=0.20, test_ece=0.0, margin=5.0))
        for i, s in enumerate((4, 5)):  # report seeds: validation would pick m=5 here
            ce = CE_ECE[(n, s)]
            d3 = (-0.02, -0.03)[i] if n == 1000 else m3_long[i]
            runs.append(make_run(tmp, "ce", s, n, val_ece=0.3, test_ece=ce))
            runs.append(make_run(tmp, "mbls", s, n, val_ece=0.9, test_ece=ce + d3, margin=3.0))
            runs.append(make_run(tmp, "mbls", s, n, val_ece=0.0, test_ece=ce + 0.01, margin=5.0))
    return runs


def build(tmp, **kw):
    return regime_study(
        study_runs(tmp, **kw), choose_seeds=[1, 2], report_seeds=[4, 5], defaults=DEFAULTS
    )


def test_history_divergence_reads_the_rise_past_the_best_validation():
    h = {
        "iteration": list(range(1, 7)),
        "loss": [2.0, 1.8, 1.0, 0.8, 0.5, 0.3],
        "val_iteration": [2, 4, 6],
        "val_fg_nll": [0.9, 0.6, 0.75],
    }
    d = history_divergence(h)
    assert d["val_nll_min"] == 0.6 and d["val_nll_min_iteration"] == 4
    assert d["val_nll_rise"] == pytest.approx(0.15)
    # windows of 2 iterations (the gap between validations) ending at 4 and at 6
    assert d["train_loss_at_min"] == pytest.approx(0.9) and d["train_loss_last"] == pytest.approx(
        0.4
    )
    assert d["train_loss_fall"] == pytest.approx(0.5)
    assert history_divergence({})["val_nll_rise"] is None


def test_cells_choose_on_choosing_seeds_and_report_on_the_others(tmp_path):
    study, records = build(tmp_path)
    assert [(c["preset"], c["iterations"]) for c in study["cells"]] == [
        ("tiny", 1000),
        ("tiny", 4000),
    ]
    for cell in study["cells"]:
        assert cell["choice"]["mbls"]["chosen"] == "MbLS m=3"  # validation of seeds 1-2 only
        assert cell["choice"]["mbls"]["seeds"] == [1, 2]
        default, chosen = cell_row(cell, "mbls", "default"), cell_row(cell, "mbls", "chosen")
        assert default["method"] == "MbLS m=5" and chosen["method"] == "MbLS m=3"
        for row in cell["rows"]:
            assert row["seeds"] == [4, 5]  # never a choosing seed
        n = cell["iterations"]
        ce = [CE_ECE[(n, s)] for s in (4, 5)]
        assert cell_row(cell, "ce", "reference")["ece"] == pytest.approx(np.mean(ce))
        d = chosen["vs_ce"]["ece"]
        assert d["n_better"] == 2 and d["n"] == 2 and d["seeds"] == [4, 5]
        assert default["vs_ce"]["ece"]["diffs"] == pytest.approx([0.01, 0.01])
        assert default["vs_ce"]["ece"]["n_better"] == 0
    assert len(records) == 24 and {r["role"] for r in _csv(records)} == {"choose", "report"}


def _csv(records):
    return list(csv.DictReader(io.StringIO(records_csv(records, [1, 2], [4, 5]))))


def test_findings_trend_is_seed_by_seed_and_the_paragraph_reads_it(tmp_path):
    study, _ = build(tmp_path)
    entry = study["findings"]["chosen"]["tiny"]
    trend = entry["trend"]["mbls"]
    assert trend["seeds"] == [4, 5] and trend["n_grew"] == 2
    assert trend["change"] == pytest.approx([-0.08, -0.09])
    assert entry["advantage"]["mbls"]["4000"]["relative"] == pytest.approx(-0.11 / 0.35)
    text = finding_paragraph(json.loads(json.dumps(study)))  # as read back from regime.json
    assert "(MbLS m=3 -> MbLS m=3)" in text and "grew on 2 of 2 seeds: it grows" in text
    # the default knob's difference (+0.01 on each seed at both lengths) neither grows nor
    # shrinks: no trend claimed
    assert "(MbLS m=5) goes +0.010" in text and "grew on 0 of 2 seeds: no consistent" in text
    assert "0.150 -> 0.350" in text  # CE's ECE, from the JSON
    # one seed's advantage shrinks: no trend is claimed
    mixed, _ = build(tmp_path / "mixed", m3_long=(-0.10, +0.05))
    text = finding_paragraph(mixed)
    assert "grew on 1 of 2 seeds: no consistent change" in text


def test_a_chosen_knob_without_report_runs_is_a_hole_not_another_knob(tmp_path):
    runs = [
        r
        for r in study_runs(tmp_path)
        if not (r.config["loss_kwargs"].get("margin") == 3.0 and r.config["seed"] > 3)
    ]
    study, _ = regime_study(runs, choose_seeds=[1, 2], report_seeds=[4, 5], defaults=DEFAULTS)
    for cell in study["cells"]:
        assert cell["choice"]["mbls"]["chosen"] == "MbLS m=3"  # chosen, never run on 4-5
        assert "chosen MbLS margin=3 alpha=0.1: no run on the report seeds" in cell["missing"]
        assert "CE + TS: no run on the report seeds" in cell["missing"]
        assert cell["missing"] == cell_holes(cell)
        # the re-chosen ranking leaves MbLS out (its default m=5 ran, but was not chosen)
        assert [f for _, f, _ in cell_ranking(cell, "chosen")] == ["ce"]
        assert "mbls" in ranking_holes(cell, "chosen")
        assert [f for _, f, _ in cell_ranking(cell, "default")] == ["ce", "mbls"]  # +0.01
        assert seeds_lower(cell, "ce", "mbls", "default") == (2, 2)
        # LS, ECP, CALS never ran: each named as a hole
        assert (
            "LS: no knob re-chosen (no runs of its grid on the choosing seeds)" in cell["missing"]
        )
    text = finding_paragraph(json.loads(json.dumps(study)))
    assert "not ranked (no report runs at this knob): LS, ECP, MbLS, CALS" in text


def test_cell_lists_what_it_lacks(tmp_path):
    runs = [
        r for r in study_runs(tmp_path) if not (r.config["loss"] == "ce" and r.config["seed"] < 3)
    ]
    records = [run_record(r) for r in runs]
    cells = regime_cells(runs, records, choose_seeds=[1, 2], report_seeds=[4, 5], defaults=DEFAULTS)
    assert cells[0]["choice"] == {} and any("no knob re-chosen" in m for m in cells[0]["missing"])
    assert cell_row(cells[0], "mbls", "default") is not None  # the default knob is still reported
    with pytest.raises(ValueError, match="overlap"):
        regime_cells(runs, records, choose_seeds=[1, 4], report_seeds=[4, 5], defaults=DEFAULTS)


def test_markdown_and_csv_hold_every_run_and_cell(tmp_path):
    study, records = build(tmp_path)
    md = regime_markdown(study)
    assert md.count("## tiny,") == 2 and "MbLS m=3 (0.100)" in md  # the choice and its val ECE
    rows = _csv(records)
    assert len(rows) == len(records) and {r["iterations"] for r in rows} == {"1000", "4000"}
    assert all(math.isfinite(float(r["ece"])) for r in rows)


def test_figures_draw_every_family_and_preset(tmp_path):
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    study, _ = build(tmp_path)
    study = json.loads(json.dumps(study))
    fig = Figure()
    plots.regime_curves(study, keys=("ece", "gap"), ax=list(fig.subplots(2, 1).ravel()))
    gids = {ln.get_gid() for ax in fig.axes for ln in ax.lines}
    assert {"tiny:ece:ce:default", "tiny:ece:mbls:default", "tiny:ece:mbls:re-chosen"} <= gids
    pts = plots.regime_points(study, "ece", "default")
    assert {(p["family"], p["iterations"]) for p in pts} == {
        (f, n) for f in ("ce", "mbls") for n in (1000, 4000)
    }
    fig = Figure()
    plots.regime_histograms(study, ax=fig.add_subplot())
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("1000 iterations") and labels[1].startswith("4000 iterations")
    with pytest.raises(ValueError, match="no CE histogram for seed"):
        plots.regime_histograms(study, seed=99)
    with pytest.raises(ValueError, match="cells"):
        plots.regime_curves({"cells": []})


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("regime_study", ROOT / "docs" / "regime_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_script_fast_end_to_end(tmp_path):
    """``docs/regime_study.py --fast`` trains, writes tarballs, tables and figures; then
    ``--report-only`` rebuilds the same tables from the run folders (in this process)."""
    root, out, again = tmp_path / "runs", tmp_path / "out", tmp_path / "again"
    common = ["--fast", "--root", str(root), "--device", "cpu"]
    threads = torch.get_num_threads()
    try:
        _script().main(
            [*common, "--out", str(out), "--figures", str(out), "--tar", str(tmp_path / "tar")]
        )
        _script().main([*common, "--report-only", "--out", str(again), "--figures", str(again)])
    finally:
        torch.set_num_threads(threads)
    study = json.loads((out / "regime.json").read_text())
    assert [(c["preset"], c["iterations"]) for c in study["cells"]] == [("tiny", 4), ("tiny", 8)]
    assert study["protocol"]["choose_seeds"] == [1] and study["protocol"]["report_seeds"] == [2]
    for cell in study["cells"]:
        assert {r["family"] for r in cell["rows"]} == {"ce", "ls", "ecp", "mbls", "cals", "ce_ts"}
        assert set(cell["choice"]) >= {"ce", "mbls"}
    assert (out / "regime.csv").read_text() == (again / "regime.csv").read_text()
    rows = list(csv.DictReader(io.StringIO((out / "regime.csv").read_text())))
    trained = [r for r in rows if r["family"] != "ce_ts"]
    assert trained and all(0.0 <= float(r["train_share_above_margin"]) <= 1.0 for r in trained)
    for name in ("regime_ece.png", "regime_distances.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "tar" / "runs_tiny.tar.xz").stat().st_size > 0
    assert "--fast" in (out / "regime.md").read_text().split("```")[1]


def test_capacity_panels_join_no_presets_and_curves_skip_single_lengths(tmp_path):
    """Presets are categories (no line from one architecture to the next); a preset trained at
    one length has no curve against length; the y labels say what the error bars are."""
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    study, _ = build(tmp_path)
    study = json.loads(json.dumps(study))
    small = json.loads(json.dumps(study["cells"][0]))
    small["preset"] = "small"  # a second preset, at 1000 iterations only
    study["cells"].append(small)
    fig = Figure()
    plots.regime_capacity(study, keys=("ece",), ax=fig.add_subplot(), iterations=1000)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tiny", "small"]
    drawn = [ln for ln in ax.lines if ln.get_gid() and ln.get_gid().startswith("ece:")]
    assert drawn and all(ln.get_linestyle() == "None" for ln in drawn)
    assert "mean ± sample sd over seeds 4, 5" in ax.get_ylabel()
    fig = Figure()
    plots.regime_curves(study, keys=("ece", "gap"), ax=list(fig.subplots(1, 2)))
    assert all(ax.get_title().startswith("tiny U-Net") for ax in fig.axes)  # small: one length
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
