"""Per preset and length, CE's regime and each family's paired advantage over CE, and how it
changed seed by seed from the shortest to the longest length."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mls_tutorial.regime.cells import cell_row
from mls_tutorial.regime.records import FAMILIES
from mls_tutorial.results import mean_std


def regime_findings(cells: Sequence[Mapping], which: str = "chosen") -> dict[str, Any]:
    """Per preset and length, CE's regime and each family's advantage over CE.

    ``{preset: {"lengths": [...], "ce": {"<iterations>": {ece, gap, dice, val_nll_rise,
    test_mean_distance, train_mean_distance, train_share_above_margin}}, "advantage": {family:
    {"<iterations>": {delta_ece, delta_ece_std, relative (delta / CE's mean ECE on the same seeds),
    n_better, n, delta_dice, dice_n_better, method}}}}}``, for the ``which`` config of each
    family (``chosen``: re-chosen in the cell). Lengths are string keys, as in JSON.
    """
    out: dict[str, Any] = {}
    for cell in cells:
        p, n = cell["preset"], cell["iterations"]
        entry = out.setdefault(p, {"lengths": [], "ce": {}, "advantage": {}})
        ce = cell_row(cell, "ce", "reference")
        if ce is None:
            continue
        entry["lengths"].append(n)
        entry["ce"][str(n)] = {
            k: ce.get(k)
            for k in (
                "ece",
                "gap",
                "dice",
                "val_nll_rise",
                "train_loss_fall",
                "test_mean_distance",
                "train_mean_distance",
                "test_share_above_margin",
                "train_share_above_margin",
            )
        }
        entry["ce"][str(n)]["seeds"] = ce["seeds"]
        for fam in FAMILIES[1:]:
            row = cell_row(cell, fam, which) or (
                cell_row(cell, fam, "default") if fam == "ce_ts" else None
            )
            if row is None or "ece" not in row["vs_ce"]:
                continue
            d, dd = row["vs_ce"]["ece"], row["vs_ce"]["dice"]
            base = mean_std(
                [v for s, v in zip(ce["seeds"], ce["ece_values"], strict=True) if s in d["seeds"]]
            )[0]
            entry["advantage"].setdefault(fam, {})[str(n)] = {
                "method": row["method"],
                "delta_ece": d["mean"],
                "delta_ece_std": d["std"],
                "relative": None if d["mean"] is None or not base else d["mean"] / base,
                "n_better": d["n_better"],
                "n": d["n"],
                "delta_gap": row["vs_ce"]["gap"]["mean"],
                "delta_dice": dd["mean"],
                "dice_n_better": dd["n_better"],
                "by_seed": dict(zip(map(str, d["seeds"]), d["diffs"], strict=True)),
                "ce_by_seed": {
                    str(s): v for s, v in zip(ce["seeds"], ce["ece_values"], strict=True)
                },
            }
    for entry in out.values():
        entry["lengths"] = sorted(entry["lengths"])
        entry["trend"] = _trends(entry)
    return out


def _trends(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Shortest vs longest length, seed by seed: how each family's ΔECE vs CE changed
    (``change`` < 0: its advantage grew on that seed), and how CE's own ECE changed."""
    out: dict[str, Any] = {}
    for fam, per in entry["advantage"].items():
        lengths = [n for n in entry["lengths"] if str(n) in per]
        if len(lengths) < 2:
            continue
        a, b = per[str(lengths[0])], per[str(lengths[-1])]
        seeds = sorted(set(a["by_seed"]) & set(b["by_seed"]), key=int)
        change = [b["by_seed"][s] - a["by_seed"][s] for s in seeds]
        ce_change = [b["ce_by_seed"][s] - a["ce_by_seed"][s] for s in seeds]
        out[fam] = {
            "short": lengths[0],
            "long": lengths[-1],
            "seeds": [int(s) for s in seeds],
            "change": change,
            "mean_change": mean_std(change)[0],
            "n_grew": sum(c < 0 for c in change),
            "n_shrank": sum(c > 0 for c in change),
            "ce_change": ce_change,
            "ce_n_up": sum(c > 0 for c in ce_change),
        }
    return out


def paired_by_seed(cells: Sequence[Mapping], family: str, key: str = "ece") -> list[dict]:
    """The per-seed paired differences to CE behind every claim: one entry per cell and
    reported config of ``family`` (``preset``, ``iterations``, ``method``, ``which``,
    ``seeds``, ``diffs``, ``ce`` (CE's values on those seeds), ``mean``, ``n_better``)."""
    out = []
    for cell in cells:
        ce = cell_row(cell, "ce", "reference")
        for row in cell["rows"]:
            if row["family"] != family or key not in row["vs_ce"]:
                continue
            d = row["vs_ce"][key]
            ce_by_seed = dict(zip(ce["seeds"], ce[f"{key}_values"], strict=True))
            out.append(
                {
                    "preset": cell["preset"],
                    "iterations": cell["iterations"],
                    "method": row["method"],
                    "which": list(row["which"]),
                    "seeds": d["seeds"],
                    "diffs": d["diffs"],
                    "ce": [ce_by_seed[s] for s in d["seeds"]],
                    "mean": d["mean"],
                    "n_better": d["n_better"],
                }
            )
    return out
