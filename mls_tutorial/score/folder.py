"""``score_folder``: a folder of saved probability maps + a folder of labels -> an output folder.

``OUT`` gets ``metrics.json`` (the keys of a run's, plus ``score`` and, with validation cases,
``temperature_scaled`` and ``temperature_fit``), ``cases.csv`` (one row per reported case),
``reliability.png``, ``classwise_reliability.png``, ``logit_distances.png`` and ``summary.md``.
Everything is written into a hidden staging folder first and moved into place at the end
(``output``): only the files an earlier ``score`` wrote are replaced, the user's files are kept,
and a failed or interrupted run leaves ``OUT`` as it was.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mls_tutorial.score import calibrated, region_report
from mls_tutorial.score.calibrated import check_calibrated_dir
from mls_tutorial.score.case import score_device
from mls_tutorial.score.core import SCORE_MARGINS, score_cases
from mls_tutorial.score.layouts import (
    ScoreInputError,
    load_cases,
    match_cases,
    read_dataset_json,
    split_cases,
)
from mls_tutorial.score.output import MANIFEST, discard, previous_outputs, publish, stage_folder
from mls_tutorial.score.summary import summary_text
from mls_tutorial.score.temperature import fit_temperature_on_cases

#: every file score writes to OUT; the last, its manifest, lists the others with their SHA-256
OUTPUT_FILES = (
    "metrics.json",
    "cases.csv",
    "reliability.png",
    "classwise_reliability.png",
    "logit_distances.png",
    "summary.md",
    MANIFEST,
)


def _class_names(given, info):
    if given:
        return list(given)
    return list(info.class_names) if info.class_names else None


def csv_text(head: Sequence[str], rows: Sequence[Sequence]) -> str:
    """CSV with floats to 6 significant digits."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for cells in rows:
        writer.writerow([f"{c:.6g}" if isinstance(c, float) else c for c in cells])
    return buf.getvalue()


def cases_csv(metrics: dict[str, Any]) -> str:
    """One row per reported case: Dice, HD95, calibration (and after temperature scaling); for
    a region-based model one row per case and region (``region_report.region_rows``)."""
    if metrics.get("region_based"):
        return csv_text(*region_report.region_rows(metrics))
    ts = metrics.get("temperature_scaled")
    fg = list(metrics["per_class"])
    head = ["case", "n_fg_voxels", "dice", "hd95", "ece", "cece", "gap", "nll", "brier"]
    head += [f"dice_{c}" for c in fg] + [f"hd95_{c}" for c in fg]
    if ts is not None:
        head += ["ece_ts", "gap_ts", "nll_ts"]
    rows = []
    for i, row in enumerate(metrics["per_volume"]):
        cells = [row["name"], row["n_voxels"]]
        cells += [row[k] for k in ("dice", "hd95", "ece", "cece", "gap", "nll", "brier")]
        cells += [row["dice_per_class"][c] for c in fg] + [row["hd95_per_class"][c] for c in fg]
        if ts is not None:
            after = ts["per_volume"][i]
            cells += [after["ece"], after["gap"], after["nll"]]
        rows.append(cells)
    return csv_text(head, rows)


def _score_classes(val, reported, info, *, class_names, background, **kwargs):
    """``(metrics, fit)`` of a softmax model: one temperature fitted on ``val`` (if any)."""
    fit = None
    if val:
        fit = fit_temperature_on_cases(
            load_cases(val),
            background=background,
            n_cases=len(val),
            progress=kwargs.get("progress", True),
        )
    metrics = score_cases(
        reported,  # CaseFiles: each is read where it is scored
        class_names=_class_names(class_names, info),
        background=background,
        temperature=None if fit is None else fit["temperature"],
        total=len(reported),
        **kwargs,
    )
    return metrics, fit


def _figures_inputs(metrics, fit) -> tuple[dict, dict, list[str]]:
    """``(meters, histograms, class names)`` for ``report.calibration_figures``."""
    if metrics.get("region_based"):
        return region_report.region_figures_inputs(metrics)
    meters = {"as saved": metrics["meter"]}
    hists = {"as saved": metrics["histogram"]}
    if fit is not None:
        label = f"T = {fit['temperature']:.2f}"
        meters[label] = metrics["temperature_scaled"]["meter"]
        hists[label] = metrics["temperature_scaled"]["histogram"]
    return meters, hists, metrics["data"]["class_names"]


def score_folder(
    pred: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    val_cases: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
    background: int = 0,
    allow_missing: bool = False,
    progress: bool = True,
    hd95: bool = True,
    margins: Sequence[float] = SCORE_MARGINS,
    workers: int = 1,
    write_calibrated: str | Path | None = None,
    executor=None,
    device=None,
) -> dict[str, Any]:
    """Score every case of ``pred`` against ``labels`` and write ``OUTPUT_FILES`` to ``out``.

    ``val_cases``: ids of cases used ONLY to fit post-hoc temperature scaling (never reported);
    the other cases are reported before and after it. ``hd95=False``: no HD95 (NaN).
    ``workers``: cases scored at once in that many processes (memory: ``workers`` x one case;
    the same numbers as one). ``executor``: score the reported cases on it instead (a Dask
    cluster's, ``cluster.dask_executor``: PRED and LABELS must be folders its workers see; the
    temperature is fitted and the calibrated maps written here). ``write_calibrated``: a folder for the temperature-scaled
    probabilities of every reported case, in the input's layout (``calibrated``; needs
    ``val_cases``). ``device``: where the reported cases are scored (``case.score_device``: None
    the CPU, ``"auto"`` CUDA when present; every worker the same); the temperature fit and the
    calibrated maps stay on the CPU. Returns the metrics written.
    """
    from mls_tutorial import report
    from mls_tutorial.files import write_json

    device = score_device(device)  # refused before any work
    out = Path(out).resolve()  # `--out .` names the current folder
    previous = previous_outputs(out, OUTPUT_FILES)
    if write_calibrated is not None:
        if not val_cases:
            raise ScoreInputError(
                "--write-calibrated needs --val-cases: the temperature is fitted on them"
            )
        write_calibrated = check_calibrated_dir(write_calibrated, pred)
        if write_calibrated == out:
            raise ScoreInputError("--write-calibrated must be another folder than --out")
        previous_outputs(write_calibrated, ())  # refused now, before any work, if not ours
    info = read_dataset_json(pred)
    pred, labels = Path(pred).resolve(), Path(labels).resolve()  # the same on every worker
    cases, missing = match_cases(pred, labels, allow_missing=allow_missing)
    val, reported = split_cases(cases, list(val_cases))
    score = _score_classes if info.regions is None else region_report.score_regions
    metrics, fit = score(
        val,
        reported,
        info,
        class_names=class_names,
        background=background,
        hd95=hd95,
        progress=progress,
        margins=margins,
        workers=workers,
        executor=executor,
        device=device,
    )
    layout = cases[0].layout
    metrics["temperature_fit"] = fit
    metrics["data"]["description"] = f"{layout} probability maps in {pred}"
    metrics["source"] = {
        "pred": str(pred),
        "labels": str(labels),
        "layout": layout,
        "reported_cases": [c.name for c in reported],
        "val_cases": [c.name for c in val],
        "skipped_without_label": missing,
        "dataset_json": None if info.path is None else str(info.path),
        "calibrated_dir": None if write_calibrated is None else str(write_calibrated),
        "device": str(device),
    }
    if write_calibrated is not None:
        temperature = (  # one T, or one per sigmoid channel
            fit["temperature"]
            if info.regions is None
            else region_report.region_temperatures(metrics)
        )
        calibrated.write_calibrated(
            reported, temperature, write_calibrated, pred, progress=progress
        )

    created = not out.exists()
    tmp = stage_folder(out)
    try:
        meters, hists, names = _figures_inputs(metrics, fit)
        title = "inside the region" if info.regions is not None else "foreground"
        report.calibration_figures(
            meters, hists, tmp, class_names=names, margins=margins, title=title
        )
        if info.regions is None:
            text = summary_text(metrics, layout=layout, val=fit)
        else:
            text = region_report.region_summary(metrics, layout=layout, fit=fit)
        (tmp / "summary.md").write_text("# Calibration summary\n\n" + text)
        (tmp / "cases.csv").write_text(cases_csv(metrics))
        write_json(metrics, tmp / "metrics.json")
        publish(tmp, out, previous)
    except BaseException:
        discard(tmp, out, created)
        raise
    metrics["summary"] = text
    return metrics
