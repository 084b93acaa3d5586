"""The constrained-optimisation picture: penalties on the logit distance d and their slopes.

Along a slice where one class leads the other ``K-1`` classes by ``d`` (logits ``(d, 0, ..., 0)``,
so every non-winning distance equals ``d``), each calibration loss adds to CE a penalty of ``d``.
Weights are normalised as in the library's losses (``MarginLoss`` averages over the ``K``
classes), so the linear penalty is exactly the linear part of LS:

- linear (equality constraint ``d = 0``, ``MarginLoss(margin=0)`` minus CE):
  ``P = (lam/K) (K-1) d``, ``P' = lam (K-1)/K``. The slope never vanishes: every distance is
  pushed to 0, the uniform, non-informative output.
- LS, exactly: ``L_LS = (1-a) L_CE + (a/K) sum_k d_k + a (LSE(z) - max z)``; on the slice
  ``P = a (K-1)/K d + a log(1 + (K-1) e^{-d})`` (the linear penalty plus a term bounded in
  ``[0, a log K]`` that vanishes as ``d`` grows),
  ``P' = a (K-1) (1/K - e^{-d} / (1 + (K-1) e^{-d}))``.
- ECP: ``-b H(s)`` with ``H = sum_k s_k d_k + log sum_j e^{-d_j}``, maximal at ``d = 0``; shown
  shifted by the constant ``b log K`` so that it is 0 at ``d = 0``:
  ``P = b (log K - H(d))``, ``P' = b (K-1) d e^{-d} / (1 + (K-1) e^{-d})^2`` (a force that
  dies as ``d e^{-d}``: far from 0 it hardly acts).
- margin hinge (MbLS): ``P = (lam/K) (K-1) relu(d - m)``, ``P' = lam (K-1)/K 1[d > m]``:
  distances inside the margin feel no force. ``m = 0`` gives back the linear penalty.

The same weight ``alpha`` is used for ``lam``, ``a`` and ``b``; ``num_classes=4`` (default) is
the course's task (background, CSF, grey and white matter).
"""

from __future__ import annotations

import numpy as np

from mls_tutorial.plots._common import axes_grid, root_figure


def penalty_functions(margin: float = 10.0, alpha: float = 0.1, num_classes: int = 4) -> dict:
    """``{name: (penalty(d), derivative(d))}`` as numpy functions of the distance ``d >= 0``."""
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
    k, a = int(num_classes), float(alpha)

    def z_partition(d):  # 1 + (K-1) e^{-d} = sum_j exp(-d_j)
        return 1.0 + (k - 1) * np.exp(-d)

    def entropy(d):
        return (k - 1) * np.exp(-d) * d / z_partition(d) + np.log(z_partition(d))

    return {
        "linear (equality)": (
            lambda d: a * (k - 1) / k * np.asarray(d, dtype=float),
            lambda d: np.full_like(np.asarray(d, dtype=float), a * (k - 1) / k),
        ),
        "LS": (
            lambda d: a * (k - 1) / k * d + a * np.log(z_partition(d)),
            lambda d: a * (k - 1) * (1.0 / k - np.exp(-d) / z_partition(d)),
        ),
        "ECP": (
            lambda d: a * (np.log(k) - entropy(d)),
            lambda d: a * (k - 1) * d * np.exp(-d) / z_partition(d) ** 2,
        ),
        f"margin (m={margin:g})": (
            lambda d: a * (k - 1) / k * np.maximum(np.asarray(d, dtype=float) - margin, 0.0),
            lambda d: a * (k - 1) / k * (np.asarray(d, dtype=float) > margin).astype(float),
        ),
    }


def penalty_curves(
    margin: float = 10.0,
    alpha: float = 0.1,
    ax=None,
    num_classes: int = 4,
    d_max: float | None = None,
):
    """Penalty (left) and its derivative (right) against ``d`` for linear, LS, ECP and the margin.

    See the module docstring for the formulas. ``ax``: None, one Axes (split) or two. Returns
    the figure; each curve's label is its name.
    """
    funcs = penalty_functions(margin, alpha, num_classes)
    d_max = float(d_max) if d_max is not None else max(2.0 * margin, 10.0)
    d = np.linspace(0.0, d_max, 801)
    ax_p, ax_g = axes_grid(ax, 2, direction="row", figsize=(10.0, 3.8))
    for i, (name, (f, df)) in enumerate(funcs.items()):
        ax_p.plot(d, f(d), color=f"C{i}", lw=2, label=name)
        ax_g.plot(d, df(d), color=f"C{i}", lw=2, label=name, drawstyle="default")
    for axis in (ax_p, ax_g):
        axis.axvline(margin, color="k", ls=":", lw=1)
        axis.set_xlabel("logit distance $d$")
        axis.set_xlim(0, d_max)
    ax_p.set_ylabel("penalty added to CE")
    ax_g.set_ylabel("derivative $\\partial P / \\partial d$")
    ax_p.set_title(f"penalties (K={num_classes}, weight {alpha:g})")
    ax_g.set_title("the force pushing $d$ towards 0")
    ax_p.legend(fontsize="small")
    return root_figure(ax_p)
