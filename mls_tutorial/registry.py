"""The losses the package knows: one table that every other module reads (imports no torch).

Each ``LossSpec`` holds a loss's ``name`` (``build_loss(name)``, a config's ``loss``), its
``label`` (tables, legends) and its **knobs**: the hyperparameters a sweep varies, a label shows
when they differ from the default, and the CLI's ``--margin``/``--alpha`` set, each with its
default (the loss class's keyword default: ``tests/test_registry.py`` checks they agree) and its
valid range. Other keyword arguments of a loss (``ignore_index``, ``kernel_size``, ...) are not
knobs: ``runs.loss_defaults(name)`` lists them all, from the class itself.

A **family** is what one selection rule chooses within: the loss name, except MbLS with
``margin=0``, the linear (equality) penalty ``linear``, and a loss with temperature scaling,
``<loss>_ts`` (``family(config)``). ``FAMILY_ORDER`` is the order tables list them in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    """A loss hyperparameter: ``default``, valid range ``[low, high]`` (``low`` excluded when
    ``low_open``), and the ``symbol`` a label shows (``LS a=0.3``)."""

    name: str
    default: float
    symbol: str
    low: float = 0.0
    high: float = math.inf
    low_open: bool = False

    def check(self, value: Any, loss: str) -> float:
        """``value`` as a float; ``ValueError`` naming the loss, the knob and its range."""
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            above = value > self.low if self.low_open else value >= self.low
            ok = math.isfinite(value) and above and value <= self.high
        if not ok:
            raise ValueError(f"{loss} {self.name} must be in {self.range()}, got {value!r}")
        return value

    def range(self) -> str:
        high = "inf)" if self.high == math.inf else f"{self.high:g}]"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}"


@dataclass(frozen=True)
class LossSpec:
    """One loss: its name, label and knobs (see the module docstring)."""

    name: str
    label: str
    knobs: tuple[Knob, ...] = ()

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    @property
    def knob_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def describe_knobs(self) -> str:
        """``margin (default 10, [0, inf)), alpha (default 0.1, [0, inf))``."""
        return ", ".join(f"{k.name} (default {k.default:g}, {k.range()})" for k in self.knobs)


def _alpha(default: float = 0.1, high: float = math.inf) -> Knob:
    return Knob("alpha", default, "a", high=high)


#: every loss, in the order ``LOSS_NAMES`` lists them
LOSSES: tuple[LossSpec, ...] = (
    LossSpec("ce", "CE"),
    LossSpec("ce_dice", "CE+Dice"),
    LossSpec("focal", "FL", (Knob("gamma", 3.0, "g"),)),
    LossSpec("ls", "LS", (_alpha(high=1.0),)),
    LossSpec("ecp", "ECP", (Knob("beta", 0.1, "b"),)),
    LossSpec("svls", "SVLS", (Knob("sigma", 1.0, "s", low_open=True),)),
    LossSpec("mbls", "MbLS", (Knob("margin", 10.0, "m"), _alpha())),
    LossSpec("nacl", "NACL", (_alpha(),)),
    LossSpec("cals", "CALS", (Knob("margin", 20.0, "m", low_open=True),)),
    LossSpec("acls", "ACLS", (_alpha(), Knob("margin", 10.0, "m"))),
    LossSpec("mdca", "MDCA", (Knob("beta", 1.0, "b"),)),
    LossSpec("hl1ace", "hL1-ACE", (Knob("ace_weight", 0.33, "w"),)),
    LossSpec("sl1ace", "sL1-ACE", (Knob("ace_weight", 0.33, "w"),)),
)
SPECS: dict[str, LossSpec] = {spec.name: spec for spec in LOSSES}
LOSS_NAMES: tuple[str, ...] = tuple(SPECS)

#: families in table order: the paper's losses, then its sequels, then the calibration-error
#: losses; CE + temperature scaling last
FAMILY_ORDER: tuple[str, ...] = (
    *("ce", "ce_dice", "focal", "ls", "ecp", "svls", "nacl", "linear", "mbls"),
    *("cals", "acls", "mdca", "hl1ace", "sl1ace", "ce_ts"),
)
_FAMILY_LABELS = {"linear": "linear (MbLS m=0)", "ce_ts": "CE + TS"}


def spec(name: str) -> LossSpec:
    """The ``LossSpec`` of loss ``name``; ``ValueError`` lists the valid names."""
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss name {name!r}; valid names: {', '.join(LOSS_NAMES)}"
        ) from None


def knobs_with(knob: str) -> tuple[str, ...]:
    """The losses that have ``knob`` (e.g. ``alpha``: ls, mbls, nacl, acls)."""
    return tuple(s.name for s in LOSSES if s.knob(knob) is not None)


def family(config: Mapping[str, Any]) -> str:
    """The method family of a run config (what a selection rule chooses within)."""
    if config.get("temperature_scaling"):
        return f"{config['loss']}_ts"
    if config["loss"] == "mbls" and float(config.get("loss_kwargs", {}).get("margin", 10.0)) == 0:
        return "linear"
    return config["loss"]


def family_label(fam: str) -> str:
    """``CE``, ``linear (MbLS m=0)``, ``CE + TS``, ``LS + TS``."""
    if fam in _FAMILY_LABELS:
        return _FAMILY_LABELS[fam]
    if fam.endswith("_ts") and fam[:-3] in SPECS:
        return f"{SPECS[fam[:-3]].label} + TS"
    return SPECS[fam].label if fam in SPECS else fam


def family_rank(fam: str) -> int:
    """Where ``fam`` comes in ``FAMILY_ORDER`` (unknown families last)."""
    return FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER)


def config_label(config: Mapping[str, Any]) -> str:
    """A short label: ``CE``, ``MbLS m=5``, ``CE + TS``, ``LS a=0.3`` (knobs shown when they
    differ from the default; MbLS's margin always). Missing knobs count as their default."""
    loss = config["loss"]
    kwargs = config.get("loss_kwargs") or {}
    info = SPECS.get(loss)
    label = info.label if info else loss
    if loss == "mbls":
        label += f" m={float(kwargs.get('margin', info.knob('margin').default)):g}"
    for knob in info.knobs if info else ():
        value = kwargs.get(knob.name, knob.default)
        if (loss, knob.name) != ("mbls", "margin") and value != knob.default:
            label += f" {knob.symbol}={value:g}"
    if config.get("temperature_scaling"):
        label += " + TS"
    return label
