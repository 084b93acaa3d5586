"""The finding in one paragraph, every number read from ``regime.json`` and every trend with the
number of seeds that show it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mls_tutorial.regime.cells import cell_row
from mls_tutorial.regime.ranking import cell_ranking, ranking_holes, seeds_lower
from mls_tutorial.regime.records import LABELS


def finding_paragraph(study: Mapping[str, Any], family: str = "mbls") -> str:
    """The finding in one paragraph, every number read from ``study`` (``regime.json``), every
    trend with the number of seeds that show it.

    (1) Training length, per preset with two lengths: CE's ECE, ``family``'s paired ΔECE vs CE
    at the default knob (the same config at both lengths) and at the knob re-chosen in each
    cell, and on how many seeds the advantage grew ("grows" / "shrinks" only when every seed
    agrees). (2) Capacity, per length with several presets, at the default knob: the relative
    change in the means, CE's spread over the seeds (which the relative number divides by), and
    on how many seeds the per-seed relative change grows from preset to preset. (3) Rankings of
    the training losses over complete methods only (``cell_ranking``; holes named), at the
    re-chosen and at the default knobs, with the leader's margin seed by seed and CE + TS.
    """
    sentences = [
        *_length_sentences(study, family),
        *_capacity_sentences(study, family),
        *_ranking_sentences(study, family),
    ]
    if not sentences:
        return f"The study holds no {LABELS[family]} run to compare with CE."
    return ". ".join(x[0].upper() + x[1:] for x in sentences) + "."


def _verdict(trend: Mapping[str, Any]) -> str:
    """ "it grows" / "it shrinks" only when every seed agrees."""
    n = len(trend["seeds"])
    if trend["n_grew"] == n:
        return "it grows"
    if trend.get("n_shrank", n - trend["n_grew"]) == n:
        return "it shrinks"
    return "no consistent change"


def _length_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, out = LABELS[family], []
    chosen, default = study["findings"]["chosen"], study["findings"]["default"]
    for preset, entry in default.items():
        trend = entry.get("trend", {}).get(family)
        if trend is None or not trend["seeds"]:
            continue
        short, long, n = trend["short"], trend["long"], len(trend["seeds"])
        a, b = (entry["advantage"][family][str(x)] for x in (short, long))
        ce_a, ce_b = entry["ce"][str(short)], entry["ce"][str(long)]
        text = (
            f"with the {preset} U-Net, from {short} to {long} iterations CE's foreground ECE goes "
            f"{ce_a['ece']:.3f} -> {ce_b['ece']:.3f} (higher on {trend['ce_n_up']} of {n} "
            f"seeds) and {label}'s paired ECE difference to CE at the default knob "
            f"({a['method']}) goes {a['delta_ece']:+.3f} ({_pct(a['relative'])}, lower than CE "
            f"on {a['n_better']}/{a['n']} seeds) -> {b['delta_ece']:+.3f} "
            f"({_pct(b['relative'])}, {b['n_better']}/{b['n']}); its advantage grew on "
            f"{trend['n_grew']} of {n} seeds: {_verdict(trend)}"
        )
        c_trend = chosen.get(preset, {}).get("trend", {}).get(family)
        if c_trend and c_trend["seeds"]:
            ca, cb = (chosen[preset]["advantage"][family][str(x)] for x in (short, long))
            text += (
                f"; with the knob re-chosen in each cell ({ca['method']} -> {cb['method']}) "
                f"{_pct(ca['relative'])} -> {_pct(cb['relative'])}, grew on "
                f"{c_trend['n_grew']} of {len(c_trend['seeds'])} seeds: {_verdict(c_trend)}"
            )
        out.append(text)
    return out


def _capacity_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, default, out = LABELS[family], study["findings"]["default"], []
    by_length: dict[int, list[str]] = {}
    for preset, entry in default.items():
        for n in entry["lengths"]:
            if entry["advantage"].get(family, {}).get(str(n), {}).get("delta_ece") is not None:
                by_length.setdefault(n, []).append(preset)
    for n, presets in sorted(by_length.items()):
        if len(presets) < 2:
            continue
        adv = [default[p]["advantage"][family][str(n)] for p in presets]
        items = []
        for p, a in zip(presets, adv, strict=True):
            ce = [v for v in a["ce_by_seed"].values() if v is not None]
            items.append(
                f"{p} {_pct(a['relative'])} (lower on {a['n_better']}/{a['n']}; CE's ECE "
                f"{min(ce):.3f}-{max(ce):.3f} over the seeds)"
            )
        rels = [a["relative"] for a in adv]
        means_grow = all(x is not None for x in rels) and all(
            y < x for x, y in zip(rels, rels[1:], strict=False)
        )
        seeds = sorted(set.intersection(*(set(a["by_seed"]) for a in adv)), key=int)
        grow = 0
        for s in seeds:
            r = [a["by_seed"][s] / a["ce_by_seed"][s] for a in adv]
            grow += all(y < x for x, y in zip(r, r[1:], strict=False))
        out.append(
            f"at {n} iterations, with the default knob ({adv[0]['method']}), {label}'s relative "
            f"ECE change against CE is {', '.join(items)}: "
            + (
                "in the means, the larger the preset, the larger the relative reduction"
                if means_grow
                else "no monotone trend in the means"
            )
            + f"; seed by seed the relative reduction grows from preset to preset on {grow} of "
            f"{len(seeds)} seeds"
        )
    return out


def _ranking_sentences(study: Mapping[str, Any], family: str) -> list[str]:
    label, parts, ts_below = LABELS[family], [], {"chosen": 0, "default": 0}
    cells = list(study["cells"])
    for which in ("chosen", "default"):
        texts = []
        for cell in cells:
            ranks = cell_ranking(cell, which)
            if not ranks:
                continue
            names = [f for _, f, _ in ranks]
            text = f"{cell['preset']} {cell['iterations']}: " + " < ".join(
                f"{m} {e:.3f}" for e, _, m in ranks
            )
            if len(ranks) > 1:
                k, n = seeds_lower(cell, ranks[0][1], ranks[1][1], which)
                text += f" (first below second on {k} of {n} seeds)"
            if family in names:
                text += f", {label} {names.index(family) + 1} of {len(ranks)}"
            holes = [LABELS[f] for f in ranking_holes(cell, which)]
            if holes:
                text += f"; not ranked (no report runs at this knob): {', '.join(holes)}"
            texts.append(text)
            ts = cell_row(cell, "ce_ts", "default")
            if ts is not None and ts.get("ece") is not None and ts["ece"] <= ranks[0][0]:
                ts_below[which] += 1
        if texts:
            knob = "the knob re-chosen in each cell" if which == "chosen" else "the default knobs"
            parts.append(
                f"ranked by test ECE at {knob}, over the methods that ran on the report seeds: "
                + "; ".join(texts)
            )
    if parts:
        parts.append(
            f"CE + TS is at or below the first training loss in {ts_below['chosen']} of "
            f"{len(cells)} cells at the re-chosen knobs and in {ts_below['default']} of "
            f"{len(cells)} at the default knobs"
        )
    return parts


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f}%"
