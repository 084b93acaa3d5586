"""Lagrange multipliers: the augmented-Lagrangian penalty and the multipliers of a training run.

CALS (``losses.CALSLoss``) replaces MbLS's fixed weight ``alpha`` on ``relu(d_k - m)`` by one
multiplier ``lambda_k`` per class, updated after every validation pass, inside the PHR penalty

    P(h; lambda, rho) = ((lambda + rho h)^2 - lambda^2) / (2 rho)  if lambda + rho h >= 0,
                        -lambda^2 / (2 rho)                          otherwise,

of the constraint ``h = (d - m) / m <= 0``. Its slope ``P'(h) = max(0, lambda + rho h)`` is what
the next ``lambda`` becomes (averaged over validation pixels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mls_tutorial.plots._common import axes_grid, class_names_for, root_figure

STATE_KEYS = ("lambda", "rho", "constraint")


def multiplier_history(history) -> dict[str, np.ndarray]:
    """``{"iteration": (V,), "lambda": (V, K), "rho": (V, K), "constraint": (V, K)}``.

    From a run's ``history`` whose ``loss_state`` holds one ``{"lambda", "rho", "constraint"}``
    dict per validation (what ``fit`` records for an adaptive loss such as CALS). Raises
    ``ValueError`` naming what is missing when the history has no multipliers.
    """
    if not isinstance(history, Mapping):
        raise ValueError(f"history must be a dict (a run's history), got {type(history)}")
    states = history.get("loss_state")
    if not states or not isinstance(states, Sequence):
        raise ValueError("history has no 'loss_state': the run's loss had no multipliers")
    if not all(isinstance(s, Mapping) and "lambda" in s for s in states):
        raise ValueError("history['loss_state'] entries must be dicts with a 'lambda' list")
    out = {}
    for key in STATE_KEYS:
        if all(s.get(key) is not None for s in states):
            out[key] = np.array([s[key] for s in states], dtype=np.float64)
    x = history.get("val_iteration")
    n = len(states)
    out["iteration"] = (
        np.asarray(x, dtype=np.float64)[:n]
        if x is not None and len(x) >= n
        else np.arange(1.0, n + 1)
    )
    if out["lambda"].ndim != 2:
        raise ValueError(f"loss_state 'lambda' must be K numbers per validation, got {states[0]}")
    return out


def multiplier_history_or_none(history) -> dict[str, np.ndarray] | None:
    """:func:`multiplier_history`, or None when ``history`` holds no multipliers."""
    try:
        return multiplier_history(history)
    except ValueError:
        return None


def has_multipliers(history) -> bool:
    """True when ``history`` holds per-validation multipliers (``loss_state`` with ``lambda``)."""
    return multiplier_history_or_none(history) is not None


def multiplier_curves(history, class_names: Sequence[str] | None = None, ax=None):
    """``lambda_k`` (log scale, rho in the legend) and the mean constraint ``h_k`` per validation.

    ``history``: a run's history (see :func:`multiplier_history`). ``ax``: None, one Axes
    (split in two) or two Axes. Returns the figure.
    """
    h = multiplier_history(history)
    names = _multiplier_names(h, class_names)
    ax_lam, ax_h = axes_grid(ax, 2, direction="row", figsize=(10.0, 3.6))
    _draw_lambdas(ax_lam, h, names)
    if "constraint" in h:
        for i, name in enumerate(names):
            ax_h.plot(h["iteration"], h["constraint"][:, i], "o-", ms=3, color=f"C{i}", label=name)
        ax_h.axhline(0.0, color="k", lw=1, ls="--", label="h = 0 (d = m on average)")
        ax_h.legend(fontsize="small")
    else:
        ax_h.text(0.5, 0.5, "no constraint history", ha="center", transform=ax_h.transAxes)
    ax_h.set(xlabel="iteration", ylabel="mean h_k = mean (d_k - m) / m", title="constraint")
    return root_figure(ax_lam)


def _multiplier_names(h: dict, class_names) -> list[str]:
    k = h["lambda"].shape[1]
    return class_names_for(class_names, k, f"{k} multipliers")


def _draw_lambdas(axis, h: dict, names: Sequence[str]) -> None:
    for i, name in enumerate(names):
        rho = h["rho"][-1, i] if "rho" in h else np.nan
        label = f"{name} (rho {rho:.3g})" if np.isfinite(rho) else name
        axis.plot(h["iteration"], h["lambda"][:, i], "o-", ms=3, color=f"C{i}", label=label)
    axis.set_yscale("log")
    axis.set(xlabel="iteration", ylabel="lambda_k", title="multipliers (after each validation)")
    axis.legend(fontsize="small")


def augmented_lagrangian_curves(
    lambdas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    rho: float = 1.0,
    alpha: float = 1.0,
    h_range: tuple[float, float] = (-2.0, 2.0),
    ax=None,
):
    """The PHR penalty ``P(h; lambda, rho)`` for several ``lambda`` next to MbLS's hinge.

    Left: the penalties against ``h = (d - m) / m``, with the hinge ``alpha relu(h)`` dashed.
    Right: their slopes ``P'(h) = max(0, lambda + rho h)`` (the force on ``d``) and the hinge's
    ``alpha 1[h > 0]``. Returns the figure.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    lam = np.asarray(lambdas, dtype=np.float64)
    if lam.ndim != 1 or not lam.size or (lam < 0).any() or not np.isfinite(lam).all():
        raise ValueError(f"lambdas must be non-negative numbers, got {lambdas!r}")
    h = np.linspace(*h_range, 401)
    ax_p, ax_g = axes_grid(ax, 2, direction="row", figsize=(10.0, 3.6))
    for i, lm in enumerate(lam):
        x = lm + rho * h
        value = np.where(x >= 0, (x**2 - lm**2) / (2 * rho), -(lm**2) / (2 * rho))
        ax_p.plot(h, value, color=f"C{i}", label=f"PHR, lambda = {lm:g}")
        ax_g.plot(h, np.maximum(x, 0.0), color=f"C{i}", label=f"lambda = {lm:g}")
    ax_p.plot(h, alpha * np.maximum(h, 0), "k--", label=f"MbLS hinge, alpha = {alpha:g}")
    ax_g.plot(h, alpha * (h > 0), "k--", label=f"MbLS, alpha = {alpha:g}")
    for axis in (ax_p, ax_g):
        axis.axvline(0.0, color="0.6", lw=0.8)
        axis.legend(fontsize="small")
    ax_p.set(xlabel="h = (d - m) / m", ylabel="penalty", title=f"penalty (rho = {rho:g})")
    ax_g.set(xlabel="h = (d - m) / m", ylabel="slope dP/dh", title="force pulling d down")
    return root_figure(ax_p)
