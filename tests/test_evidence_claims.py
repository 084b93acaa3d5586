"""The prose of docs/results.md and the README says what the evidence JSON says.

Each claim is recomputed here from ``docs/evidence/regime.json`` (by the library, from the
cells) and the text must contain it: a number, a seed count or an ordering that the JSON does
not give fails. Whitespace is normalised (the prose wraps lines).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mls_tutorial.regime import (
    cell_ranking,
    cell_row,
    finding_paragraph,
    regime_findings,
    seeds_lower,
    trend_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.fixture(scope="module")
def study() -> dict:
    study = json.loads((EVIDENCE / "regime.json").read_text())
    # recomputed by the current library from the cells, not read from the stored findings
    study["findings"] = {w: regime_findings(study["cells"], w) for w in ("chosen", "default")}
    return study


@pytest.fixture(scope="module")
def section9() -> str:
    text = (ROOT / "docs" / "results.md").read_text()
    start = text.index("## 9. When does the margin help?")
    return text[start : text.index("\n## ", start + 5)]


def _cells(study):
    return {(c["preset"], c["iterations"]): c for c in study["cells"]}


def test_the_trend_table_and_the_finding_are_the_ones_the_json_gives(study, section9):
    block = section9.split("<!-- regime-trend-default")[1].split("<!-- /regime-trend-default")[0]
    table = "\n".join(line for line in block.splitlines() if line.startswith("|"))
    assert table.strip() == trend_markdown(study["findings"]["default"]).strip()
    regime_md = (EVIDENCE / "regime.md").read_text()
    assert finding_paragraph(study) in regime_md  # regime.md is up to date with the library


def test_length_and_capacity_claims_carry_their_seed_counts(study, section9):
    text = _flat(section9)
    default = study["findings"]["default"]
    tiny = default["tiny"]["trend"]["mbls"]
    adv = default["tiny"]["advantage"]["mbls"]
    pct = {n: f"{100 * adv[str(n)]['relative']:+.0f}%".replace("+", "") for n in (1000, 4000)}
    assert f"goes {pct[1000]} -> {pct[4000]} from 1000 to 4000 iterations" in text
    assert f"grew on {tiny['n_grew']} of {len(tiny['seeds'])} seeds" in text
    chosen = study["findings"]["chosen"]["tiny"]["trend"]["mbls"]
    assert chosen["n_grew"] == len(chosen["seeds"]) == 3  # "also on 3 of 3 seeds"
    for fam in ("ls", "ecp", "cals"):  # "each on 3 of 3 seeds"
        t = default["tiny"]["trend"][fam]
        assert t["n_grew"] == len(t["seeds"]) == 3
    # capacity: the per-seed count, seed 4's three numbers, CE's range at paper
    presets = ("tiny", "small", "paper")
    a = [default[p]["advantage"]["mbls"]["1000"] for p in presets]
    rel = {s: [x["by_seed"][s] / x["ce_by_seed"][s] for x in a] for s in a[0]["by_seed"]}
    grows = sum(all(y < x for x, y in zip(r, r[1:], strict=False)) for r in rel.values())
    assert f"grows from preset to preset on only {grows} of {len(rel)} seeds" in text
    seed4 = ", ".join(f"{100 * r:+.0f}%".replace("+", "") for r in rel["4"])
    assert f"(seed 4: {seed4})" in text
    ce = list(a[2]["ce_by_seed"].values())
    assert f"ranges {min(ce):.3f}-{max(ce):.3f}" in text
    means = " / ".join(f"{100 * x['relative']:+.0f}%".replace("+", "") for x in a)
    assert f"mean relative change is {means}" in text
    assert all(x["n_better"] == x["n"] == 3 for x in a)  # "lower than CE on 3 of 3 seeds"


def test_rankings_and_temperature_scaling_claims(study, section9):
    text = _flat(section9)
    cells = _cells(study)
    leaders = {k: cell_ranking(c, "default")[0] for k, c in cells.items()}
    assert {k: f for k, (_, f, _) in leaders.items()} == {
        ("tiny", 1000): "ecp",
        ("tiny", 4000): "ecp",
        ("small", 1000): "ecp",
        ("paper", 1000): "cals",
    }
    for key, phrase in (
        (("tiny", 1000), "`tiny` 1000 ({:.3f})"),
        (("tiny", 4000), "`tiny` 4000 ({:.3f})"),
        (("small", 1000), "`small` ({:.3f}"),
        (("paper", 1000), "`paper` ({:.3f})"),
    ):
        assert phrase.format(leaders[key][0]) in text
    assert all(
        [f for _, f, _ in cell_ranking(c, "default")][1] == "mbls" for c in cells.values()
    )  # "MbLS second in all four"
    k, n = seeds_lower(cells[("small", 1000)], "ecp", "mbls", "default")
    assert f"on only {k} of {n} seeds" in text
    # the holes named at tiny 4000 and paper: only these were ranked at the re-chosen knobs
    assert [f for _, f, _ in cell_ranking(cells[("tiny", 4000)], "chosen")] == ["mbls", "ce"]
    assert [f for _, f, _ in cell_ranking(cells[("paper", 1000)], "chosen")] == ["cals", "ce"]
    ts = {k: cell_row(c, "ce_ts", "default")["ece"] for k, c in cells.items()}
    assert f"({min(ts.values()):.3f}-{max(ts.values()):.3f})" in text
    below = {
        w: sum(ts[k] <= cell_ranking(c, w)[0][0] for k, c in cells.items())
        for w in ("chosen", "default")
    }
    assert below == {"chosen": 3, "default": 4}
    assert "in every cell at the default knobs and in 3 of 4 at the re-chosen ones" in text


def test_the_readme_says_what_section_9_says(study):
    text = _flat((ROOT / "README.md").read_text())
    default = study["findings"]["default"]
    tiny = default["tiny"]
    ce = tiny["ce"]
    assert f"({ce['1000']['ece']:.3f} -> {ce['4000']['ece']:.3f})" in text
    adv, trend = tiny["advantage"]["mbls"], tiny["trend"]["mbls"]
    a, b = (round(-100 * adv[n]["relative"]) for n in ("1000", "4000"))
    assert f"grows from {a}% to {b}% (on {trend['n_grew']} of {len(trend['seeds'])} seeds" in text
    paper = round(-100 * default["paper"]["advantage"]["mbls"]["1000"]["relative"])
    assert f"the mean reduction reaches {paper}%" in text
    cells = _cells(study)
    leaders = {cell_ranking(c, "default")[0][1] for c in cells.values()}
    assert leaders == {"ecp", "cals"}  # "ECP or CALS is the best training loss in every cell"
    assert all(cell_ranking(c, "default")[1][1] == "mbls" for c in cells.values())
    assert all(
        cell_row(c, "ce_ts", "default")["ece"] <= cell_ranking(c, "default")[0][0]
        for c in cells.values()
    )


def test_section_10_tables_and_sentences_are_the_ones_length_json_gives():
    from mls_tutorial.after_ts import after_ts_markdown, after_ts_sentences
    from mls_tutorial.length_curve import length_markdown, length_sentences

    study = json.loads((EVIDENCE / "length.json").read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    series = study["length"]["ece"]
    for marker, table, sentences in (
        ("after-ts", after_ts_markdown(study["after_ts"]), after_ts_sentences(study["after_ts"])),
        ("length-ece", length_markdown(series, "ece"), length_sentences(series)),
    ):
        block = text.split(f"<!-- {marker}:")[1].split(f"<!-- /{marker}")[0]
        got = "\n".join(line for line in block.splitlines() if line.startswith("|"))
        assert got.strip() == table.strip(), marker
        bullets = [line[2:].rstrip(".") for line in block.splitlines() if line.startswith("- ")]
        assert bullets == sentences, marker
    assert (EVIDENCE / "length.md").read_text().count(after_ts_markdown(study["after_ts"])) == 1


def test_section_10_prose_on_temperature_scaling():
    study = json.loads((EVIDENCE / "length.json").read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    text = _flat(text[text.index("## 10.") : text.index("## Where these data disagree")])
    e = {x["method"].split()[0]: x for x in study["after_ts"]}
    assert set(e) == {"CE", "LS", "ECP", "MbLS", "CALS"}
    for name, phrase in (("MbLS", "MbLS {:+.3f} on {} of {}"), ("ECP", "ECP {:+.3f} on {} of {}")):
        d = e[name]["vs_ref"]
        assert phrase.format(d["mean"], d["n_better"], d["n"]).replace("+", "") in text
    for name in ("LS", "ECP", "MbLS", "CALS"):  # "each is above CE + TS on 4 of 5 seeds"
        d = e[name]["vs_ref_ts"]
        assert sum(x > 0 for x in d["diffs"]) == 4 and d["n"] == 5
    ts = [e[n]["ts"]["ece"] for n in ("LS", "ECP", "MbLS", "CALS")]
    assert f"{min(ts):.3f}-{max(ts):.3f} against {e['CE']['ts']['ece']:.3f}" in text
    t = {n: f"{e[n]['ts']['temperature']:.2f}" for n in e}
    assert (
        f"mean {t['MbLS']} for MbLS, {t['CALS']} for CALS, {t['LS']} for LS, {t['ECP']} for ECP,"
        f" against {t['CE']}" in text
    )
    gaps = sorted(round(e[n]["ts"]["gap"], 2) for n in ("LS", "ECP", "MbLS", "CALS"))
    assert f"{gaps[0]:+.2f} to {gaps[-1]:+.2f} after TS" in text
    assert f"CE + TS ends at {e['CE']['ts']['gap']:.3f}" in text
    val = {n: e[n]["ts"]["val_gap"] for n in e}
    assert f"mean gap {val['CE']:+.2f} for CE + TS" in text
    others = sorted(round(val[n], 2) for n in ("LS", "ECP", "MbLS", "CALS"))
    assert f"{others[0]:+.2f} to {others[-1]:+.2f} for the others" in text


def test_the_readme_says_what_section_10_says():
    study = json.loads((EVIDENCE / "length.json").read_text())
    text = _flat((ROOT / "README.md").read_text())
    losses = ("LS", "ECP", "MbLS", "CALS")
    e = {x["method"].split()[0]: x for x in study["after_ts"]}
    ts = [e[n]["ts"]["ece"] for n in losses]
    assert (
        f"(foreground ECE {min(ts):.3f}-{max(ts):.3f} against {e['CE']['ts']['ece']:.3f})" in text
    )
    assert all(sum(x > 0 for x in e[n]["vs_ref_ts"]["diffs"]) == 4 for n in losses)
    assert "LS, ECP, MbLS and CALS all end above CE + TS on 4 of 5 seeds" in text
    assert all(round(e[n]["ts"]["gap"], 2) in (0.04, 0.05) for n in losses)  # "about 0.05"
    curve = _length_points(study, "ece")
    gap = _length_points(study, "gap")
    assert f"(gap {gap['CE'][200]['mean']:+.3f}) to over-confident" in text
    assert f"(+{gap['CE'][4000]['mean']:.3f})" in text
    for name in ("MbLS m=5", "ECP b=0.3"):
        d = curve[name][4000]["vs_ref"]["mean"]
        assert f"{name.split()[0]} {d:+.3f}" in text
    _assert_penalties_lower_from(curve, 2000)
    _assert_ts_above_from(curve, 1000)


def _length_points(study: dict, metric: str) -> dict:
    """{series label: {iterations: point}} of one metric of the length curve."""
    return {s["label"]: {p["iterations"]: p for p in s["points"]} for s in study["length"][metric]}


def _assert_penalties_lower_from(curve: dict, start: int) -> None:
    """ "lower on 3 of 3 seeds from `start` iterations on, by more the longer it trains"."""
    for name in ("LS a=0.03", "ECP b=0.3", "MbLS m=5"):
        diffs = [p["vs_ref"] for n, p in sorted(curve[name].items()) if n >= start]
        assert all(d["n_better"] == d["n"] == 3 for d in diffs), name
        assert all(b["mean"] < a["mean"] for a, b in zip(diffs, diffs[1:], strict=False)), name


def _assert_ts_above_from(curve: dict, start: int) -> None:
    """ "each loss + TS above CE + TS on 3 of 3 seeds from `start` on, by more the longer"."""
    for name in ("LS a=0.03 + TS", "ECP b=0.3 + TS", "MbLS m=5 + TS"):
        diffs = [p["vs_ref"] for n, p in sorted(curve[name].items()) if n >= start]
        assert all(all(x > 0 for x in d["diffs"]) and d["n"] == 3 for d in diffs), name
        assert all(b["mean"] > a["mean"] for a, b in zip(diffs, diffs[1:], strict=False)), name


def test_section_10_length_prose_is_what_length_json_gives():
    study = json.loads((EVIDENCE / "length.json").read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    text = _flat(text[text.index("**What the length curve shows**") : text.index("## Where")])
    curve, gap, dice = (_length_points(study, m) for m in ("ece", "gap", "dice"))
    lengths = sorted(curve["CE"])
    assert lengths == [200, 500, 1000, 2000, 4000] and not study["missing"]
    assert all(p["seeds"] == [4, 5, 6] for s in curve.values() for p in s.values())
    ce_gap = [f"{gap['CE'][n]['mean']:+.3f}" for n in lengths]
    assert all(g in text for g in ce_gap), ce_gap
    assert all(x < 0 for x in gap["CE"][200]["values"])  # "under-confident on 3 of 3 seeds"
    best = min(lengths, key=lambda n: curve["CE"][n]["mean"])
    assert f"ECE is lowest at {best} ({curve['CE'][best]['mean']:.3f})" in text
    kept = curve["CE (kept at best val DSC)"]
    for n in (2000, 4000):
        d = kept[n]["vs_ref"]
        assert f"{-d['mean']:.3f}" in text and f"{d['n_better']} of 3" in text
    _assert_penalties_lower_from(curve, 2000)
    for name in ("LS a=0.03", "ECP b=0.3", "MbLS m=5"):
        short = name.split()[0]
        d = [f"{curve[name][n]['vs_ref']['mean']:+.3f}" for n in (2000, 4000)]
        assert f"{short} {d[0]} then {d[1]}" in text
    for n in lengths[1:]:  # "ECP is the lowest loss at every length from 500 on"
        ranked = sorted(("LS a=0.03", "ECP b=0.3", "MbLS m=5"), key=lambda s: curve[s][n]["mean"])
        assert ranked == ["ECP b=0.3", "MbLS m=5", "LS a=0.03"], n  # "MbLS between LS and ECP"
    ts = [curve["CE + TS"][n]["mean"] for n in lengths]
    assert f"CE at {min(ts):.3f}-{max(ts):.3f} at every length" in text
    _assert_ts_above_from(curve, 1000)
    for n in (200, 500):  # "within 0.01 of CE + TS at 200 and 500 iterations"
        assert all(
            abs(curve[s][n]["vs_ref"]["mean"]) < 0.01
            for s in curve
            if s.endswith("TS") and s != "CE + TS"
        )
    mbls_dice = [dice["MbLS m=5"][n]["vs_ref"] for n in (1000, 2000, 4000)]
    assert [d["n_better"] for d in mbls_dice[:2]] == [0, 0]  # "below CE's on 3 of 3 seeds"
    assert all(f"{d['mean']:+.3f}" in text for d in mbls_dice)


def test_the_nnunet_page_quotes_its_table_and_its_seed_counts():
    """docs/nnunet.md carries table.md verbatim and states each paired claim as table.json has it."""
    nnunet = EVIDENCE / "nnunet"
    page = (ROOT / "docs" / "nnunet.md").read_text()
    assert (nnunet / "table.md").read_text().strip() in page
    text = _flat(page[page.index("**40 iterations") :].split("What it shows:")[1])  # prose only
    table = json.loads((nnunet / "table.json").read_text())
    pairs = {p["pair"].split(" - ")[0]: p for p in table["pairs"]}
    n = {len(p["seeds"]) for p in pairs.values()}
    assert n == {3} and f"**40 iterations, {n.pop()} seeds.**" in page

    def said(trainer: str, col: str, sign: int) -> str:
        d = np.asarray(pairs[trainer]["diffs"][col])
        k = int((np.sign(d) == sign).sum())
        mean, sd = d.mean(), d.std(ddof=1)
        return f"{mean:+.4f} ± {sd:.4f}", f"{k} of {len(d)}"

    for trainer, col, sign in (
        ("nnUNetTrainerMbLS", "Dice", -1),
        ("nnUNetTrainerCEMbLS", "gap", -1),
        ("nnUNetTrainerCEMbLS", "Dice", 1),
        ("nnUNetTrainerCEMbLS", "fg ECE", -1),
    ):
        value, count = said(trainer, col, sign)
        assert value in text and count in text, (trainer, col)
    for col, phrase in (
        ("fg ECE", "on {count} seeds, by {value}"),
        ("fg ECE, TS", "({value} after TS"),
    ):
        value, count = said("nnUNetTrainerMbLS", col, -1)
        assert count == "3 of 3" and phrase.format(count=count, value=value[1:]) in text, col


def test_section_10_distance_shares_are_the_histograms_of_length_json():
    from mls_tutorial.metrics import LogitDistanceHistogram

    study = json.loads((EVIDENCE / "length.json").read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    text = _flat(text[text.index("- **The logit distances**") : text.index("## Where")])
    share = {
        (h["iterations"], h["method"].split()[0]): LogitDistanceHistogram.from_dict(h["histogram"])
        for h in study["histograms"]
    }

    def pct(n, name, m=5.0):
        return f"{100 * float(share[n, name].fraction_above(m)):.0f}%"

    assert all(f"{name} {pct(200, name)}" in text for name in ("CE", "LS", "MbLS", "ECP"))
    assert f"CE's share is {pct(4000, 'CE')} ({pct(4000, 'CE', 6.0)} above 6)" in text
    assert f"LS's {pct(4000, 'LS')} ({pct(4000, 'LS', 6.0)})" in text
    assert f"MbLS's {pct(4000, 'MbLS')}" in text and f"only {pct(4000, 'MbLS', 6.0)}" in text
    assert f"ECP's {pct(4000, 'ECP')} ({pct(4000, 'ECP', 6.0)})" in text
    mbls = share[4000, "MbLS"].histogram()
    edges, counts = np.asarray(mbls["edges"]), np.asarray(mbls["counts"])
    near = counts[(edges[:-1] >= 5) & (edges[:-1] < 5.5)].sum() / mbls["n"]
    assert f"{100 * near:.0f} of its {pct(4000, 'MbLS')[:-1]} points" in text
