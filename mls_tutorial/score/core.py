"""Score saved probability maps: the metrics of a run, one case in memory at a time.

``score_cases(pairs)`` takes any iterable of ``(probabilities (C, *spatial), labels (*spatial),
spacing)`` (or ``Case`` objects, or ``CaseFiles`` that read one) and returns the results dict a
run's ``metrics.json`` holds (``metrics.results.assemble``, as for ``train.evaluate``). Each case is scored on its own
(``case.score_case``: one pass over its pieces gives every table, at each temperature); the
cases are then merged in their order, so ``workers=N`` processes give the same numbers as one.
The saved probabilities are taken as logits ``z = log p / T`` (T = 1 as saved; ``T*`` after
temperature scaling fitted elsewhere, ``temperature.fit_temperature_on_cases``):
``softmax(log p) = p / sum(p)``, the saved probabilities renormalised in float64.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np

from mls_tutorial.metrics import CalibrationMeter
from mls_tutorial.metrics.results import assemble
from mls_tutorial.metrics.truth import true_calibration
from mls_tutorial.score.case import CaseScore, distance_histogram, score_case, score_device
from mls_tutorial.score.checks import permutation
from mls_tutorial.score.layouts import ScoreInputError
from mls_tutorial.score.tables import Tables

#: shares of logit distances above these margins are reported
SCORE_MARGINS = (2.0, 5.0, 10.0)


class _Variant:
    """Everything pooled over the cases at one temperature (None: as saved)."""

    def __init__(self, k: int, n_bins: int, margins, temperature: float | None):
        self.t = temperature
        self.meter = CalibrationMeter(k, n_bins=n_bins, region="foreground", per_volume=True)
        self.pooled = Tables(k, n_bins, distance_histogram(k, margins), temperature)
        self.truth: list[dict] = []

    def add_case(self, tables: Tables) -> dict:
        """Add one case's tables; returns its foreground calibration numbers."""
        case_meter = tables.meter("foreground")
        self.meter.add_volume(case_meter)
        tables.add_to(self.pooled)
        if tables.truth is not None:
            self.truth.append(true_calibration(tables.truth))
        return case_meter.compute()

    def finish(self) -> None:
        self.meter_all = self.pooled.meter("all")
        self.hist = self.pooled.histogram()


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def map_cases(fn, items: Iterable, workers: int = 1, executor=None):
    """``fn(item, i)`` for each item, in order; with ``workers > 1`` in that many processes,
    at most ``workers`` cases in flight (memory: ``workers`` x one case). ``executor``: any
    ``concurrent.futures`` executor (a Dask client's: ``cluster.dask_executor``), every case
    submitted at once (small: file names), results taken in order (each worker thread holds
    one case)."""
    if executor is not None:
        futures = [executor.submit(fn, item, i) for i, item in enumerate(items)]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
        return
    if workers <= 1:
        for i, item in enumerate(items):
            yield fn(item, i)
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads,),
    )
    pending: deque = deque()
    try:
        for i, item in enumerate(items):
            pending.append(pool.submit(fn, item, i))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class CaseMerge:
    """The cases' ``CaseScore``s at the temperatures ``temps`` merged in the order they are
    added (``add``), then ``results``: the dict ``score_cases`` returns."""

    def __init__(self, temps, n_bins: int, margins):
        self.temps, self.n_bins, self.margins = temps, n_bins, margins
        self.k = self.variants = None
        self.rows, self.dice_v, self.hd_v, self.bayes_v = [], [], [], []
        self.sat = {"voxels": 0, "saturated": 0, "zero_entries": 0, "entries": 0, "dtypes": set()}

    def add(self, cs: CaseScore) -> None:
        from mls_tutorial.metrics import dice_from_confusion

        if self.k is None:
            self.k = cs.k
            self.variants = [_Variant(cs.k, self.n_bins, self.margins, t) for t in self.temps]
        elif cs.k != self.k:
            raise ScoreInputError(
                f"case {cs.name}: {cs.k} channels, but the cases before had {self.k}"
            )
        cal = [v.add_case(t) for v, t in zip(self.variants, cs.tables, strict=True)]
        for key in ("voxels", "saturated", "zero_entries", "entries"):
            self.sat[key] += cs.sat[key]
        self.sat["dtypes"].add(cs.sat["dtype"])
        dice = dice_from_confusion(cs.confusion)
        self.dice_v.append(dice)
        self.hd_v.append(cs.hd95)
        if cs.bayes_confusion is not None:
            self.bayes_v.append(dice_from_confusion(cs.bayes_confusion))
        self.rows.append({"name": cs.name, "dice": dice, "hd95": cs.hd95, "cal": cal})

    def results(self, class_names=None, background: int = 0) -> dict[str, Any]:
        if self.k is None:
            raise ScoreInputError("no case to score: the iterable of cases is empty")
        for v in self.variants:
            v.finish()
        names = _class_names(class_names, self.k, background)
        has_truth = len(self.bayes_v) == len(self.rows)
        bayes = self.bayes_v if has_truth else None
        args = (self.rows, self.dice_v, self.hd_v, bayes, names, has_truth)
        results = [_results(v, j, *args) for j, v in enumerate(self.variants)]
        for v, res in zip(self.variants, results, strict=True):
            res["score"] = _score_extras(v, self.sat, self.margins, names)
        out = results[0]
        if len(results) > 1:
            out["temperature_scaled"] = results[1]
        return out


def _in_a_list(fn, item, index: int) -> list:
    return [fn(item, index)]


def run_cases(fn, pairs: Iterable, merges: Sequence[CaseMerge], **run) -> None:
    """``fn(item, i)`` -> one ``CaseScore`` per merge, for every case (``map_cases``), each
    added to its merge in the cases' order. ``run``: ``progress``, ``total``, ``workers``,
    ``executor``."""
    from tqdm.auto import tqdm

    workers, executor = run.get("workers", 1), run.get("executor")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ScoreInputError(f"workers must be an integer >= 1, got {workers!r}")
    if executor is not None and workers != 1:
        raise ScoreInputError("give workers (local processes) or an executor, not both")
    total = run.get("total")
    if total is None and isinstance(pairs, Sequence):
        total = len(pairs)
    results = map_cases(fn, pairs, workers, executor)
    bar = tqdm(results, desc="score", unit="case", total=total, disable=not run.get("progress"))
    for scores in bar:
        for merge, cs in zip(merges, scores, strict=True):
            merge.add(cs)


def in_case_progress(progress: bool, workers: int = 1, executor=None) -> bool:
    """A progress bar within a large case: only when the cases are scored in this process."""
    return progress and workers == 1 and executor is None


def score_cases(
    pairs: Iterable,
    *,
    class_names: Sequence[str] | None = None,
    background: int = 0,
    temperature: float | None = None,
    n_bins: int = 15,
    margins: Sequence[float] = SCORE_MARGINS,
    hd95: bool = True,
    progress: bool = True,
    total: int | None = None,
    workers: int = 1,
    executor=None,
    device=None,
) -> dict[str, Any]:
    """Score saved probability maps against labels, one case in memory at a time (per worker).

    ``pairs``: any iterable of ``(probabilities (C, *spatial), labels (*spatial), spacing)``
    (numpy or torch; spacing in mm per spatial axis, None for 1 mm), ``Case`` objects (with a
    name and optional true probabilities) or ``CaseFiles`` (read where they are scored).
    ``background``: the label of the background (left out of Dice/HD95 and of the foreground
    region). ``temperature``: also score ``log p / T`` under ``results["temperature_scaled"]``.
    ``hd95=False`` skips HD95 (NaN). ``workers``: processes (each holds one case; the cases
    must be picklable, ``CaseFiles`` best). ``executor``: a ``concurrent.futures`` executor
    instead of ``workers`` (a Dask cluster: the files must be where its workers see them; the
    same numbers, merged in the cases' order). ``device``: where each case is scored
    (``case.score_device``: None the CPU, ``"auto"`` CUDA when present; every worker the same;
    on CUDA the same numbers within float tolerance). Returns the keys of a run's ``metrics.json``
    (``train.evaluate``) plus ``score`` (saturation, shares of logit distances above
    ``margins``, per-class gaps); ``tce``/``ece_true``/``prob_gap``/``dice_bayes`` only when
    every case has true probabilities.
    """
    from mls_tutorial.train.evaluation import check_temperature

    check_temperature(temperature)
    temps = [None] if temperature is None else [None, float(temperature)]
    device = score_device(device)
    fn = partial(
        score_case,
        temperatures=temps,
        background=background,
        n_bins=n_bins,
        margins=margins,
        hd95=hd95,
        progress=in_case_progress(progress, workers, executor),
        device=device,
    )
    merge = CaseMerge(temps, n_bins, margins)
    run = {"progress": progress, "total": total, "workers": workers, "executor": executor}
    run_cases(partial(_in_a_list, fn), pairs, [merge], **run)
    return merge.results(class_names, background)


def _class_names(class_names, k: int, background: int) -> list[str]:
    if class_names is None:
        class_names = ["background"] + [f"class{c}" for c in range(1, k)]
        if background != 0:
            class_names = [f"class{c}" for c in range(k)]
            class_names[background] = "background"
    class_names = [str(n) for n in class_names]
    if len(class_names) != k:
        raise ScoreInputError(f"{len(class_names)} class names for {k} probability channels")
    perm = permutation(k, background)
    return class_names if perm is None else [class_names[c] for c in perm]


def _results(v: _Variant, j, rows, dice_v, hd_v, bayes_v, names, has_truth) -> dict[str, Any]:
    """The keys of ``train.evaluate`` for one temperature (truth keys only with ``has_truth``)."""
    out = assemble(
        names=[row["name"] for row in rows],
        class_names=names,
        dice=np.stack(dice_v),
        hd95=np.stack(hd_v),
        volume_cal=[row["cal"][j] for row in rows],
        cal=v.meter.compute(),
        cal_all=v.meter_all.compute(),
        region="foreground",
        meter=v.meter.to_dict(),
        meter_all=v.meter_all.to_dict(),
        histogram=v.hist.to_dict(),
        temperature=v.t,
        truth=v.truth if has_truth else None,
        bayes=np.stack(bayes_v) if has_truth else None,
        absent_truth="omit",
    )
    out["data"] = {"num_classes": len(names), "class_names": list(names)}
    return out


def class_gaps(meter: CalibrationMeter, class_names: Sequence[str]) -> dict[str, dict]:
    """Per PREDICTED class: voxels, mean confidence, accuracy and their gap (conf - acc).

    From the meter's tables: the voxels whose argmax is class k (codes 2 and 3 of row k), their
    summed top-label confidence ``s_k`` and how many of them have label k (code 3).
    """
    state = meter.state_dict()
    count, conf = state["count"].numpy(), state["conf_sum"].numpy()  # (4, K, B)
    out = {}
    for c, name in enumerate(class_names):
        n = int(count[2:, c].sum())
        if n == 0:
            out[name] = {"n_voxels": 0, "confidence": None, "accuracy": None, "gap": None}
            continue
        confidence, accuracy = float(conf[2:, c].sum() / n), float(count[3, c].sum() / n)
        out[name] = {
            "n_voxels": n,
            "confidence": confidence,
            "accuracy": accuracy,
            "gap": confidence - accuracy,
        }
    return out


def _score_extras(v: _Variant, sat: dict, margins, names) -> dict[str, Any]:
    """Saturation, shares of logit distances above the margins, per-predicted-class gaps (all
    voxels)."""
    dtypes = sorted(sat["dtypes"])
    tiny = min(float(np.finfo(np.dtype(d)).tiny) for d in dtypes)
    return {
        "saturated_share": sat["saturated"] / sat["voxels"] if sat["voxels"] else math.nan,
        "zero_share": sat["zero_entries"] / sat["entries"] if sat["entries"] else math.nan,
        "dtypes": dtypes,
        "log_clip": math.log(tiny),
        "clip_distance": -math.log(tiny),
        "distance_share_above": {f"{m:g}": v.hist.fraction_above(m) for m in margins},
        "per_class_gap": class_gaps(v.meter_all, names),
    }
