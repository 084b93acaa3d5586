"""One run of the regime study: its record (test and validation metrics, how far it went into
memorisation, its logit distances), and the study's families and labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mls_tutorial.registry import family_label
from mls_tutorial.runs import Run, run_key

DISTANCES_FILE = "distances.json"


#: the families of the study, in the order of the tables (CE first, CE + TS last)
FAMILIES = ("ce", "ls", "ecp", "mbls", "cals", "ce_ts")


#: their labels, from the loss registry (one place for a loss's name)
LABELS = {fam: family_label(fam) for fam in FAMILIES}


#: per-run numbers averaged over seeds in each cell (the paired ones first)
PAIRED = ("ece", "gap", "dice", "tce", "dice_bayes")


CELL_METRICS = (
    *PAIRED,
    "hd95",
    "val_dice",
    "val_ece",
    "val_nll_rise",
    "train_loss_fall",
    "test_mean_distance",
    "test_share_above_margin",
    "train_mean_distance",
    "train_share_above_margin",
    "seconds",
)


def history_divergence(history: Mapping[str, Any]) -> dict[str, float | None]:
    """How far training went past its best validation NLL (memorisation), from ``history``.

    With ``nll`` the foreground NLL of the validation volumes (``val_fg_nll``) and ``loss`` the
    training loss, each read as the mean over the ``w`` iterations up to a validation
    (``w`` = the gap between validations)::

        val_nll_rise    = nll(last) - min nll          (>= 0: how far validation got worse)
        train_loss_fall = loss(at min nll) - loss(last) (> 0: training kept improving)

    Both positive: the train and validation losses diverged. None without validations.
    """
    its, nll = list(history.get("val_iteration") or []), list(history.get("val_fg_nll") or [])
    out = dict.fromkeys(
        ("val_nll_min", "val_nll_min_iteration", "val_nll_last", "val_nll_rise"), None
    )
    out.update(train_loss_at_min=None, train_loss_last=None, train_loss_fall=None)
    pairs = [(i, v) for i, v in zip(its, nll, strict=False) if v is not None and math.isfinite(v)]
    if not pairs:
        return out
    best_it, best = min(pairs, key=lambda p: (p[1], p[0]))
    last_it, last = pairs[-1]
    out.update(
        val_nll_min=best, val_nll_min_iteration=best_it, val_nll_last=last, val_nll_rise=last - best
    )
    loss = dict(zip(history.get("iteration") or [], history.get("loss") or [], strict=False))
    w = its[1] - its[0] if len(its) > 1 else max(1, its[0])

    def window(it: int) -> float | None:
        values = [loss[i] for i in range(it - w + 1, it + 1) if i in loss]
        return float(np.mean(values)) if values else None

    at_min, at_last = window(best_it), window(last_it)
    out.update(train_loss_at_min=at_min, train_loss_last=at_last)
    if at_min is not None and at_last is not None:
        out["train_loss_fall"] = at_min - at_last
    return out


def measure_distances(
    run: Run, data, *, device=None, margins: Sequence[float] = (5.0,), batch_size: int = 32
) -> dict[str, Any]:
    """Exact logit-distance summary of ``run``'s last weights on the test volumes and on the
    training images (``metrics.distance_summary``); written to ``<run>/distances.json``."""
    import torch

    from mls_tutorial.device import pick_device
    from mls_tutorial.files import write_json
    from mls_tutorial.metrics import distance_summary
    from mls_tutorial.train.evaluation import predict_logits

    if run.config.get("temperature_scaling"):
        raise ValueError("measure_distances: a temperature-scaled run has its base run's logits")
    dev = pick_device(device)
    model = run.load_model(dev, which="last")
    amp = run.config["amp"]

    def logits(images: torch.Tensor):
        return predict_logits(model, images, device=dev, batch_size=batch_size, amp=amp)

    train_images = data.train.images
    out = {
        "margins": [float(m) for m in margins],
        "test": distance_summary((logits(v.image) for v in data.test), margins),
        "train": distance_summary(logits(train_images), margins),
    }
    for part in ("test", "train"):  # JSON keys are strings
        out[part]["share_above"] = {f"{m:g}": v for m, v in out[part]["share_above"].items()}
    write_json(out, run.path / DISTANCES_FILE)
    return out


def read_distances(run: Run) -> dict[str, Any] | None:
    """``<run>/distances.json`` (``measure_distances``), or None when absent."""
    from mls_tutorial.files import read_json

    path = run.path / DISTANCES_FILE
    return read_json(path) if path.is_file() else None


def knob_text(config: Mapping[str, Any]) -> str:
    """The knobs of a run's loss, e.g. ``alpha=0.03`` or ``margin=5``; ``-`` for none."""
    from mls_tutorial.runs import KNOBS

    kw = config.get("loss_kwargs", {})
    knobs = [f"{k}={float(kw[k]):g}" for k in KNOBS.get(config["loss"], ()) if k in kw]
    return " ".join(knobs) or "-"


def run_record(run: Run, margin: float = 5.0) -> dict[str, Any]:
    """One flat row per run: cell, family, knobs, seed, test and validation metrics,
    ``history_divergence`` and the distances of ``distances.json`` at ``margin``."""
    from mls_tutorial.sweep import family

    cfg, m = run.config, run.metrics
    val = m.get("val") or {}
    rec: dict[str, Any] = {
        "preset": cfg["preset"],
        "iterations": cfg["iterations"],
        "family": family(cfg),
        "method": run.label,
        "knobs": knob_text(cfg),
        "seed": cfg["seed"],
        "run": run.name,
        "key": run_key({**cfg, "seed": 0}),
    }
    for key in (*PAIRED, "hd95", "ece_true", "temperature"):
        rec[key] = m.get(key)
    for key in ("dice", "ece", "gap"):
        rec[f"val_{key}"] = val.get(key)
    div = history_divergence(run.history)
    rec.update({k: div[k] for k in ("val_nll_rise", "train_loss_fall", "val_nll_min_iteration")})
    rec["seconds"] = run.history.get("seconds")
    dist = None if cfg.get("temperature_scaling") else read_distances(run)
    for part in ("test", "train"):
        summary = (dist or {}).get(part) or {}
        rec[f"{part}_mean_distance"] = summary.get("mean")
        rec[f"{part}_share_above_margin"] = (summary.get("share_above") or {}).get(f"{margin:g}")
    return rec
