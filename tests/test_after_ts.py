"""TS on top of each loss, paired per seed with CE + TS; metrics against training length,
paired with CE at the same length. Hand-made ``results_table`` rows, differences checked
against NumPy seed by seed."""

from __future__ import annotations

import numpy as np
import pytest

from mls_tutorial.after_ts import after_ts_markdown, after_ts_rows
from mls_tutorial.length_curve import length_markdown, length_series, series_label


def row(loss, ece, *, ts=False, iterations=1000, select="last", seeds=(1, 2, 3), dice=None, **kw):
    ece = list(ece)
    dice = list(dice or [0.5] * len(ece))
    return {
        "loss": loss,
        "loss_kwargs": kw,
        "family": loss + ("_ts" if ts else ""),
        "method": {"ce": "CE", "mbls": "MbLS m=5", "ls": "LS"}[loss] + (" + TS" if ts else ""),
        "temperature_scaling": ts,
        "iterations": iterations,
        "select_metric": select,
        "seeds": list(seeds),
        "ece_values": ece,
        "ece": float(np.mean(ece)),
        "ece_std": float(np.std(ece, ddof=1)),
        "dice_values": dice,
        "dice": float(np.mean(dice)),
        "dice_std": float(np.std(dice, ddof=1)),
        "temperature": 1.5 if ts else None,
        "temperature_std": 0.1 if ts else None,
        "gap": 0.01,
        "gap_std": 0.0,
    }


CE, CE_TS = [0.10, 0.12, 0.14], [0.04, 0.05, 0.03]
MBLS, MBLS_TS = [0.08, 0.13, 0.10], [0.05, 0.04, 0.06]


def test_each_loss_plus_ts_is_paired_with_ce_plus_ts_on_the_same_seed():
    rows = [
        row("ce", CE),
        row("ce", CE_TS, ts=True),
        row("mbls", MBLS, margin=5.0),
        row("mbls", MBLS_TS, ts=True, margin=5.0),
        row("ls", [0.1, 0.1, 0.1], alpha=0.1),  # no TS twin: not in the comparison
    ]
    entries = after_ts_rows(rows)
    assert [e["method"] for e in entries] == ["CE", "MbLS m=5"]
    ce, mbls = entries
    assert ce["vs_ref_ts"] is None and ce["vs_ref"] is None  # no difference to itself
    d = mbls["vs_ref_ts"]
    want = np.subtract(MBLS_TS, CE_TS)
    assert d["diffs"] == pytest.approx(want) and d["seeds"] == [1, 2, 3]
    assert d["std"] == pytest.approx(np.std(want, ddof=1))
    assert d["n_better"] == 1 and d["n"] == 3  # lower than CE + TS on seed 2 only
    assert mbls["vs_ref"]["diffs"] == pytest.approx(np.subtract(MBLS, CE))
    assert mbls["ts_effect"]["diffs"] == pytest.approx(np.subtract(MBLS_TS, MBLS))
    md = after_ts_markdown(entries)
    assert "| MbLS m=5 | 1, 2, 3 |" in md and "(lower on 1/3)" in md


def test_the_reference_needs_its_ts_twin_and_lengths_do_not_mix():
    with pytest.raises(ValueError, match="temperature-scaled twin"):
        after_ts_rows([row("ce", CE), row("mbls", MBLS_TS, ts=True, margin=5.0)])
    rows = [
        row("ce", CE),
        row("ce", CE_TS, ts=True),
        row("mbls", MBLS, iterations=2000, margin=5.0),
        row("mbls", MBLS_TS, ts=True, iterations=2000, margin=5.0),
    ]
    (_, mbls) = after_ts_rows(rows)
    assert mbls["vs_ref_ts"] is None  # no CE + TS at 2000 iterations: no pair, not a wrong one


def test_length_series_pair_with_ce_at_the_same_length_and_ts_flag():
    rows = [
        row("ce", [0.10, 0.20, 0.30], iterations=500),
        row("ce", [0.20, 0.30, 0.40], iterations=1000),
        row("ce", [0.05, 0.05, 0.05], iterations=1000, ts=True),
        row("mbls", [0.15, 0.15, 0.25], iterations=500, margin=5.0),
        row("mbls", [0.10, 0.35, 0.20], iterations=1000, margin=5.0),
        row("mbls", [0.04, 0.06, 0.03], iterations=1000, ts=True, margin=5.0),
        row("ce", [0.09, 0.08, 0.07], iterations=1000, select="val_fg_dice"),
    ]
    series = length_series(rows, "ece")
    labels = [s["label"] for s in series]
    assert labels[0] == "CE" and "CE + TS" in labels
    assert series_label(rows[-1]) == "CE (kept at best val DSC)" in labels
    mbls = next(s for s in series if s["label"] == "MbLS m=5")
    assert [p["iterations"] for p in mbls["points"]] == [500, 1000]
    d500, d1000 = (p["vs_ref"] for p in mbls["points"])
    assert d500["diffs"] == pytest.approx([0.05, -0.05, -0.05]) and d500["n_better"] == 2
    assert d1000["diffs"] == pytest.approx([-0.10, 0.05, -0.20]) and d1000["n_better"] == 2
    ts = next(s for s in series if s["label"] == "MbLS m=5 + TS")
    assert ts["points"][0]["vs_ref"]["diffs"] == pytest.approx([-0.01, 0.01, -0.02])
    best = next(s for s in series if s["select_metric"] == "val_fg_dice")
    assert best["points"][0]["vs_ref"]["diffs"] == pytest.approx([-0.11, -0.22, -0.33])
    ce = next(s for s in series if s["label"] == "CE")
    assert all(p["vs_ref"] is None for p in ce["points"])
    md = length_markdown(series, "ece")
    assert md.splitlines()[0] == "| config | 500 it | 1000 it |"
    assert "Δ -0.083, lower on 2/3" in md  # MbLS at 1000: mean of the paired differences


def test_length_curves_draw_every_series_with_its_spread_named():
    from mls_tutorial.plots.length import length_curves

    rows = [
        row("ce", [0.10, 0.20, 0.30], iterations=500),
        row("ce", [0.20, 0.30, 0.40], iterations=1000),
        row("mbls", [0.15, 0.15, 0.25], iterations=500, margin=5.0),
        row("mbls", [0.10, 0.35, 0.20], iterations=1000, margin=5.0),
    ]
    fig = length_curves({k: length_series(rows, k) for k in ("ece", "dice")}, n_seeds_text="3")
    ax_ece, ax_dice = fig.axes
    assert "mean ± sd over 3" in ax_ece.get_ylabel() and ax_ece.get_xscale() == "log"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CE", "MbLS m=5"]
    assert ax_ece.get_legend() is None  # the legend is the figure's, off the data
    with pytest.raises(ValueError, match="empty"):
        length_curves({})


def test_sentences_carry_the_seed_counts_and_claim_only_what_every_seed_shows():
    from mls_tutorial.after_ts import after_ts_sentences
    from mls_tutorial.length_curve import length_sentences

    rows = [
        row("ce", CE),
        row("ce", CE_TS, ts=True),
        row("mbls", MBLS, margin=5.0),
        row("mbls", MBLS_TS, ts=True, margin=5.0),
        row("ls", [0.2, 0.2, 0.2], alpha=0.1),
        row("ls", [0.06, 0.06, 0.06], ts=True, alpha=0.1),
    ]
    mbls, ls = after_ts_sentences(after_ts_rows(rows))
    assert mbls.startswith("MbLS m=5: ΔECE vs CE -0.017 before TS (lower on 2 of 3 seeds)")
    assert "+0.010 (lower on 1 of 3): no consistent difference" in mbls
    assert "(lower on 0 of 3): worse than CE + TS on every seed; mean fitted T 1.50" in ls
    series = length_series([row("ce", CE), row("mbls", MBLS, margin=5.0)], "ece")
    assert length_sentences(series) == ["MbLS m=5: 1000 it -0.017 (lower on 2/3)"]
