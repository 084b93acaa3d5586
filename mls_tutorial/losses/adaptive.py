"""Losses whose state adapts during training, and CALS (Liu et al., CVPR 2023, ``by-liu/CALS``).

**The protocol.** A loss that owns state updated from validation data implements
:class:`AdaptiveLoss`; ``fit`` then, at every validation pass, calls ``begin_validation()``,
``observe(logits, target)`` on each validation volume (no gradient), and
``end_validation(all_reduce)``, where ``all_reduce`` sums a tensor in place across processes (the
identity in one process). ``adaptive_state_dict()`` / ``load_adaptive_state_dict()`` carry that
state through checkpoints (tensors and plain values only); ``history()`` returns JSON-able values
recorded once per validation.

**CALS** (class-adaptive label smoothing) solves the margin constraint ``d_k <= m`` of MbLS with
an augmented Lagrangian whose multipliers adapt per class. Per pixel, with logit distances
``d_k = max_j z_j - z_k``, the constraints are ``h_k = (d_k - m) / m`` (``normalize=True``; else
``d_k - m``), and

    L = CE + mean over counted pixels and classes of P(h_k; lambda_k, rho_k)

with the PHR penalty ``P = ((lambda + rho h)^2 - lambda^2) / (2 rho)`` where ``lambda + rho h >= 0``
and ``-lambda^2 / (2 rho)`` elsewhere (``p2`` and ``p3``: see :data:`PENALTIES`). After each
validation pass (official ``AugLagrangianClass``, ``calibrate/lagrangian/``):

- ``lambda_k <- clamp(mean over validation pixels of clamp(P'(h_k), lambda_min, lambda_max))``;
- ``rho_k <- clamp(rho_gamma * rho_k, rho_min, rho_max)`` at every ``rho_step``-th validation when
  the mean validation constraint ``hbar_k`` is above ``rho_tau * max(hbar_k_previous, 0)`` (the
  constraint did not improve enough), else unchanged. ``rho`` is per class, as in the official
  code's latest version (its class-wise ``update_rho``).

Defaults are the official ``configs/lag/aug_lagrangian_class.yaml``: margin 20, PHR, lambda in
[1e-6, 1e6] starting at 1e-6, rho from 1 to at most 10, x1.2 every 10 validations, tau 0.9.
Choices of ours: the penalty is a mean over classes (the official ``p.mean()``; the paper's sum
over classes is ``K`` times it); ignored pixels are left out of the penalty and of the
multiplier statistics (the official code has no ignore label there); the validation means pool
every pixel of every process (the official code averages per-process means); a validation pass
that saw no pixel changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._base import PixelLoss
from ._inputs import Pixels, check_logits, check_nonnegative, no_autocast, prepare

__all__ = [
    "PENALTIES",
    "AdaptiveLoss",
    "CALSLoss",
    "is_adaptive",
    "penalty_p2",
    "penalty_p3",
    "penalty_phr",
]


@runtime_checkable
class AdaptiveLoss(Protocol):
    """A loss with state that validation updates (see the module docstring)."""

    def begin_validation(self) -> None: ...

    def observe(self, logits: Tensor, target: Tensor) -> None: ...

    def end_validation(self, all_reduce: Callable[[Tensor], Tensor] | None = None) -> None: ...

    def adaptive_state_dict(self) -> dict[str, Any]: ...

    def load_adaptive_state_dict(self, state: dict[str, Any]) -> None: ...

    def history(self) -> dict[str, Any]: ...


def is_adaptive(loss: Any) -> bool:
    """True when ``loss`` implements :class:`AdaptiveLoss`."""
    return isinstance(loss, AdaptiveLoss)


# ----------------------------------------------------------------------------------- penalties
def penalty_phr(h: Tensor, lam: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """PHR: ``P = ((lam + rho h)^2 - lam^2) / (2 rho)`` if ``lam + rho h >= 0`` else
    ``-lam^2 / (2 rho)``; ``P' = max(lam + rho h, 0)``. Returns ``(P, P')``."""
    x = lam + rho * h
    inf = -(lam**2) / (2 * rho)
    return torch.where(x >= 0, (x**2 - lam**2) / (2 * rho), inf), x.clamp_min(0)


def penalty_p3(h: Tensor, lam: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """P3: ``lam h + lam rho h^2`` for ``h >= 0``, ``lam h / (1 - rho h)`` for ``h < 0``."""
    neg = 1 - rho * h.clamp_max(0)
    sup = h >= 0
    value = torch.where(sup, lam * h + lam * rho * h**2, lam * h / neg)
    return value, torch.where(sup, lam + 2 * lam * rho * h, lam / neg**2)


def penalty_p2(h: Tensor, lam: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """P2: ``lam h + lam rho h^2 + rho^2 h^3 / 6`` for ``h >= 0``, ``lam h / (1 - rho h)`` below."""
    neg = 1 - rho * h.clamp_max(0)
    sup = h >= 0
    value = torch.where(sup, lam * h + lam * rho * h**2 + rho**2 * h**3 / 6, lam * h / neg)
    grad = torch.where(sup, lam + 2 * lam * rho * h + rho**2 * h**2 / 2, lam / neg**2)
    return value, grad


PENALTIES: dict[str, Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "phr": penalty_phr,
    "p2": penalty_p2,
    "p3": penalty_p3,
}


# ------------------------------------------------------------------------------ the loss value
class _PenalisedCrossEntropy(torch.autograd.Function):
    """CE + (1/K) sum_k P(h_k), summed over counted pixels and divided by their count.

    ``h_k = (d_k - m) / s`` with ``d_k = max log p - log p_k`` (= max z - z_k). With ``c`` =
    grad / count (0 on ignored pixels) and ``D_k = P'(h_k) / s``:

        dL/dz_k = c (p_k - 1[k = y]) + (c / K) (-D_k + 1[k = winner] sum_j D_j)

    (ties for the winner share its part evenly, as autograd of ``amax`` does).
    """

    @staticmethod
    def forward(ctx, logits, index, valid, count, weight, lam, rho, margin, scale, penalty):
        logp = torch.log_softmax(logits, dim=1)
        k = logp.shape[1]
        top = logp.amax(dim=1, keepdim=True)
        d = torch.sub(top, logp)
        if penalty == "phr":  # P = relu(x)^2 / (2 rho) - lam^2 / (2 rho), x = lam + rho h: 3 passes
            slope = torch.addcmul(lam - rho * (margin / scale), d, rho / scale).clamp_min_(0.0)
            if valid is not None:
                slope = slope.mul_(valid)
            dims = [0] + list(range(2, slope.dim()))
            per_class = torch.linalg.vector_norm(slope, dim=dims).square()  # sum of relu(x)^2
            half_inv_rho = 0.5 / rho.reshape(-1)
            value_sum = (per_class * half_inv_rho).sum() - count * (
                lam.reshape(-1).square() * half_inv_rho
            ).sum()
        else:
            value, slope = PENALTIES[penalty](d.sub_(margin).div_(scale), lam, rho)
            if valid is not None:
                value, slope = torch.where(valid, value, 0.0), torch.where(valid, slope, 0.0)
            value_sum = value.sum()
        nll = logp.gather(1, index)
        ce_sum = -(nll.sum() if valid is None else torch.where(valid, nll, 0.0).sum())
        if ctx.needs_input_grad[0]:
            winner = torch.eq(logp, top, out=torch.empty_like(logp))
            share = slope.sum(dim=1, keepdim=True) / winner.sum(dim=1, keepdim=True)
            slope = slope.addcmul_(winner, share, value=-1.0)  # D - (sum_j D_j / ties) 1[winner]
            ctx.save_for_backward(logp, slope, index, weight)
            ctx.count, ctx.factor = count, 1.0 / (k * scale)
        return (ce_sum + value_sum / k) / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logp, slope, index, weight = ctx.saved_tensors
        c = grad_out / ctx.count if weight is None else weight * grad_out
        grad = torch.exp(logp).mul_(c)
        grad.addcmul_(slope, c, value=-ctx.factor)
        grad.scatter_add_(1, index, (-c).expand(index.shape))
        return (grad,) + (None,) * 9


def _class_vector(name: str, value: Any, k: int | None, low: float, high: float) -> Tensor:
    """``value`` (a number or K numbers) as a float64 CPU tensor of K values in [low, high]."""
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().clone()
    if t.dim() == 0 and k is not None:
        t = t.expand(k).clone()
    if t.dim() != 1 or (k is not None and t.numel() != k):
        raise ValueError(f"{name} must be a number or {k} numbers (one per class), got {value!r}")
    if not bool(torch.isfinite(t).all()) or bool((t < low).any()) or bool((t > high).any()):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {t.tolist()}")
    return t


class CALSLoss(PixelLoss):
    """CALS: ``CE + mean_{pixels, classes} P((d_k - m) / m; lambda_k, rho_k)``, multipliers per class.

    Also an :class:`AdaptiveLoss`: ``fit`` updates ``lambdas`` and ``rho`` after each validation
    pass (module docstring). Before the first update ``lambda_k = lambda_min`` and
    ``rho_k = rho_min``.

    Args:
        num_classes: K; None: taken from the logits at the first call (the multipliers are
            created then).
        margin: ``m > 0`` on the logit distances (official default 20).
        penalty: ``"phr"`` (default, official config), ``"p2"`` or ``"p3"``.
        normalize: divide the constraint by ``m`` (official default True).
        lambda_min, lambda_max: range of the multipliers (they start at ``lambda_min``).
        rho_min, rho_max: range of the penalty parameters (they start at ``rho_min``).
        rho_step: consider growing rho every ``rho_step`` validations (0: never).
        rho_gamma: growth factor of rho; rho_tau: required improvement ratio of the constraint.
        ignore_index, validate: see :class:`~mls_tutorial.losses.PixelLoss`.

    Public state: ``lambdas`` and ``rho`` (float64 tensors of K, settable with a number or K
    numbers), ``validations`` (number of updates so far).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        margin: float = 20.0,
        penalty: str = "phr",
        normalize: bool = True,
        lambda_min: float = 1e-6,
        lambda_max: float = 1e6,
        rho_min: float = 1.0,
        rho_max: float = 10.0,
        rho_step: int = 10,
        rho_gamma: float = 1.2,
        rho_tau: float = 0.9,
        ignore_index: int | None = -100,
        validate: bool = True,
    ) -> None:
        super().__init__(ignore_index, validate)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {sorted(PENALTIES)}, got {penalty!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        check_nonnegative(margin=margin, lambda_min=lambda_min, lambda_max=lambda_max)
        check_nonnegative(rho_min=rho_min, rho_max=rho_max, rho_gamma=rho_gamma, rho_tau=rho_tau)
        if normalize and margin == 0:
            raise ValueError("margin must be > 0 when normalize=True (h = (d - m) / m)")
        if not 0 < lambda_min <= lambda_max:
            raise ValueError(f"need 0 < lambda_min <= lambda_max, got {lambda_min}, {lambda_max}")
        if not 0 < rho_min <= rho_max:
            raise ValueError(f"need 0 < rho_min <= rho_max, got {rho_min}, {rho_max}")
        if isinstance(rho_step, bool) or not isinstance(rho_step, int) or rho_step < 0:
            raise ValueError(f"rho_step must be an int >= 0, got {rho_step!r}")
        self.num_classes, self.margin, self.penalty = num_classes, float(margin), penalty
        self.normalize = normalize
        self.lambda_min, self.lambda_max = float(lambda_min), float(lambda_max)
        self.rho_min, self.rho_max, self.rho_step = float(rho_min), float(rho_max), rho_step
        self.rho_gamma, self.rho_tau = float(rho_gamma), float(rho_tau)
        self._lambdas: Tensor | None = None
        self._rho: Tensor | None = None
        self.prev_constraint: Tensor | None = None  # mean h_k of the previous validation
        self.last_constraint: Tensor | None = None
        self.validations = 0
        self._sums: Tensor | None = None  # per validation pass: [sum P', sum h] (2, K), count
        self._count = 0
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        if num_classes is not None:
            self._init_state(num_classes)

    def _hparams(self):
        return ("num_classes", "margin", "penalty", "ignore_index")

    # ------------------------------------------------------------------------------ state
    def _init_state(self, k: int) -> None:
        self.num_classes = k
        self._lambdas = torch.full((k,), self.lambda_min, dtype=torch.float64)
        self._rho = torch.full((k,), self.rho_min, dtype=torch.float64)
        self._cache.clear()

    def _ensure_state(self, k: int) -> None:
        if self._lambdas is None:
            self._init_state(k)
        elif k != self.num_classes:
            raise ValueError(
                f"logits have K = {k} classes but this CALSLoss has num_classes={self.num_classes}"
            )

    @property
    def lambdas(self) -> Tensor | None:
        """The multipliers ``lambda_k`` (float64, K), or None before K is known."""
        return self._lambdas

    @lambdas.setter
    def lambdas(self, value) -> None:
        t = _class_vector("lambdas", value, self.num_classes, 0.0, math.inf)
        if self._lambdas is None:
            self._init_state(t.numel())
        self._lambdas = t
        self._cache.clear()

    @property
    def rho(self) -> Tensor | None:
        """The penalty parameters ``rho_k`` (float64, K), or None before K is known."""
        return self._rho

    @rho.setter
    def rho(self, value) -> None:
        t = _class_vector("rho", value, self.num_classes, 0.0, math.inf)
        if bool((t <= 0).any()):
            raise ValueError(f"rho must be > 0, got {t.tolist()}")
        if self._rho is None:
            self._init_state(t.numel())
        self._rho = t
        self._cache.clear()

    def _params(self, px_like: Tensor) -> tuple[Tensor, Tensor]:
        """``lambda`` and ``rho`` shaped ``(1, K, 1, ...)`` in the dtype and device of the logits."""
        key = (px_like.dtype, px_like.device, px_like.dim())
        if key not in self._cache:
            shape = (1, -1) + (1,) * (px_like.dim() - 2)
            self._cache[key] = tuple(
                t.to(px_like.device, px_like.dtype).view(shape) for t in (self._lambdas, self._rho)
            )
        return self._cache[key]

    # ------------------------------------------------------------------------------- loss
    def loss(self, px: Pixels) -> Tensor:
        self._ensure_state(px.num_classes)
        lam, rho = self._params(px.logits)
        scale = self.margin if self.normalize else 1.0
        return _PenalisedCrossEntropy.apply(
            px.logits,
            px.index,
            px.valid,
            px.count,
            px.weight(),
            lam,
            rho,
            self.margin,
            scale,
            self.penalty,
        )

    def constraints(self, logits: Tensor) -> Tensor:
        """``h_k = (d_k - m) / m`` (or ``d_k - m``), same shape as ``logits``."""
        logits = check_logits(logits)
        with no_autocast(logits):
            h = logits.amax(dim=1, keepdim=True) - logits - self.margin
            return h / self.margin if self.normalize else h

    # ------------------------------------------------------------------- adaptive protocol
    def begin_validation(self) -> None:
        """Start collecting validation statistics (clears any earlier partial pass)."""
        self._sums, self._count = None, 0

    @torch.no_grad()
    def observe(self, logits: Tensor, target: Tensor) -> None:
        """Add ``clamp(P'(h_k))`` and ``h_k`` of every counted pixel of this batch, per class."""
        px = prepare(logits, target, self.ignore_index, self.validate)
        self._ensure_state(px.num_classes)
        with no_autocast(px.logits):
            z = px.logits
            h = self.constraints(z)
            lam, rho = self._params(z)
            _, slope = PENALTIES[self.penalty](h, lam, rho)
            slope = slope.clamp(self.lambda_min, self.lambda_max)
            if px.valid is not None:
                slope, h = torch.where(px.valid, slope, 0.0), torch.where(px.valid, h, 0.0)
            acc = torch.float32 if z.device.type == "mps" else torch.float64  # MPS: no float64
            dims = [0] + list(range(2, z.dim()))
            sums = torch.stack([t.sum(dim=dims, dtype=acc) for t in (slope, h)])  # (2, K)
        if self._sums is None:
            self._sums = torch.zeros_like(sums)
        self._sums += sums
        self._count += int(px.count)

    def end_validation(self, all_reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        """Update ``lambdas`` (and, every ``rho_step`` validations, ``rho``) from the pass.

        ``all_reduce`` sums a tensor in place across processes (None: one process).
        """
        if self._lambdas is None:
            raise ValueError("end_validation: the number of classes is unknown (no logits seen)")
        k = self.num_classes
        sums = self._sums if self._sums is not None else torch.zeros(2, k, dtype=torch.float64)
        packed = torch.cat([sums.flatten(), sums.new_tensor([float(self._count)])])
        if all_reduce is not None:
            packed = all_reduce(packed)
        packed = packed.cpu()
        self._sums, self._count = None, 0
        count = float(packed[-1])
        if count == 0:  # nothing observed anywhere: nothing to update
            return
        mean_slope, mean_h = (packed[:-1].view(2, k) / count).unbind(0)
        self._lambdas = mean_slope.clamp(self.lambda_min, self.lambda_max)
        self.validations += 1
        self.last_constraint = mean_h
        if self.rho_step:
            if self.validations % self.rho_step == 0 and self.prev_constraint is not None:
                grow = mean_h > self.prev_constraint.clamp_min(0) * self.rho_tau
                rho = torch.where(grow, self._rho * self.rho_gamma, self._rho)
                self._rho = rho.clamp(self.rho_min, self.rho_max)
            self.prev_constraint = mean_h
        self._cache.clear()

    def adaptive_state_dict(self) -> dict[str, Any]:
        """Multipliers, rho, constraint memory and update count (tensors and ints only)."""

        def copy(t):
            return None if t is None else t.detach().cpu().clone()

        return {
            "num_classes": self.num_classes,
            "lambdas": copy(self._lambdas),
            "rho": copy(self._rho),
            "prev_constraint": copy(self.prev_constraint),
            "last_constraint": copy(self.last_constraint),
            "validations": self.validations,
        }

    def load_adaptive_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`adaptive_state_dict` returned."""
        missing = {"num_classes", "lambdas", "rho", "validations"} - set(state)
        if missing:
            raise ValueError(f"CALS state lacks {sorted(missing)}")
        k = state["num_classes"]
        if self.num_classes is not None and k is not None and k != self.num_classes:
            raise ValueError(f"CALS state is for {k} classes, this loss has {self.num_classes}")
        if k is None:
            return
        self._init_state(k)
        self.lambdas, self.rho = state["lambdas"], state["rho"]
        for name in ("prev_constraint", "last_constraint"):
            t = state.get(name)
            setattr(self, name, None if t is None else t.detach().double().cpu().clone())
        self.validations = int(state["validations"])

    def history(self) -> dict[str, Any]:
        """``lambda``, ``rho`` and the last mean validation ``constraint`` per class (lists)."""

        def listed(t):
            return None if t is None else [float(v) for v in t]

        return {
            "lambda": listed(self._lambdas),
            "rho": listed(self._rho),
            "constraint": listed(self.last_constraint),
        }

    def penalty_value(self, h: Tensor | Sequence[float]) -> Tensor:
        """``P(h_k; lambda_k, rho_k)`` for constraints ``h`` of shape ``(..., K)`` (for plots)."""
        h = torch.as_tensor(h, dtype=torch.float64)
        return PENALTIES[self.penalty](h, self._lambdas, self._rho)[0]
