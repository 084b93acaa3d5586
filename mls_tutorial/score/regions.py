"""Region-based (sigmoid) models: each region scored as its own two-class problem.

nnU-Net v2's region-based training (``dataset.json`` labels that are lists, e.g. BraTS's whole
tumour ``[1, 2, 3]``, tumour core ``[2, 3]``, enhancing tumour ``[3]``) saves one sigmoid
probability ``p_r`` per region, channel ``r`` in the order of ``labels`` (background and
``ignore`` left out). Region r's target is ``t_r = [label in labels_r]`` (nnU-Net's
``ConvertSegmentationToRegionsTransform``). Region r is scored by ``score_cases`` as the
two-class map ``(1 - p_r, p_r)`` (in p's dtype) against ``t_r``, so each number means what it
means for K classes, with K = 2 (``z = log max(., tiny)`` as for softmax maps):

    prediction   p_r > 0.5 (nnU-Net's rule; p = 0.5 is outside), confidence max(p_r, 1 - p_r)
    ece          top-label ECE on the voxels inside the true region (t_r = 1), per case, mean
    ece_all      the same over every voxel, pooled;  cece: mean of both classes' ECE (t_r = 1)
    nll          -[t log p + (1 - t) log(1 - p)],    brier: sum over both classes = 2 (p - t)^2
    distance     |z_1 - z_0| = |log(p / (1 - p))|, the binary logit's magnitude
    temperature  softmax(z / T) = sigmoid(logit / T): ONE T PER REGION, fitted on that region's
                 NLL (each region is its own sigmoid head with its own logit scale)
    dice, hd95   of p_r > 0.5 against t_r

nnU-Net's exported segmentation (``regions_class_order``: later regions overwrite earlier ones)
gives the same regions as ``p_r > 0.5`` where the predicted regions are nested.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mls_tutorial.metrics.results import nanmean
from mls_tutorial.score.case import score_case, score_device
from mls_tutorial.score.checks import as_case
from mls_tutorial.score.core import (
    SCORE_MARGINS,
    CaseMerge,
    in_case_progress,
    run_cases,
)
from mls_tutorial.score.layouts import Case, DatasetInfo, ScoreInputError

_MEAN_KEYS = ("dice", "hd95", "ece", "cece", "gap", "nll", "brier", "ece_all", "cece_all")


@dataclass(frozen=True)
class Region:
    """One sigmoid channel: its name, its channel index and the labels it unites."""

    name: str
    channel: int
    labels: tuple[int, ...]


def regions_of(info: DatasetInfo | dict) -> list[Region]:
    """The regions of a ``DatasetInfo`` (or a ``{name: labels}`` dict), in channel order."""
    regions = info.regions if isinstance(info, DatasetInfo) else info
    if not regions:
        raise ScoreInputError("no region to score: the region list is empty")
    return [
        Region(str(n), c, tuple(int(v) for v in vals))
        for c, (n, vals) in enumerate(regions.items())
    ]


def _check_labels(name: str, y: np.ndarray, regions: Sequence[Region], ignore) -> None:
    known = {0, *(v for r in regions for v in r.labels)}
    present = set(np.unique(y).tolist())
    if ignore is not None and ignore in present:
        raise ScoreInputError(
            f"case {name}: the label map holds nnU-Net's ignore label {ignore}; score does not "
            "exclude voxels: give it dense label maps"
        )
    unknown = sorted(present - known)
    if unknown:
        raise ScoreInputError(
            f"case {name}: label value(s) {unknown} belong to no region (regions: "
            + ", ".join(f"{r.name} = {list(r.labels)}" for r in regions)
            + ")"
        )


def binary_case(case: Case, region: Region, regions: Sequence[Region], ignore=None) -> Case:
    """Region ``region`` of one case as the two-class ``Case((1 - p_r, p_r), t_r)``."""
    p = case.probabilities
    p = p.detach().cpu().numpy() if hasattr(p, "detach") else p
    if p.ndim < 2 or p.shape[0] != len(regions):
        names = ", ".join(f"{r.name} = labels {list(r.labels)}" for r in regions)
        raise ScoreInputError(
            f"case {case.name}: {p.shape[0] if p.ndim else 0} probability channels, but the "
            f"region-based model has {len(regions)} regions ({names}): one sigmoid channel each"
        )
    y = np.asarray(case.labels)
    if y.dtype.kind == "f" and np.array_equal(np.rint(y), y):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ScoreInputError(f"case {case.name}: labels must be integers, got {y.dtype}")
    if region.channel == 0:  # every case passes region 0 first: checked once
        _check_labels(case.name, y, regions, ignore)
    pr = np.asarray(p[region.channel])
    if pr.dtype.kind != "f":
        raise ScoreInputError(
            f"case {case.name}: probabilities must be floating point, got {pr.dtype}"
        )
    lo, hi = (float(pr.min()), float(pr.max())) if pr.size else (0.0, 0.0)
    if not (0 <= lo and hi <= 1):  # NaN fails too
        raise ScoreInputError(
            f"case {case.name}: region {region.name} (channel {region.channel}) has values in "
            f"[{lo:.4g}, {hi:.4g}], outside [0, 1]: save sigmoid probabilities, not logits"
        )
    two = np.empty((2, *pr.shape), dtype=pr.dtype)
    np.subtract(1, pr, out=two[0])
    two[1] = pr
    return Case(two, np.isin(y, region.labels).view(np.uint8), case.spacing, case.name)


@dataclass(frozen=True)
class RegionItem:
    """A case (anything ``score_cases`` takes) seen as one region's binary problem, read when
    loaded (``fit_temperature_on_cases`` reads the validation cases once per region)."""

    item: Any
    index: int
    region: Region
    regions: tuple[Region, ...]
    ignore: int | None = None

    def load(self) -> Case:
        return binary_case(as_case(self.item, self.index), self.region, self.regions, self.ignore)


def region_items(items: Sequence, region: Region, regions, ignore=None) -> list[RegionItem]:
    return [RegionItem(it, i, region, tuple(regions), ignore) for i, it in enumerate(items)]


def fit_region_temperatures(
    val_items: Sequence, regions: Sequence[Region], *, ignore=None, progress: bool = True
) -> dict[str, dict]:
    """One ``fit_temperature_on_cases`` per region, on the validation cases only."""
    from mls_tutorial.score.temperature import fit_temperature_on_cases

    return {
        r.name: fit_temperature_on_cases(
            region_items(val_items, r, regions, ignore), n_cases=len(val_items), progress=progress
        )
        for r in regions
    }


def _means(per_region: dict[str, dict]) -> dict[str, float]:
    return {k: nanmean([m[k] for m in per_region.values()]) for k in _MEAN_KEYS}


def score_region_case(item, index: int, *, regions, temperatures, ignore=None, **kwargs):
    """One case read once: a ``CaseScore`` per region (``case.score_case`` on its two-class
    map, at T = 1 and at the region's own T if any); ``kwargs`` go to ``score_case``."""
    case = as_case(item, index)
    out = []
    for r in regions:
        temps = [None] if temperatures.get(r.name) is None else [None, temperatures[r.name]]
        binary = binary_case(case, r, regions, ignore)
        out.append(score_case(binary, index, temperatures=temps, **kwargs))
        del binary
    return out


def score_region_cases(
    items: Iterable,
    regions: Sequence[Region] | dict,
    *,
    temperatures: dict[str, float] | None = None,
    ignore: int | None = None,
    n_bins: int = 15,
    margins: Sequence[float] = SCORE_MARGINS,
    hd95: bool = True,
    progress: bool = True,
    total: int | None = None,
    workers: int = 1,
    executor=None,
    device=None,
) -> dict[str, Any]:
    """Score a region-based model: every region of a case as the two classes ``(1 - p_r, p_r)``.

    ``items``: what ``score_cases`` takes, with probabilities ``(R, *spatial)`` (one sigmoid
    channel per region) and integer labels; each case is read once (memory: the case plus one
    region's two-class map, ``2 / R`` of it). ``temperatures``: region name -> T (also scored).
    ``ignore``: nnU-Net's ignore label (refused in a label map). The other arguments are
    ``score_cases``'s (``device``: each two-class map is built on the CPU, scored there).
    Returns ``regions`` (name -> ``score_cases``'s results for that region, class names
    ``("not NAME", NAME)``), the means over regions of ``dice, hd95, ece, cece, gap, nll,
    brier, ece_all, cece_all``, and ``temperature_scaled`` (the same means) when temperatures
    are given.
    """
    from mls_tutorial.train.evaluation import check_temperature

    regions = regions_of(regions) if isinstance(regions, dict) else list(regions)
    temperatures = dict(temperatures or {})
    for t in temperatures.values():
        check_temperature(t)
    device = score_device(device)
    fn = partial(
        score_region_case,
        regions=tuple(regions),
        temperatures=temperatures,
        ignore=ignore,
        n_bins=n_bins,
        margins=margins,
        hd95=hd95,
        progress=in_case_progress(progress, workers, executor),
        device=device,
    )
    merges = [
        CaseMerge(
            [None] if temperatures.get(r.name) is None else [None, temperatures[r.name]],
            n_bins,
            margins,
        )  # fmt: skip
        for r in regions
    ]
    run = {"progress": progress, "total": total, "workers": workers, "executor": executor}
    run_cases(fn, items, merges, **run)
    per_region = {}
    for r, merge in zip(regions, merges, strict=True):
        per_region[r.name] = merge.results((f"not {r.name}", r.name))
        per_region[r.name]["region"] = {"channel": r.channel, "labels": list(r.labels)}
    first = per_region[regions[0].name]
    out: dict[str, Any] = {
        **_means(per_region),
        "region_based": True,
        "n_volumes": first["n_volumes"],
        "per_class": {n: m["per_class"][n] for n, m in per_region.items()},
        "regions": per_region,
        "data": {
            "num_classes": len(regions),
            "class_names": [r.name for r in regions],
            "regions": {r.name: list(r.labels) for r in regions},
        },
    }
    if temperatures:
        scaled = {n: m["temperature_scaled"] for n, m in per_region.items()}
        out["temperature_scaled"] = {
            **_means(scaled),
            "temperature": {n: s["temperature"] for n, s in scaled.items()},
        }
    return out
