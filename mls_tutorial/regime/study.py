"""``regime_study(runs, ...)``: records, cells and findings in the dict written as
``regime.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mls_tutorial.regime.cells import regime_cells
from mls_tutorial.regime.findings import regime_findings
from mls_tutorial.regime.records import run_record
from mls_tutorial.runs import Run


def regime_study(
    runs: Sequence[Run],
    *,
    choose_seeds: Sequence[int],
    report_seeds: Sequence[int],
    defaults: Mapping[str, Mapping[str, Any]],
    margin: float = 5.0,
    dice_tolerance: float = 0.01,
    protocol: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(study, records)``: the dict written as ``regime.json`` and one record per run."""
    runs = list(runs)
    records = [run_record(r, margin) for r in runs]
    cells = regime_cells(
        runs,
        records,
        choose_seeds=choose_seeds,
        report_seeds=report_seeds,
        defaults=defaults,
        dice_tolerance=dice_tolerance,
    )
    histograms = [
        {
            "preset": r.config["preset"],
            "iterations": r.config["iterations"],
            "seed": r.config["seed"],
            "method": r.label,
            "histogram": r.metrics["histogram"],
        }
        for r in runs
        if r.config["loss"] == "ce" and not r.config["temperature_scaling"]
    ]
    study = {
        "protocol": {
            **dict(protocol or {}),
            "choose_seeds": sorted(choose_seeds),
            "report_seeds": sorted(report_seeds),
            "defaults": {k: dict(v) for k, v in defaults.items()},
            "margin": float(margin),
            "dice_tolerance": dice_tolerance,
            "n_runs": len(runs),
        },
        "cells": cells,
        "findings": {
            "chosen": regime_findings(cells, "chosen"),
            "default": regime_findings(cells, "default"),
        },
        "histograms": histograms,
    }
    return study, records
