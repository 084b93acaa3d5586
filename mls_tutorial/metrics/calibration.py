"""Exact, streaming calibration metrics: ``CalibrationMeter`` and its functional forms.

Bins are equal width and right-closed, ``(b/B, (b+1)/B]``, with a confidence of exactly 0 in the
first bin and exactly 1 in the last (Guo 2017; the MbLS code). A confidence ``s`` goes to bin
``ceil(B s) - 1``, computed in float64: exact against the rational edge ``b / B`` for float32 (and
half) probabilities; for float64 ones only a value within ~1e-14 of an edge depends on rounding.
``update`` takes the softmax of the logits in float64 (half and float32 logits upcast), so the
numbers do not depend on how the voxels are chunked or laid out. Ties for the top label go to
the lowest class index, as argmax.

State (see ``_binning``): int64 counts and float64 confidence sums per (code, class, bin), where
the code says whether the class is the predicted one and/or the label, plus float64 sums of
``s_k^2`` and of the NLL. Size ``4 K B``, whatever the number of voxels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._binning import Spec, accumulate, code_bins, fold, merge, new_tables, to_device
from ._inputs import all_gather_list, all_reduce_copy, check_int, flatten_scores
from ._tables import reliability_row, table_metrics

REGIONS = ("all", "foreground", "union")
_VOLUME_KEYS = ("ece", "mce", "rmsce", "ace", "cece", "brier", "nll", "accuracy", "confidence")
_VOLUME_KEYS += ("gap", "n_voxels")
_STATE_KEYS = ("count", "conf_sum", "sums", "n_logit")


class CalibrationMeter:
    """Streaming top-label and classwise calibration errors, Brier score and NLL.

    Args:
        num_classes: K >= 2.
        n_bins: B >= 1 equal-width bins ``(lo, hi]``.
        region: voxels scored: ``"all"``; ``"foreground"`` (ground truth != 0, the paper's
            protocol); ``"union"`` (ground truth != 0 or prediction != 0). An empty region gives
            NaN for every number, never 0.
        per_volume: each ``update`` call is one volume; ``compute`` also returns the per-volume
            numbers and their unweighted mean over volumes with a non-empty region.
        ignore_index: label whose voxels are excluded everywhere.
        device: where the tables live; by default the device of the first input.

    ``compute()`` keys: ``ece`` (top-label, ``sum_b n_b/N |acc_b - conf_b|``), ``mce`` (max over
    non-empty bins), ``rmsce`` (L2 form), ``ace`` (UNWEIGHTED mean of ``|acc_b - conf_b|`` over
    non-empty top-label bins; not the equal-mass "adaptive" ECE), ``cece`` (classwise ECE, bin
    ``s_k`` with accuracy ``1[y = k]``, averaged over ALL K classes), ``ece_per_class``,
    ``accuracy``, ``confidence`` (mean top-label confidence), ``gap`` (confidence - accuracy),
    ``brier`` (mean of ``sum_k (s_k - 1[y = k])^2``), ``nll`` (mean ``-log_softmax(z)_y``; NaN
    when any voxel came from ``update_probs``), ``n_voxels``. With ``per_volume``: ``per_volume``
    (dict of lists), ``<key>_mean_over_volumes``, ``n_volumes``, ``n_empty_volumes``; the
    top-level numbers are then the pooled ones (all volumes' voxels together).

    Under ``torch.distributed`` ``compute`` and ``reliability`` sum the tables of all ranks (on a
    copy), so every rank gets the single-process numbers; per-volume lists are rank-major.
    """

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        region: str = "all",
        per_volume: bool = False,
        ignore_index: int | None = None,
        device: str | torch.device | None = None,
    ):
        self.num_classes = check_int(num_classes, "num_classes", 2)
        self.n_bins = check_int(n_bins, "n_bins", 1)
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        if ignore_index is not None:
            ignore_index = check_int(ignore_index, "ignore_index", -(2**62))
        self.region, self.per_volume, self.ignore_index = region, bool(per_volume), ignore_index
        self.device = None if device is None else torch.device(device)
        self._spec = Spec(self.num_classes, self.n_bins, region, ignore_index)
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget every voxel seen so far."""
        self._tables = new_tables(self._spec, self.device or torch.device("cpu"))
        self._placed = self.device is not None
        self._volumes: list[dict[str, torch.Tensor]] = []

    def _device_for(self, x) -> torch.device:
        """The tables' device; with ``device=None`` they follow the first input."""
        if not self._placed:
            dev = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
            self._tables = to_device(self._spec, self._tables, dev)
            self._placed = True
        return self._tables["count"].device

    # ---------------------------------------------------------------- update
    def update(self, logits, target) -> None:
        """Add a batch of logits ``(N, K, *spatial)`` (softmax and log-softmax in float64)."""
        z, y = flatten_scores(logits, target, self.num_classes, "logits", self._device_for(logits))
        self._add(z, y, logits=True)

    def update_probs(self, probs, target) -> None:
        """Add a batch of probabilities ``(N, K, *spatial)``; each entry must lie in [0, 1].

        The range rule is exact, with no tolerance (a softmax never leaves [0, 1]); row sums are
        not checked (they differ from 1 by rounding). NLL becomes NaN: it needs logits.
        """
        p, y = flatten_scores(probs, target, self.num_classes, "probs", self._device_for(probs))
        self._add(p, y, logits=False)

    def _add(self, scores: torch.Tensor, y: torch.Tensor, logits: bool) -> None:
        """Accumulate into fresh tables, so that bad input leaves the state untouched."""
        tables = new_tables(self._spec, scores.device)
        accumulate(self._spec, tables, scores, y, logits)
        for key, value in tables.items():
            self._tables[key] += value
        if self.per_volume:
            self._volumes.append(fold(self._spec, tables))

    def add_volume(self, other: CalibrationMeter) -> None:
        """Add every voxel ``other`` has seen as ONE volume (score a volume piece by piece in a
        fresh meter, then add it here). ``other`` must have the same classes, bins, region and
        ignore_index; its own per-volume split is not kept."""
        if not isinstance(other, CalibrationMeter):
            raise ValueError(f"other must be a CalibrationMeter, got {type(other).__name__}")
        mine = {k: v for k, v in self._config().items() if k != "per_volume"}
        theirs = {k: v for k, v in other._config().items() if k != "per_volume"}
        if mine != theirs:
            raise ValueError(f"meter configs differ: {theirs} cannot be added to {mine}")
        device = self._tables["count"].device if self._placed else other._tables["count"].device
        self._tables = to_device(self._spec, self._tables, device)
        self._placed = True
        tables = to_device(self._spec, other._tables, device)  # a copy, folded into lane 0
        for key, value in tables.items():
            self._tables[key] += value
        if self.per_volume:
            self._volumes.append(fold(self._spec, tables))

    # ---------------------------------------------------------------- results
    def _merged(self, tables: dict, reduce: bool) -> tuple:
        """``(count, hits, conf_sum)`` as ``(1 + K, B)`` numpy, ``[brier_sum, nll_sum]``, n_logit."""
        tables = fold(self._spec, tables)
        ints = torch.cat([tables["count"], tables["n_logit"].view(1)])
        floats = torch.cat([tables["conf"], tables["sums"]])
        if reduce:
            ints, floats = all_reduce_copy(ints), all_reduce_copy(floats)
        ints, floats = ints.cpu().numpy(), floats.cpu().numpy()
        count, hits, conf, brier = merge(
            ints[:-1], floats[:-2], floats[-2:], self.num_classes, self.n_bins
        )
        return count, hits, conf, np.array([brier, floats[-1]]), int(ints[-1])

    def compute(self) -> dict:
        """All numbers as python floats (see the class docstring); NaN for an empty region."""
        out = table_metrics(*self._merged(self._tables, reduce=True))
        if not self.per_volume:
            return out
        volumes = all_gather_list([self._merged(v, reduce=False) for v in self._volumes])
        rows = [table_metrics(*v) for v in volumes]
        out["per_volume"] = {k: [r[k] for r in rows] for k in _VOLUME_KEYS}
        for k in _VOLUME_KEYS[:-1]:
            values = np.array(out["per_volume"][k], dtype=np.float64)
            values = values[~np.isnan(values)]
            out[f"{k}_mean_over_volumes"] = float(values.mean()) if values.size else math.nan
        out["n_volumes"] = len(rows)
        out["n_empty_volumes"] = sum(r["n_voxels"] == 0 for r in rows)
        return out

    def reliability(self, cls: int | None = None) -> dict:
        """Reliability-diagram data of the top-label row, or of class ``cls`` (pooled).

        Returns numpy ``edges`` (B+1), ``counts`` (B, int64), ``confidence`` and ``accuracy``
        (B, NaN where a bin is empty) and floats ``ece``, ``n``.
        """
        if cls is not None:
            cls = check_int(cls, "cls", 0)
            if cls >= self.num_classes:
                raise ValueError(f"cls must be in [0, {self.num_classes}), got {cls}")
        count, hits, conf, _, _ = self._merged(self._tables, reduce=True)
        row = 0 if cls is None else cls + 1
        return reliability_row(count[row], hits[row], conf[row])

    # ---------------------------------------------------------- serialisation
    def _config(self) -> dict:
        keys = ("num_classes", "n_bins", "region", "per_volume", "ignore_index")
        return {k: getattr(self, k) for k in keys}

    def _export(self, tables: dict) -> dict[str, torch.Tensor]:
        """Local tables as CPU tensors: ``count``/``conf_sum`` (4, K, B) in increasing bin order."""
        k, b = self.num_classes, self.n_bins
        tables = fold(self._spec, tables)
        count = code_bins(tables["count"].cpu().numpy(), k, b)
        conf = code_bins(tables["conf"].cpu().numpy(), k, b)
        return {
            "count": torch.from_numpy(count),
            "conf_sum": torch.from_numpy(conf),
            "sums": tables["sums"].cpu().clone(),
            "n_logit": tables["n_logit"].cpu().clone(),
        }

    def _import(self, state: dict, device) -> dict[str, torch.Tensor]:
        tables = new_tables(self._spec, device)
        k, b = self.num_classes, self.n_bins
        for key, name in (("count", "count"), ("conf", "conf_sum")):
            value = torch.as_tensor(state[name], dtype=tables[key].dtype)
            if tuple(value.shape) != (4, k, b):
                raise ValueError(f"state[{name!r}] has shape {tuple(value.shape)}, not {(4, k, b)}")
            # bin i sits at slot B - 1 - i (slots are reversed; slot B held exact zeros)
            slots = tables[key][: self._spec.size].view(4, k, b + 1)
            slots[:, :, :b] = value.flip(-1).to(device)
        tables["sums"][:] = torch.as_tensor(state["sums"], dtype=torch.float64).to(device)
        tables["n_logit"].fill_(int(state["n_logit"]))
        return tables

    def state_dict(self) -> dict:
        """Config, local tables and per-volume tables as CPU tensors.

        ``count`` (int64) and ``conf_sum`` (float64) have shape ``(4, K, B)``: code
        ``2 [k == pred] + [k == label]``, class, bin. ``sums`` = (sum of ``s_k^2``, NLL sum),
        ``n_logit`` = voxels that came with logits.
        """
        state = {"config": self._config(), **self._export(self._tables)}
        state["volumes"] = [self._export(v) for v in self._volumes]
        return state

    def load_state_dict(self, state: dict) -> None:
        """Replace the state by ``state`` (from ``state_dict`` or ``to_dict``); config must match."""
        if dict(state.get("config", {})) != self._config():
            raise ValueError(f"state config {state.get('config')} != meter config {self._config()}")
        device = self._tables["count"].device
        self._tables = self._import(state, device)
        self._volumes = [self._import(v, device) for v in state.get("volumes", [])]

    def to_dict(self) -> dict:
        """JSON-serialisable dict (lists); ``CalibrationMeter.from_dict`` rebuilds the meter."""
        state = self.state_dict()

        def plain(s):
            return {k: s[k].tolist() for k in _STATE_KEYS}

        volumes = [plain(v) for v in state["volumes"]]
        return {
            "type": "CalibrationMeter",
            "config": state["config"],
            **plain(state),
            "volumes": volumes,
        }

    @classmethod
    def from_dict(cls, data: dict, device=None) -> CalibrationMeter:
        """Rebuild a meter from ``to_dict()`` output."""
        if data.get("type") != "CalibrationMeter" or "config" not in data:
            raise ValueError("data is not a CalibrationMeter.to_dict() dict")
        meter = cls(**data["config"], device=device)
        meter.load_state_dict(data)
        return meter

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"CalibrationMeter({args})"


# ------------------------------------------------------------------ functional forms
def _meter_on(scores, target, n_bins: int, logits: bool, **kwargs) -> CalibrationMeter:
    """A meter fed one batch; ``kwargs`` (region, ignore_index, device) go to the meter."""
    k = _num_classes_of(scores)
    meter = CalibrationMeter(k, n_bins=n_bins, **kwargs)
    (meter.update if logits else meter.update_probs)(scores, target)
    return meter


def _num_classes_of(scores) -> int:
    shape = getattr(scores, "shape", ())
    if len(shape) < 2:
        raise ValueError(f"scores must have shape (N, K, *spatial), got shape {tuple(shape)}")
    return int(shape[1])


def expected_calibration_error(probs, target, n_bins: int = 15, **kwargs) -> float:
    """Top-label ECE ``sum_b n_b/N |acc_b - conf_b|`` of ``probs (N, K, *spatial)``."""
    return _meter_on(probs, target, n_bins, False, **kwargs).compute()["ece"]


def classwise_calibration_error(probs, target, n_bins: int = 15, **kwargs) -> float:
    """Classwise ECE (CECE): per-class ECE of ``s_k`` vs ``1[y = k]``, mean over ALL K classes."""
    return _meter_on(probs, target, n_bins, False, **kwargs).compute()["cece"]


def brier_score(probs, target, **kwargs) -> float:
    """Mean over voxels of ``sum_k (s_k - 1[y = k])^2``."""
    return _meter_on(probs, target, 1, False, **kwargs).compute()["brier"]


def negative_log_likelihood(logits, target, **kwargs) -> float:
    """Mean over voxels of ``-log_softmax(z)_y`` (computed in float64)."""
    return _meter_on(logits, target, 1, True, **kwargs).compute()["nll"]
