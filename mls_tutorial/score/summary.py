"""The plain-language paragraph of ``summary.md``: over- or under-confident, by how much, on
which classes, whether a margin would bind, and what temperature scaling did (or could not do)."""

from __future__ import annotations

import math
from typing import Any

#: a foreground gap smaller than this (in absolute value) is called "close to calibrated"
CALIBRATED_GAP = 0.01
#: share of saturated voxels above which the summary says saturation limits temperature scaling
SATURATION_NOTE = 0.01


def _state(gap: float) -> str:
    if not math.isfinite(gap):
        return "not measurable (no foreground voxels)"
    if abs(gap) < CALIBRATED_GAP:
        return "close to calibrated"
    return "over-confident" if gap > 0 else "under-confident"


def temperature_to_move(clip_distance: float, num_classes: int, level: float = 0.999) -> float:
    """The smallest T at which a saturated voxel (every other distance = ``clip_distance``) gets
    a confidence below ``level``: ``1 / (1 + (K-1) exp(-D/T)) < level``."""
    return clip_distance / math.log((num_classes - 1) * level / (1 - level))


def summary_text(metrics: dict[str, Any], *, layout: str = "", val: dict | None = None) -> str:
    """One paragraph (Markdown) from ``score``'s results dict; numbers rounded for reading."""
    s = metrics["score"]
    names = metrics["data"]["class_names"]
    k, n = len(names), metrics["n_volumes"]
    gap, ece = metrics["gap"], metrics["ece"]
    where = f" ({layout} layout)" if layout else ""
    parts = [
        f"Scored {n} case{'s' if n != 1 else ''}{where}, {k} classes ({', '.join(names)}); "
        f"Dice {metrics['dice']:.3f}, HD95 {metrics['hd95']:.2f} mm (foreground classes, mean "
        "over cases)."
    ]
    skipped = metrics.get("source", {}).get("skipped_without_label") or []
    if skipped:
        shown = ", ".join(skipped[:20]) + (
            f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        )
        parts.append(
            f"Skipped {len(skipped)} case{'s' if len(skipped) != 1 else ''} without a label map "
            f"(--allow-missing): {shown}."
        )
    text = (
        f"On the ground-truth foreground the model is **{_state(gap)}**: mean confidence minus "
        f"accuracy is {gap:+.3f} (foreground ECE {ece:.3f}, per-case mean; ECE over all voxels "
        f"{metrics['ece_all']:.3f}, CECE {metrics['cece']:.3f})."
    )
    parts.append(text)
    gaps = {c: g for c, g in s["per_class_gap"].items() if g["gap"] is not None}
    fg = [(c, g) for c, g in gaps.items() if c != names[0]]
    if fg:
        worst = sorted(fg, key=lambda cg: -abs(cg[1]["gap"]))[:3]
        items = [
            f"{c} (confidence {g['confidence']:.3f} vs accuracy {g['accuracy']:.3f}, {g['gap']:+.3f})"
            for c, g in worst
        ]
        parts.append(
            "By predicted class (every voxel predicted as it), the largest gaps: "
            + "; ".join(items)
            + "."
        )
    shares = s["distance_share_above"]
    share_text = ", ".join(f"{v:.1%} above {m}" for m, v in shares.items())
    parts.append(
        f"Logit distances (log-probability differences to the top class): {share_text}. A margin m "
        "binds only on distances above it: where few distances exceed m, a margin of m would "
        "change little; where many do, it would pull them in."
    )
    ts = metrics.get("temperature_scaled")
    if ts is not None:
        t = ts["temperature"]
        how = "softens" if t > 1 else "sharpens"
        cases = f" on {len(val['cases'])} validation case(s), none of them reported" if val else ""
        parts.append(
            f"Temperature scaling fitted{cases}: T = {t:.3f} ({how} the probabilities). On the "
            f"reported cases the foreground gap goes {gap:+.3f} -> {ts['gap']:+.3f}, foreground "
            f"ECE {ece:.3f} -> {ts['ece']:.3f}, NLL {metrics['nll']:.3f} -> {ts['nll']:.3f}."
        )
    sat = s["saturated_share"]
    if sat >= SATURATION_NOTE:
        t_needed = temperature_to_move(s["clip_distance"], k)
        text = (
            f"Saturation: {sat:.1%} of the voxels were saved with a confidence of exactly 1 "
            f"({s['zero_share']:.1%} of all probabilities are exactly 0; their logarithm was "
            f"clipped at {s['log_clip']:.1f}, the log of the smallest normal number of "
            f"{'/'.join(s['dtypes'])}). Their true logit distances are lost, and temperature "
            f"scaling keeps them above confidence 0.999 for any T below {t_needed:.1f}"
        )
        if ts is not None and ts["temperature"] < t_needed:
            text += f" (T = {ts['temperature']:.2f} here): saturation limits what it can fix"
        parts.append(text + ".")
    elif s["zero_share"] > 0:
        parts.append(
            f"{s['zero_share']:.2%} of the saved probabilities are exactly 0 (log clipped at "
            f"{s['log_clip']:.1f}); {sat:.2%} of voxels are saturated at confidence 1."
        )
    return " ".join(parts) + "\n"
