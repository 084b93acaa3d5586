"""The base class of every loss: checking, autocast off, and the ``forward(logits, target)`` contract."""

from __future__ import annotations

from torch import Tensor, nn

from ._inputs import Pixels, no_autocast, prepare

__all__ = ["PixelLoss"]


class PixelLoss(nn.Module):
    """``forward(logits (N, K, *spatial), target (N, [1,] *spatial)) -> mean over counted pixels``.

    Args:
        ignore_index: label value whose pixels are left out of the loss (None: no such value).
        validate: check that logits are finite and labels are in ``[0, K)`` (one fused reduction
            and one device sync per call). Set False in hot loops once the data are trusted.
    """

    def __init__(self, ignore_index: int | None = -100, validate: bool = True) -> None:
        super().__init__()
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.validate = bool(validate)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with no_autocast(logits):
            return self.loss(prepare(logits, target, self.ignore_index, self.validate))

    def loss(self, px: Pixels) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        names = [n for n in self._hparams() if hasattr(self, n)]
        return ", ".join(f"{n}={getattr(self, n)!r}" for n in names)

    def _hparams(self) -> tuple[str, ...]:
        return ("ignore_index",)
