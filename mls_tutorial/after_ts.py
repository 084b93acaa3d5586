"""Does a training loss add anything after temperature scaling? Paired per seed.

Temperature scaling (TS) divides the logits by one T fitted on the validation volumes, after
training. It can sit on top of any training loss (a ``temperature_scaling=True`` config fits T
on the weights of the same config trained without it), so the practitioner's comparison is not
"loss against CE" but "loss + TS against CE + TS", on the same seed:

    Δ_TS(loss) = ECE(loss + TS) - ECE(CE + TS)     per seed; mean, sample std, lower on k of n

next to the same difference before TS, and what TS itself does to the loss (``ECE(loss + TS) -
ECE(loss)``). TS leaves the argmax, hence Dice, unchanged: the Dice difference is the loss's.

``after_ts_rows(rows)`` pairs ``results.results_table`` rows; ``after_ts_markdown`` the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mls_tutorial.markdown import markdown_table
from mls_tutorial.results import paired_difference


def _twin_key(row: Mapping[str, Any]) -> tuple:
    """What identifies a config up to TS and seed."""
    return (
        row["loss"],
        tuple(sorted((k, repr(v)) for k, v in row["loss_kwargs"].items())),
        row.get("iterations"),
        row.get("select_metric"),
    )


def _paired(row, ref, key: str) -> dict[str, Any] | None:
    if row is None or ref is None:
        return None
    d = paired_difference(row, ref, key)
    return d if d["n"] else None


def after_ts_rows(rows: Sequence[Mapping[str, Any]], reference: str = "ce") -> list[dict]:
    """One entry per config that has its TS twin (same loss, knobs, length and checkpoint rule).

    Each entry: ``family``, ``method`` (without TS), ``base`` and ``ts`` (the two rows),
    ``vs_ref`` (base vs the reference loss without TS), ``vs_ref_ts`` (twin vs the reference's
    TS twin), ``ts_effect`` (twin vs base), each a ``paired_difference`` of ``ece`` (None when
    no seed is shared), and ``dice_vs_ref`` (base vs reference, Dice). The reference's own
    entry has no differences to itself. Raises when the reference has no TS twin.
    """
    base = {_twin_key(r): r for r in rows if not r["temperature_scaling"]}
    twins = {_twin_key(r): r for r in rows if r["temperature_scaling"]}
    refs = [k for k in base if k[0] == reference and k in twins]
    if not refs:
        raise ValueError(f"no {reference!r} run with its temperature-scaled twin among the rows")
    out = []
    for key, row in base.items():
        twin = twins.get(key)
        if twin is None:
            continue
        ref_key = next((k for k in refs if k[2:] == key[2:]), None)
        ref, ref_ts = (base[ref_key], twins[ref_key]) if ref_key else (None, None)
        own = ref_key == key
        out.append(
            {
                "family": row["family"],
                "method": row["method"],
                "iterations": row.get("iterations"),
                "base": row,
                "ts": twin,
                "vs_ref": None if own else _paired(row, ref, "ece"),
                "vs_ref_ts": None if own else _paired(twin, ref_ts, "ece"),
                "ts_effect": _paired(twin, row, "ece"),
                "dice_vs_ref": None if own else _paired(row, ref, "dice"),
            }
        )
    return out


def _mean_sd(row: Mapping, key: str, digits: int = 3, sign: bool = False) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + ("" if std is None else f" ± {std:.{digits}f}")


def _diff(d: Mapping | None, better: str = "lower") -> str:
    if not d:
        return "-"
    sd = "" if d["std"] is None else f" ± {d['std']:.3f}"
    return f"{d['mean']:+.3f}{sd} ({better} on {d['n_better']}/{d['n']})"


def after_ts_markdown(entries: Sequence[Mapping[str, Any]], reference: str = "CE") -> str:
    """The table: each loss before and after TS, and its paired differences to the reference."""
    head = [
        "loss",
        "seeds",
        "ECE (fg)",
        "ECE + TS",
        "T",
        "conf - acc + TS",
        f"ΔECE vs {reference}",
        f"ΔECE + TS vs {reference} + TS",
        "TS's own ΔECE",
        f"ΔDSC vs {reference}",
    ]
    body = []
    for e in entries:
        b, t = e["base"], e["ts"]
        seeds = sorted(set(b["seeds"]) & set(t["seeds"]))
        cells = [
            e["method"],
            ", ".join(map(str, seeds)),
            _mean_sd(b, "ece"),
            _mean_sd(t, "ece"),
            _mean_sd(t, "temperature", 2),
            _mean_sd(t, "gap", sign=True),
            _diff(e["vs_ref"]),
            _diff(e["vs_ref_ts"]),
            _diff(e["ts_effect"]),
            _diff(e["dice_vs_ref"], "higher"),
        ]
        body.append(cells)
    return markdown_table(head, body)


def _verdict(d: Mapping, better: str, worse: str) -> str:
    if d["n_better"] == d["n"]:
        return f"{better} on every seed"
    if d["n_better"] == 0:
        return f"{worse} on every seed"
    return "no consistent difference"


def after_ts_sentences(entries: Sequence[Mapping[str, Any]], reference: str = "CE") -> list[str]:
    """One sentence per loss, every number and seed count read from ``entries``: its ECE
    against the reference before TS, then with TS on both, and the temperature it got."""
    out = []
    for e in entries:
        d, before = e["vs_ref_ts"], e["vs_ref"]
        if d is None or before is None:
            continue
        t = e["ts"].get("temperature")
        out.append(
            f"{e['method']}: ΔECE vs {reference} {before['mean']:+.3f} before TS (lower on "
            f"{before['n_better']} of {before['n']} seeds); with TS on both, "
            f"{d['mean']:+.3f} (lower on {d['n_better']} of {d['n']}): "
            + _verdict(d, f"better than {reference} + TS", f"worse than {reference} + TS")
            + ("" if t is None else f"; mean fitted T {t:.2f}")
        )
    return out
