"""What ``score_folder`` writes for a region-based model (``regions``): temperatures fitted per
region on the validation cases, one ``cases.csv`` row per case and region, one summary paragraph
per region, and the figures' inputs (a reliability panel per region; the regions' |logit|
histograms overlaid)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mls_tutorial.score.layouts import DatasetInfo, ScoreInputError
from mls_tutorial.score.regions import fit_region_temperatures, regions_of, score_region_cases
from mls_tutorial.score.summary import summary_text

_ROW_KEYS = ("dice", "hd95", "ece", "cece", "gap", "nll", "brier")


def score_regions(val, reported, info: DatasetInfo, *, class_names, background, **kwargs):
    """``(metrics, fit)``: per-region temperatures fitted on ``val`` (if any), then every
    reported case scored per region (``regions.score_region_cases``)."""
    if class_names:
        raise ScoreInputError(
            f"--classes does not apply to a region-based model: its region names come from "
            f"{info.path}"
        )
    if background != 0:
        raise ScoreInputError("--background does not apply to a region-based model (label 0)")
    regions = regions_of(info)
    fit = None
    if val:
        progress = kwargs.get("progress", True)
        fit = fit_region_temperatures(val, regions, ignore=info.ignore, progress=progress)
    temps = None if fit is None else {n: f["temperature"] for n, f in fit.items()}
    metrics = score_region_cases(
        reported, regions, temperatures=temps, ignore=info.ignore, total=len(reported), **kwargs
    )
    metrics["data"]["regions_class_order"] = (
        None if info.regions_class_order is None else list(info.regions_class_order)
    )
    return metrics, fit


def region_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list]]:
    """``cases.csv``: a header and one row per (case, region), with ``*_ts`` after scaling."""
    per_region = metrics["regions"]
    scaled = "temperature_scaled" in metrics
    head = ["case", "region", "n_fg_voxels", *_ROW_KEYS]
    head += ["temperature", "ece_ts", "gap_ts", "nll_ts"] if scaled else []
    rows = []
    for name, m in per_region.items():
        for i, row in enumerate(m["per_volume"]):
            cells = [row["name"], name, row["n_voxels"], *(row[k] for k in _ROW_KEYS)]
            if scaled:
                ts = m["temperature_scaled"]
                cells += [
                    ts["temperature"],
                    *(ts["per_volume"][i][k] for k in ("ece", "gap", "nll")),
                ]
            rows.append(cells)
    return head, rows


def region_summary(metrics: dict[str, Any], *, layout: str, fit: dict | None) -> str:
    """A paragraph on the means over regions, then ``summary_text`` of each region."""
    names = list(metrics["regions"])
    parts = [
        f"Region-based model: {len(names)} sigmoid regions ({', '.join(names)}), each scored as "
        "its own two-class problem (the region against the rest; p > 0.5 predicts it). Means "
        f"over regions: Dice {metrics['dice']:.3f}, HD95 {metrics['hd95']:.2f} mm, ECE inside "
        f"the true region {metrics['ece']:.3f}, ECE over all voxels {metrics['ece_all']:.3f}, "
        f"NLL {metrics['nll']:.3f}."
    ]
    for name, m in metrics["regions"].items():
        val = None if fit is None else fit[name]
        parts.append(f"## {name}\n\n" + summary_text(m, layout=layout, val=val).strip())
    return "\n\n".join(parts) + "\n"


def region_figures_inputs(metrics: dict[str, Any]) -> tuple[dict, dict, list[str]]:
    """``(meters, histograms, class names)`` for ``report.calibration_figures``: a reliability
    panel per region (and per region after scaling), the class-wise panels of the first region,
    the |logit| histograms of the regions as saved."""
    meters, hists = {}, {}
    for name, m in metrics["regions"].items():
        meters[name] = m["meter"]
        hists[name] = m["histogram"]
        ts = m.get("temperature_scaled")
        if ts is not None:
            meters[f"{name}, T = {ts['temperature']:.2f}"] = ts["meter"]
    first = next(iter(metrics["regions"].values()))
    return meters, hists, list(first["data"]["class_names"])


def region_temperatures(metrics: dict[str, Any]) -> Sequence[float]:
    """The fitted temperature of each channel, in channel order (``--write-calibrated``)."""
    temps = metrics["temperature_scaled"]["temperature"]
    return [temps[name] for name in metrics["regions"]]
