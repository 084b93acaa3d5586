"""Training curves from a run's ``history`` (``history.json``): loss and validation metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes

from mls_tutorial.plots._common import axes_grid, root_figure
from mls_tutorial.plots.multipliers import (
    _draw_lambdas,
    _multiplier_names,
    multiplier_history_or_none,
)

#: the validation series drawn (one scale, 0-1); the NLL goes next to the training loss
VAL_PANEL = ("val_fg_dice", "val_fg_ece", "val_fg_gap")
NLL_KEY = "val_fg_nll"
TRAIN_X_KEYS = ("iteration", "iterations", "step", "steps", "iter")
VAL_X_KEYS = ("val_iteration", "val_iterations", "val_step", "val_steps", "val_iter")


def _as_columns(history) -> dict[str, list]:
    """A dict of lists; a list of per-step dicts (records) is turned into columns."""
    if isinstance(history, Mapping):
        return {str(k): v for k, v in history.items()}
    if isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        keys = dict.fromkeys(k for r in history for k in r)
        return {str(k): [r.get(k) for r in history] for k in keys}
    raise ValueError(f"history must be a dict of lists or a list of dicts, got {type(history)}")


def _numeric(values) -> np.ndarray | None:
    if not isinstance(values, Sequence | np.ndarray) or isinstance(values, str):
        return None
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def split_history(history) -> tuple[np.ndarray, dict, np.ndarray, dict]:
    """``(train_x, {loss key: y}, val_x, {val key: y})`` from a history.

    Train series: keys containing ``loss`` (not ``val_``); x is the first of
    ``iteration/step/iter`` present, else the record index. Validation series: keys starting with
    ``val_``; x is ``val_iteration`` (or ``val_step``) when present, else the evaluation index.
    """
    cols = {k: _numeric(v) for k, v in _as_columns(history).items()}
    cols = {k: v for k, v in cols.items() if v is not None and v.ndim == 1 and v.size}
    train_x_key = next((k for k in TRAIN_X_KEYS if k in cols), None)
    val_x_key = next((k for k in VAL_X_KEYS if k in cols), None)
    train = {k: v for k, v in cols.items() if "loss" in k and not k.startswith("val_")}
    val = {k: v for k, v in cols.items() if k.startswith("val_") and k != val_x_key}
    if not train and not val:
        raise ValueError(f"history has no loss or val_ series (keys: {sorted(cols)})")
    n_train = max((v.size for v in train.values()), default=0)
    train_x = cols[train_x_key] if train_x_key else np.arange(n_train, dtype=float)
    n_val = max((v.size for v in val.values()), default=0)
    val_x = cols[val_x_key] if val_x_key else np.arange(n_val, dtype=float)
    train = {k: v for k, v in train.items() if v.size == train_x.size}
    val = {k: v for k, v in val.items() if v.size == val_x.size}
    return train_x, train, val_x, val


def training_curves(history, ax=None, class_names: Sequence[str] | None = None):
    """Loss (left), validation metrics and, for an adaptive loss, its multipliers; returns the figure.

    The left panel draws the training loss with the validation foreground NLL (``val_fg_nll``,
    same unit: where they part, training memorises); the middle one the validation DSC, ECE and
    conf - acc (``VAL_PANEL``, one 0-1 scale; every other ``val_`` series but the NLL when the
    history has none of them).

    ``history``: a run's history, a dict of lists (or a list of per-step dicts); scalars are
    ignored except ``best_iteration`` (a dotted line at the iteration whose weights were kept),
    labelled from ``select_metric``: ``"kept: last weights (it. N)"`` for ``"last"``,
    ``"kept: best fg_dice (it. N)"`` for ``"val_fg_dice"``. The validation legend sits outside
    the axes, right of the data. When the history holds an adaptive loss's ``loss_state`` (CALS), a third
    panel draws ``lambda_k`` per validation (``class_names`` name them). ``ax``: None, one Axes
    (split), or two (no multiplier panel) or three Axes.
    """
    train_x, train, val_x, val = split_history(history)
    h = multiplier_history_or_none(history)
    three = h is not None and (ax is None or isinstance(ax, Axes) or len(ax) == 3)
    axes = axes_grid(ax, 3 if three else 2, direction="row", figsize=(15.0 if three else 10.0, 3.6))
    ax_loss, ax_val = axes[:2]
    if three:
        _draw_lambdas(axes[2], h, _multiplier_names(h, class_names))
    for i, (key, y) in enumerate(train.items()):
        ax_loss.plot(train_x, y, color=f"C{i}", lw=1.2, label=key)
    if NLL_KEY in val:  # the validation NLL next to the training loss: where they diverge
        ax_loss.plot(
            val_x, val[NLL_KEY], "o-", color="k", ms=3, lw=1.2, label="validation NLL (fg)"
        )
    shown = {k: v for k, v in val.items() if k in VAL_PANEL} or {
        k: v for k, v in val.items() if k != NLL_KEY
    }
    for i, (key, y) in enumerate(shown.items()):
        ax_val.plot(val_x, y, "o-", color=f"C{i}", ms=3, lw=1.2, label=key.removeprefix("val_"))
    best = history.get("best_iteration") if isinstance(history, Mapping) else None
    if best is not None and val:
        label = kept_label(history.get("select_metric"), best)
        ax_val.axvline(float(best), color="0.5", ls=":", lw=1, label=label, gid="kept")
    ax_loss.set(xlabel="iteration", ylabel="loss (nats)", title="training loss, validation NLL")
    ax_val.set(xlabel="iteration", ylabel="DSC, ECE, conf - acc (fg)", title="validation")
    if "val_fg_gap" in shown:
        ax_val.axhline(0.0, color="0.8", lw=0.8)
    for axis, series in ((ax_loss, train), (ax_val, shown)):
        if series and axis is ax_val:  # many series: the legend goes right of the axes
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        elif series:
            axis.legend(fontsize="small")
        else:
            axis.text(
                0.5, 0.5, "no data in history", ha="center", va="center", transform=axis.transAxes
            )
    return root_figure(ax_loss)


def kept_label(select_metric, iteration) -> str:
    """Legend text of the kept-weights marker: never says "best" for the last weights."""
    if select_metric == "last":
        return f"kept: last weights (it. {iteration})"
    if select_metric:
        return f"kept: best {str(select_metric).removeprefix('val_')} (it. {iteration})"
    return f"kept weights (it. {iteration})"
