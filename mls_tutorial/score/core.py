"""Score saved probability maps: the metrics of a run, one case in memory at a time.

``score_cases(pairs)`` takes any iterable of ``(probabilities (C, *spatial), labels (*spatial),
spacing)`` (or ``Case`` objects) and returns the results dict a run's ``metrics.json`` holds
(``train.evaluate``'s keys), accumulated with the exact streaming meters. Each case is checked
and then read piece by piece (``chunk_entries`` probabilities at a time), so the memory beyond
the case itself stays small. Per piece, with ``p`` the saved probabilities:

    log p       = log(max(p, tiny))    tiny: the smallest normal number of p's dtype, so that a
                                       saturated p = 0 gives a finite log (and no NaN)
    z           = log p / T            T = 1 as saved; T = T* after temperature scaling
    d_k         = max_j z_j - z_k      the logit distances (log-probability differences equal
                                       logit differences: softmax is shift-invariant)

The meters take ``z`` as logits: ``softmax(z) = p / sum(p)`` at T = 1, the saved probabilities
renormalised in float64. ``fit_temperature_on_cases`` fits T* on other (validation) cases:
``argmin_T mean -log softmax(log p / T)_y``, which is temperature scaling of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram
from mls_tutorial.metrics.distances import DEFAULT_MARGINS
from mls_tutorial.metrics.truth import true_calibration, truth_table
from mls_tutorial.score.layouts import Case, ScoreInputError

#: shares of logit distances above these margins are reported
SCORE_MARGINS = (2.0, 5.0, 10.0)
_CAL_KEYS = ("ece", "cece", "mce", "brier", "nll")


# ------------------------------------------------------------------------------ one case


def as_case(item: Any, index: int) -> Case:
    """A ``Case`` from a ``Case`` or a ``(probabilities, labels[, spacing[, name]])`` tuple."""
    if isinstance(item, Case):
        case = item
    elif isinstance(item, Sequence) and 2 <= len(item) <= 4:
        case = Case(*item)
    else:
        raise ScoreInputError(
            f"case {index}: expected (probabilities, labels, spacing) or a Case, got "
            f"{type(item).__name__}"
        )
    if case.name is None:
        case.name = f"case{index:03d}"
    return case


def _shape_message(name: str, probs_shape, label_shape) -> str:
    spatial, label = tuple(probs_shape[1:]), tuple(label_shape)
    text = (
        f"case {name}: probabilities have spatial shape {spatial} (array {tuple(probs_shape)}, "
        f"channel first) but the label map has shape {label}"
    )
    if spatial == label[::-1]:
        text += (
            ": the axes are reversed, the (Z, Y, X) order of SimpleITK/nnU-Net against the "
            "(X, Y, Z) order of nibabel; nnU-Net's .npz holds (C, Z, Y, X), a .npy must be "
            "(C, X, Y, Z)"
        )
    elif sorted(spatial) == sorted(label):
        text += ": the same sizes in another order, an axis-order mix-up"
    elif tuple(probs_shape[:-1]) == label or tuple(probs_shape[-1:]) + spatial[:-1] == label:
        text += ": the channel axis looks last; this layout wants the channel first"
    return text


def check_case(case: Case, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Shapes, dtypes and spacing of one case; returns ``(probabilities, labels, K)``."""
    p = case.probabilities
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else p
    y = case.labels
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p.dtype.kind != "f":
        raise ScoreInputError(
            f"case {case.name}: probabilities must be floating point, got {p.dtype}"
        )
    if p.ndim < 2 or p.ndim > 4:
        raise ScoreInputError(
            f"case {case.name}: probabilities must be (C, *spatial) with 1 to 3 spatial axes, got "
            f"shape {p.shape}"
        )
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.array_equal(np.rint(y), y):
            y = y.astype(np.int64)
        else:
            raise ScoreInputError(f"case {case.name}: labels must be integers, got {y.dtype}")
    if tuple(p.shape[1:]) != tuple(y.shape):
        raise ScoreInputError(_shape_message(case.name, p.shape, y.shape))
    k = p.shape[0]
    if k < 2:
        raise ScoreInputError(
            f"case {case.name}: {k} channel; score needs K >= 2 class probabilities (a sigmoid "
            "map of one structure: stack (1 - p, p))"
        )
    if num_classes is not None and k != num_classes:
        raise ScoreInputError(
            f"case {case.name}: {k} channels, but the cases before had {num_classes}"
        )
    if case.spacing is not None:
        sp = np.asarray(case.spacing, dtype=np.float64).reshape(-1)
        if sp.size != y.ndim or not np.all(np.isfinite(sp) & (sp > 0)):
            raise ScoreInputError(
                f"case {case.name}: spacing {case.spacing!r} must be {y.ndim} values > 0 (mm)"
            )
    if case.true_probabilities is not None and tuple(case.true_probabilities.shape) != p.shape:
        raise ScoreInputError(
            f"case {case.name}: true probabilities {tuple(case.true_probabilities.shape)} != "
            f"probabilities {p.shape}"
        )
    return p, y, k


def sum_tolerance_for(dtype, num_classes: int) -> float:
    """Allowed ``|sum_k p_k - 1|``: 1e-3, or more for coarse dtypes (2 K eps)."""
    return max(1e-3, 2 * num_classes * float(np.finfo(dtype).eps))


def _chunk_slices(shape: tuple[int, ...], strides: tuple[int, ...], entries: int, k: int):
    """Slices along the spatial axis that is outermost in memory, ``entries / K`` voxels each."""
    axis = int(np.argmax(np.abs(strides)))
    per_index = int(np.prod(shape)) // max(shape[axis], 1)
    step = max(1, entries // max(1, k * per_index))
    for lo in range(0, shape[axis], step):
        index = [slice(None)] * len(shape)
        index[axis] = slice(lo, lo + step)
        yield tuple(index)


def case_pieces(case: Case, p: np.ndarray, y: np.ndarray, k: int, perm, entries: int):
    """Checked pieces of a case: ``(index, p (C, V) float, log p (C, V) float64, y (V,), q)``.

    ``perm`` reorders the channels (and labels) so that the background is class 0. Raises
    ``ScoreInputError`` for NaN, values outside [0, 1], sums off 1, labels outside [0, K).
    """
    tiny = float(np.finfo(p.dtype).tiny)
    tol = sum_tolerance_for(p.dtype, k)
    inv = None if perm is None else np.argsort(perm)
    q_all = case.true_probabilities
    for index in _chunk_slices(y.shape, y.strides, entries, k):
        pc = torch.from_numpy(np.array(p[(slice(None), *index)], order="C").reshape(k, -1))
        yc = torch.from_numpy(np.array(y[index], dtype=np.int64, order="C").reshape(-1))
        _check_piece(case.name, pc, yc, k, tol)
        if perm is not None:
            pc = pc[list(perm)]
            yc = torch.from_numpy(inv)[yc]
        logp = pc.double().clamp_min(tiny).log()
        q = None
        if q_all is not None:
            qc = np.array(np.asarray(q_all)[(slice(None), *index)], order="C").reshape(k, -1)
            q = torch.from_numpy(qc).double()
            q = q if perm is None else q[list(perm)]
        yield index, pc, logp, yc, q


def _check_piece(name: str, pc: torch.Tensor, yc: torch.Tensor, k: int, tol: float) -> None:
    if not bool(torch.isfinite(pc).all()):
        bad = int((~torch.isfinite(pc)).sum())
        raise ScoreInputError(f"case {name}: {bad} probability value(s) are NaN or inf")
    lo, hi = float(pc.min()), float(pc.max())
    sums = pc.float().sum(0)
    off = float((sums - 1).abs().max()) if sums.numel() else 0.0
    if lo < 0 or hi > 1 + tol or off > tol:
        text = (
            f"case {name}: the values are not probabilities: range [{lo:.4g}, {hi:.4g}], "
            f"class sums off 1 by up to {off:.4g} (tolerance {tol:.1e})"
        )
        if lo < 0 or hi > 1 + tol:
            text += (
                "; values outside [0, 1] are usually logits saved by mistake: save softmax outputs"
            )
        else:
            text += (
                "; channels in [0, 1] that do not sum to 1 are usually sigmoid outputs (nnU-Net "
                "region-based training): score each region as its own binary problem"
            )
        raise ScoreInputError(text)
    if yc.numel() and (int(yc.min()) < 0 or int(yc.max()) >= k):
        raise ScoreInputError(
            f"case {name}: labels in [{int(yc.min())}, {int(yc.max())}] lie outside [0, {k}) "
            f"for {k} probability channels"
        )


def _permutation(k: int, background: int) -> list[int] | None:
    if not 0 <= background < k:
        raise ScoreInputError(f"background={background} is not a class index in [0, {k})")
    if background == 0:
        return None
    perm = list(range(k))
    perm[0], perm[background] = background, 0
    return perm


# ------------------------------------------------------------------------------ temperature


def fit_temperature_on_cases(
    pairs: Iterable,
    *,
    background: int = 0,
    max_voxels: int = 2_000_000,
    n_cases: int | None = None,
    seed: int = 0,
    progress: bool = True,
    chunk_entries: int = 1 << 20,
) -> dict[str, Any]:
    """Fit post-hoc temperature scaling on these (validation) cases only.

    ``T* = argmin_T mean_v -log softmax(log p_v / T)_{y_v}`` (``train.optimal_temperature``, L-BFGS
    on log T in float64) over a seeded uniform subsample of at most ``max_voxels`` voxels
    (``max_voxels / n_cases`` per case). Returns ``temperature``, ``n_voxels``, ``cases``.
    """
    from tqdm.auto import tqdm

    from mls_tutorial.train.temperature import optimal_temperature

    if n_cases is None and isinstance(pairs, Sequence):
        n_cases = len(pairs)
    budget = max_voxels // max(1, n_cases or 1)
    rng = np.random.default_rng(seed)
    zs, ys, names, k = [], [], [], None
    for i, item in enumerate(tqdm(pairs, desc="fit T", unit="case", disable=not progress)):
        case = as_case(item, i)
        p, y, k = check_case(case, k)
        perm = _permutation(k, background)
        frac = min(1.0, budget / max(1, y.size))
        for _, _, logp, yc, _ in case_pieces(case, p, y, k, perm, chunk_entries):
            keep = torch.from_numpy(rng.random(yc.numel()) < frac)
            zs.append(logp[:, keep].T.float())
            ys.append(yc[keep])
        names.append(case.name)
        del case, p, y
    if not names:
        raise ScoreInputError("no validation case to fit the temperature on")
    z, y = torch.cat(zs), torch.cat(ys)
    if z.shape[0] == 0:
        raise ScoreInputError("the validation cases hold no voxels")
    return {"temperature": optimal_temperature(z, y), "n_voxels": int(z.shape[0]), "cases": names}


# ------------------------------------------------------------------------------ scoring


class _Variant:
    """The meters of one temperature (None: as saved)."""

    def __init__(self, k: int, n_bins: int, margins, temperature: float | None):
        self.t = temperature
        self.meter = CalibrationMeter(k, n_bins=n_bins, region="foreground", per_volume=True)
        self.meter_all = CalibrationMeter(k, n_bins=n_bins, region="all")
        self.hist = LogitDistanceHistogram(k, margins=sorted({*DEFAULT_MARGINS, *margins}))
        self.truth: list[dict] = []
        self.case_meter: CalibrationMeter | None = None
        self.case_truth: torch.Tensor | None = None

    def start_case(self, k: int, n_bins: int) -> None:
        self.case_meter = CalibrationMeter(k, n_bins=n_bins, region="foreground")
        self.case_truth = None

    def add(self, logp: torch.Tensor, y: torch.Tensor, q: torch.Tensor | None, n_bins: int):
        z = (logp if self.t is None else logp / self.t)[None]
        self.case_meter.update(z, y[None])
        self.meter_all.update(z, y[None])
        self.hist.update(z)
        if q is not None:
            table = truth_table(torch.softmax(z, 1), q[None], (y != 0)[None], n_bins)
            self.case_truth = table if self.case_truth is None else self.case_truth + table

    def end_case(self) -> dict:
        self.meter.add_volume(self.case_meter)
        out = self.case_meter.compute()
        if self.case_truth is not None:
            self.truth.append(true_calibration(self.case_truth))
        self.case_meter = None
        return out


def _nanmean(values) -> float:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _segmentation(confusion, pred: np.ndarray, y: np.ndarray, k: int, spacing, hd95: bool):
    """Dice (from the case's confusion matrix) and HD95 (mm; MONAI, one binary map at a time,
    so memory stays small) per foreground class."""
    from mls_tutorial.metrics import dice_from_confusion, hd95_per_class

    dice = dice_from_confusion(confusion)
    hd = np.full(k - 1, np.nan)
    if hd95:
        for c in range(1, k):
            pc, yc = (pred == c).astype(np.uint8), (y == c).astype(np.uint8)
            hd[c - 1] = hd95_per_class(pc, yc, 2, spacing=spacing)[0]
    return dice, hd


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
    chunk_entries: int = 1 << 20,
) -> dict[str, Any]:
    """Score saved probability maps against labels, one case in memory at a time.

    ``pairs``: any iterable of ``(probabilities (C, *spatial), labels (*spatial), spacing)``
    (numpy or torch; spacing in mm per spatial axis, None for 1 mm) or ``Case`` objects (with a
    name and optional true probabilities). ``background``: the label of the background (left out
    of Dice/HD95 and of the foreground region). ``temperature``: also score ``log p / T``
    (post-hoc temperature scaling fitted elsewhere: ``fit_temperature_on_cases``), under
    ``results["temperature_scaled"]``. Returns the keys of a run's ``metrics.json``
    (``train.evaluate``) plus ``score`` (saturation, shares of logit distances above ``margins``,
    per-class gaps); ``tce``/``ece_true``/``prob_gap``/``dice_bayes`` only when every case has
    true probabilities.
    """
    from tqdm.auto import tqdm

    from mls_tutorial.train.evaluation import check_temperature

    check_temperature(temperature)
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ScoreInputError(f"temperature must be > 0, got {temperature}")
    if total is None and isinstance(pairs, Sequence):
        total = len(pairs)
    k = variants = None
    rows, dice_v, hd_v, bayes_v = [], [], [], []
    sat = {"voxels": 0, "saturated": 0, "zero_entries": 0, "entries": 0, "dtypes": set()}
    for i, item in enumerate(
        tqdm(pairs, desc="score", unit="case", total=total, disable=not progress)
    ):
        case = as_case(item, i)
        p, y, k_case = check_case(case, k)
        if k is None:
            k = k_case
            perm = _permutation(k, background)
            temps = [None] if temperature is None else [None, float(temperature)]
            variants = [_Variant(k, n_bins, margins, t) for t in temps]
        for v in variants:
            v.start_case(k, n_bins)
        pred = np.empty(y.shape, dtype=np.int16 if k < 32000 else np.int64)
        labels = np.empty(y.shape, dtype=pred.dtype) if perm is not None else y
        sat["dtypes"].add(str(p.dtype))
        confusion = torch.zeros(k * k, dtype=torch.int64)
        bayes_conf = torch.zeros(k * k, dtype=torch.int64)
        for index, pc, logp, yc, q in case_pieces(case, p, y, k, perm, chunk_entries):
            for v in variants:
                v.add(logp, yc, q, n_bins)
            pc_pred = pc.argmax(0)
            confusion += torch.bincount(pc_pred * k + yc, minlength=k * k)
            pred[index] = pc_pred.numpy().reshape(pred[index].shape)
            if perm is not None:
                labels[index] = yc.numpy().reshape(labels[index].shape)
            if q is not None:
                bayes_conf += torch.bincount(pc_pred * k + q.argmax(0), minlength=k * k)
            sat["saturated"] += int((pc.max(0).values == 1).sum())
            sat["zero_entries"] += int((pc == 0).sum())
            sat["voxels"] += yc.numel()
            sat["entries"] += pc.numel()
        name, spacing = case.name, case.spacing
        has_q = case.true_probabilities is not None
        del case, p, y  # the probabilities may go now
        cal = [v.end_case() for v in variants]
        spacing_t = None if spacing is None else tuple(float(s) for s in spacing)
        dice, hd = _segmentation(confusion.view(k, k).numpy(), pred, labels, k, spacing_t, hd95)
        dice_v.append(dice)
        hd_v.append(hd)
        if has_q:
            bayes_v.append(
                _segmentation(bayes_conf.view(k, k).numpy(), pred, None, k, None, False)[0]
            )
        rows.append({"name": name, "dice": dice, "hd95": hd, "cal": cal})
    if k is None:
        raise ScoreInputError("no case to score: the iterable of cases is empty")
    names = _class_names(class_names, k, background)
    has_truth = len(bayes_v) == len(rows)
    results = [
        _results(v, j, rows, dice_v, hd_v, bayes_v if has_truth else None, names, has_truth)
        for j, v in enumerate(variants)
    ]
    extra = _score_extras(variants[0], sat, margins, names)
    out = results[0]
    out["score"] = extra
    if len(results) > 1:
        out["temperature_scaled"] = results[1]
        out["temperature_scaled"]["score"] = _score_extras(variants[1], sat, margins, names)
    return out


def _class_names(class_names, k: int, background: int) -> list[str]:
    if class_names is None:
        class_names = ["background"] + [f"class{c}" for c in range(1, k)]
        if background != 0:
            class_names = [f"class{c}" for c in range(k)]
            class_names[background] = "background"
    class_names = [str(n) for n in class_names]
    if len(class_names) != k:
        raise ScoreInputError(f"{len(class_names)} class names for {k} probability channels")
    perm = _permutation(k, background)
    return class_names if perm is None else [class_names[c] for c in perm]


def _results(v: _Variant, j, rows, dice_v, hd_v, bayes_v, names, has_truth) -> dict[str, Any]:
    """The keys of ``train.evaluate`` for one temperature."""
    dice_a, hd_a = np.stack(dice_v), np.stack(hd_v)  # (V, K-1)
    cal, cal_all = v.meter.compute(), v.meter_all.compute()
    fg = names[1:]
    per_volume = []
    for i, row in enumerate(rows):
        c = row["cal"][j]
        entry = {
            "name": row["name"],
            "dice": _nanmean(row["dice"]),
            "hd95": _nanmean(row["hd95"]),
            "dice_per_class": dict(zip(fg, map(float, row["dice"]), strict=True)),
            "hd95_per_class": dict(zip(fg, map(float, row["hd95"]), strict=True)),
        }
        if has_truth:
            entry.update({key: v.truth[i][key] for key in ("prob_gap", "tce", "ece_true")})
            entry["dice_bayes"] = _nanmean(bayes_v[i])
        entry.update({key: c[key] for key in (*_CAL_KEYS, "gap", "n_voxels")})
        per_volume.append(entry)
    per_class = {}
    for c, name in enumerate(fg):
        per_class[name] = {"dice": _nanmean(dice_a[:, c]), "hd95": _nanmean(hd_a[:, c])}
        if has_truth:
            per_class[name]["dice_bayes"] = _nanmean(np.stack(bayes_v)[:, c])
    out = {
        "dice": _nanmean(dice_a.ravel()),
        "hd95": _nanmean(hd_a.ravel()),
        **{key: float(cal[f"{key}_mean_over_volumes"]) for key in _CAL_KEYS},
        "ece_all": float(cal_all["ece"]),
        "cece_all": float(cal_all["cece"]),
        "gap": float(cal["gap_mean_over_volumes"]),
    }
    if has_truth:
        for key in ("prob_gap", "tce", "ece_true"):
            out[key] = _nanmean([t[key] for t in v.truth])
        out["dice_bayes"] = _nanmean(np.stack(bayes_v).ravel())
    out.update(
        {
            "region": "foreground",
            "n_volumes": len(rows),
            "per_class": per_class,
            "per_volume": per_volume,
            "calibration": {"foreground": cal, "all": cal_all},
            "meter": v.meter.to_dict(),
            "meter_all": v.meter_all.to_dict(),
            "histogram": v.hist.to_dict(),
            "temperature": v.t,
            "data": {"num_classes": len(names), "class_names": list(names)},
        }
    )
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
