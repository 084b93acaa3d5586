"""The study's tables: ``regime.csv`` (one line per run), the Markdown of ``regime.md``, and
``write_study``."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mls_tutorial.markdown import markdown_table
from mls_tutorial.metrics.results import LOWER_IS_BETTER
from mls_tutorial.regime.cells import _cell_order
from mls_tutorial.regime.records import FAMILIES, LABELS

RECORD_COLUMNS = (
    "preset",
    "iterations",
    "family",
    "method",
    "knobs",
    "seed",
    "role",
    "dice",
    "dice_bayes",
    "hd95",
    "ece",
    "ece_true",
    "tce",
    "gap",
    "temperature",
    "val_dice",
    "val_ece",
    "val_gap",
    "val_nll_rise",
    "train_loss_fall",
    "val_nll_min_iteration",
    "test_mean_distance",
    "test_share_above_margin",
    "train_mean_distance",
    "train_share_above_margin",
    "seconds",
    "run",
)


def records_csv(
    records: Sequence[Mapping], choose_seeds: Sequence[int], report_seeds: Sequence[int]
) -> str:
    """CSV, one line per run; ``role`` says whether its seed chooses or reports."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_COLUMNS)
    for rec in sorted(
        records,
        key=lambda r: (
            _cell_order((r["preset"], r["iterations"])),
            r["family"],
            r["key"],
            r["seed"],
        ),
    ):
        role = (
            "choose"
            if rec["seed"] in choose_seeds
            else "report"
            if rec["seed"] in report_seeds
            else "-"
        )
        writer.writerow([role if c == "role" else rec.get(c) for c in RECORD_COLUMNS])
    return out.getvalue()


def _cell_text(mean, std, digits=3, sign=False) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


def _paired_text(d: Mapping | None, key: str) -> str:
    if not d or d.get("mean") is None:
        return "-"
    better = "lower" if key in LOWER_IS_BETTER else "higher"
    return f"{_cell_text(d['mean'], d['std'], sign=True)} ({better} on {d['n_better']}/{d['n']})"


def cell_markdown(cell: Mapping) -> str:
    """One cell's table: every reported row, its test numbers over the report seeds and the
    paired difference to CE."""
    head = [
        "family",
        "config",
        "as",
        "seeds",
        "DSC",
        "DSC vs argmax q",
        "ECE (fg)",
        "TCE (fg)",
        "conf - acc (fg)",
        "ΔECE vs CE",
        "Δgap vs CE",
        "ΔDSC vs CE",
        "val NLL rise",
        "mean d (test / train)",
        "share d > m (train)",
    ]
    body = []
    for row in cell["rows"]:
        v = row["vs_ce"]
        cells = [
            LABELS.get(row["family"], row["family"]),
            row["method"],
            ", ".join(row["which"]),
            str(len(row["seeds"])),
            _cell_text(row["dice"], row["dice_std"]),
            _cell_text(row["dice_bayes"], row["dice_bayes_std"]),
            _cell_text(row["ece"], row["ece_std"]),
            _cell_text(row["tce"], row["tce_std"]),
            _cell_text(row["gap"], row["gap_std"], sign=True),
            _paired_text(v.get("ece"), "ece"),
            "-" if "gap" not in v else _cell_text(v["gap"]["mean"], v["gap"]["std"], sign=True),
            _paired_text(v.get("dice"), "dice"),
            _cell_text(row["val_nll_rise"], None),
            f"{_cell_text(row['test_mean_distance'], None, 2)} / "
            f"{_cell_text(row['train_mean_distance'], None, 2)}",
            _cell_text(row["train_share_above_margin"], None),
        ]
        body.append(cells)
    return markdown_table(head, body)


def choice_markdown(cells: Sequence[Mapping]) -> str:
    """What the rule chose in each cell (validation numbers of the choosing seeds)."""
    fams = [f for f in FAMILIES if f not in ("ce", "ce_ts")]
    head = ["preset", "iterations", *(f"{LABELS[f]} (val ECE)" for f in fams)]
    body = []
    for cell in cells:
        cells_ = [cell["preset"], str(cell["iterations"])]
        for f in fams:
            c = cell["choice"].get(f)
            if c is None:
                cells_.append("-")
                continue
            val = next((x["val_ece"] for x in c["candidates"] if x["method"] == c["chosen"]), None)
            flag = "" if c["eligible"] else " (none within 1 pt)"
            cells_.append(f"{c['chosen']}{flag} ({_cell_text(val, None)})")
        body.append(cells_)
    return markdown_table(head, body)


def trend_markdown(findings: Mapping[str, Any]) -> str:
    """CE's regime and each family's paired ΔECE vs CE (relative, seeds better) per length."""
    head = ["preset", "iterations", "CE ECE", "CE gap", "CE val NLL rise", "CE mean d (train)"]
    fams = [f for f in FAMILIES[1:]]
    head += [f"{LABELS[f]} ΔECE" for f in fams]
    body = []
    for preset, entry in findings.items():
        for n in entry["lengths"]:
            ce = entry["ce"][str(n)]
            cells = [
                preset,
                str(n),
                _cell_text(ce["ece"], None),
                _cell_text(ce["gap"], None, sign=True),
                _cell_text(ce["val_nll_rise"], None),
                _cell_text(ce["train_mean_distance"], None, 2),
            ]
            for f in fams:
                a = entry["advantage"].get(f, {}).get(str(n))
                if a is None or a["delta_ece"] is None:
                    cells.append("-")
                    continue
                rel = "" if a["relative"] is None else f", {100 * a['relative']:+.0f}%"
                cells.append(f"{a['delta_ece']:+.3f}{rel} ({a['n_better']}/{a['n']})")
            body.append(cells)
    return markdown_table(head, body)


def regime_markdown(study: Mapping[str, Any]) -> str:
    """The tables of ``regime.md``: trend (chosen and default knobs), the choices, each cell."""
    parts = [
        "## The margin's advantage against the regime (knobs re-chosen in each cell)\n",
        "Paired ΔECE = method − CE on the same report seed (mean; relative to CE's mean ECE; "
        "seeds on which the method's ECE is lower / seeds).\n",
        trend_markdown(study["findings"]["chosen"]),
        "\n## The same with the knobs chosen in the default regime (docs/evidence/chosen.json)\n",
        trend_markdown(study["findings"]["default"]),
        "\n## What the rule chose in each cell (validation, choosing seeds)\n",
        choice_markdown(study["cells"]),
    ]
    for cell in study["cells"]:
        parts.append(f"\n## {cell['preset']}, {cell['iterations']} iterations\n")
        parts.append(cell_markdown(cell))
        if cell["missing"]:
            parts.append("\nMissing: " + "; ".join(cell["missing"]) + ".\n")
    return "\n".join(parts)


def write_study(
    study: Mapping[str, Any],
    records: Sequence[Mapping],
    out_dir: str | Path,
    name: str = "regime",
    header: str = "",
) -> dict[str, Path]:
    """``<name>.json``, ``<name>.csv`` (one line per run) and ``<name>.md`` (``header``, then
    the tables), atomically."""
    from mls_tutorial.files import atomic_write, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("json", "csv", "md")}
    write_json(study, paths["json"])
    text = records_csv(
        records, study["protocol"]["choose_seeds"], study["protocol"]["report_seeds"]
    )
    atomic_write(paths["csv"], lambda f: f.write(text.encode()))
    md = header + regime_markdown(study)
    atomic_write(paths["md"], lambda f: f.write(md.encode()))
    return paths
