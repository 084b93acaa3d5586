"""Configs from knob values: a grid per loss family, and the command line's knob flags, checked.

A **grid** names a loss and the values of its parameters; each ``KEY=V1,V2`` multiplies it::

    parse_grid("ls:alpha=0.03,0.1,0.3")        -> ("ls", {"alpha": [0.03, 0.1, 0.3]})
    parse_grid("mbls:margin=3,5,10:alpha=0.1")  -> 3 configs
    parse_grid("ce")                            -> the loss with its defaults

``flag_grids(losses, knobs, params)`` turns the CLI's ``--margin``/``--alpha`` (knobs, from
``mls_tutorial.registry``) and ``--loss-param KEY=VALUE`` into one grid per loss: a flag applies
to the losses that have that knob or parameter, and a flag that applies to none of them is a
``FlagError`` naming the flag, the loss and what it takes. ``grid_configs`` crosses grids with
seeds into run configs. Every value is checked (knob ranges, then the loss's own checks) before
any run starts. The CLI's commands build their configs here (``train_config``,
``losses_configs``, ``grid_text_configs``): the CLI only parses and dispatches.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mls_tutorial.registry import family, knobs_with, spec

__all__ = [
    "DEMO_MARGIN",
    "FlagError",
    "GridError",
    "check_loss",
    "expand_grid",
    "family",
    "flag_grids",
    "grid_configs",
    "grid_text_configs",
    "loss_parameters",
    "losses_configs",
    "parse_grid",
    "train_config",
]


class GridError(ValueError):
    """A ``--grid`` text that cannot be parsed (``text``: the grid, ``problem``: why)."""

    def __init__(self, text: str, problem: str):
        super().__init__(f"grid {text!r}: {problem}")
        self.text, self.problem = text, problem


class FlagError(ValueError):
    """A command-line flag that does not apply, or a value it cannot take (names the flag)."""


def loss_parameters(loss: str) -> dict[str, Any]:
    """Every keyword parameter of loss ``loss`` with its default (knobs and the rest)."""
    from mls_tutorial.runs.config import loss_defaults

    return loss_defaults(spec(loss).name)


def _knobs_of(loss: str) -> str:
    """``focal's knobs: gamma (default 3, [0, inf))`` or ``ce has no knobs``."""
    info = spec(loss)
    return f"{loss}'s knobs: {info.describe_knobs()}" if info.knobs else f"{loss} has no knobs"


def _describe(loss: str) -> str:
    """``focal's knobs: gamma (default 3, [0, inf)); other parameters: ignore_index, validate``."""
    rest = sorted(set(loss_parameters(loss)) - set(spec(loss).knob_names))
    return f"{_knobs_of(loss)}; other parameters: {', '.join(rest)}"


def check_loss(loss: str, kwargs: Mapping[str, Any]) -> None:
    """Build the loss once with ``kwargs``: its own checks of every value (``ValueError``)."""
    from mls_tutorial.losses import build_loss

    try:
        build_loss(loss, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{loss}: {exc}") from None


def parse_grid(text: str) -> tuple[str, dict[str, list[Any]]]:
    """``LOSS[:KEY=V1,V2,...]...`` -> ``(loss, {key: [values]})``; values parsed as JSON.

    Keys must be parameters of the loss; a knob's values must lie in its range
    (``registry.Knob``). ``GridError`` names the grid and the problem.
    """
    loss, *parts = text.split(":")
    loss = loss.strip()
    try:
        info, params = spec(loss), loss_parameters(loss)
    except ValueError as exc:
        raise GridError(text, str(exc)) from None
    knobs: dict[str, list[Any]] = {}
    for part in parts:
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip(", "):
            raise GridError(text, f"expected KEY=V1,V2,... after ':', got {part!r}")
        if key not in params:
            raise GridError(text, f"{loss} has no parameter {key!r}; {_describe(loss)}")
        if key in knobs:
            raise GridError(text, f"{key!r} is given twice")
        knobs[key] = [_value(v, text) for v in values.split(",")]
        if info.knob(key) is not None:
            try:
                knobs[key] = [info.knob(key).check(v, loss) for v in knobs[key]]
            except ValueError as exc:
                raise GridError(text, str(exc)) from None
    return loss, knobs


def _value(raw: str, text: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise GridError(text, f"{raw!r} is not a number or JSON value") from None


def expand_grid(loss: str, knobs: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the knob values: a list of ``loss_kwargs``."""
    keys = list(knobs)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*knobs.values())]


def flag_grids(
    losses: Sequence[str],
    knobs: Mapping[str, tuple[str, list[Any]]] = {},  # noqa: B006 - read only
    params: Sequence[tuple[str, Any]] = (),
    mbls_margins: tuple[str, list[float], bool] | None = None,
    losses_flag: str = "--loss",
) -> list[tuple[str, dict[str, list[Any]]]]:
    """One grid per loss from the CLI's flags.

    ``knobs``: knob name -> ``(flag, values)``, e.g. ``{"alpha": ("--alpha", [0.3])}``;
    ``params``: the ``--loss-param`` pairs. Each applies to the losses that have it; one that
    applies to none of ``losses`` (or a value out of range, or a parameter given twice) is a
    ``FlagError`` naming the flag and what the losses take. ``mbls_margins``: ``(flag, margins,
    given)``, MbLS's margins alone (demo's ``--margin``, sweep's ``--margins``: the course's
    sweep variable); an error when ``given`` and MbLS is not among ``losses``. ``losses_flag``:
    the flag that chose ``losses`` (messages name it).
    """
    where = f"{losses_flag} {' '.join(losses)}"
    grids = {loss: {} for loss in losses}
    if mbls_margins is not None:
        flag, margins, given = mbls_margins
        if given and "mbls" not in losses:
            raise FlagError(f"{flag} sets MbLS's margin: add mbls to {where}")
        if "mbls" in losses:
            grids["mbls"]["margin"] = [_checked(flag, "mbls", "margin", m) for m in margins]
    for name, (flag, values) in knobs.items():
        takers = [loss for loss in losses if spec(loss).knob(name) is not None]
        if not takers:
            owners = ", ".join(knobs_with(name))
            raise FlagError(
                f"{flag} does not apply to {where}: "
                + "; ".join(_knobs_of(loss) for loss in losses)
                + f" ({name} is a knob of {owners})"
            )
        for loss in takers:
            grids[loss][name] = [_checked(flag, loss, name, v) for v in values]
    for key, value in params:
        flag = f"--loss-param {key}={json.dumps(value)}"
        takers = [loss for loss in losses if key in loss_parameters(loss)]
        if not takers:
            raise FlagError(
                f"{flag}: {where} has no parameter {key!r}; "
                + "; ".join(_describe(loss) for loss in losses)
            )
        for loss in takers:
            if key in grids[loss]:
                raise FlagError(f"{flag}: {loss}'s {key} is given twice")
            grids[loss][key] = [_checked(flag, loss, key, value)]
    for loss, grid in grids.items():
        for kwargs in expand_grid(loss, grid):
            try:
                check_loss(loss, kwargs)
            except ValueError as exc:
                raise FlagError(f"{'/'.join(_flags(knobs, params))}: {exc}") from None
    return list(grids.items())


def _checked(flag: str, loss: str, name: str, value: Any) -> Any:
    knob = spec(loss).knob(name)
    if knob is None:
        return value
    try:
        return knob.check(value, loss)
    except ValueError as exc:
        raise FlagError(f"{flag}: {exc}") from None


def _flags(knobs, params) -> list[str]:
    return [flag for flag, _ in knobs.values()] + (["--loss-param"] if params else [])


def grid_configs(
    grids: Sequence[tuple[str, dict[str, list[Any]]]],
    seeds: Sequence[int],
    base: Mapping[str, Any],
    *,
    ce_ts_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every grid point for every seed (seeds outermost), as run configs on top of ``base``;
    with ``ce_ts_kwargs`` (CE's ``loss_kwargs``) a CE + temperature scaling config per seed."""
    configs = []
    for seed in seeds:
        for loss, knobs in grids:
            for kwargs in expand_grid(loss, knobs):
                configs.append({**base, "loss": loss, "loss_kwargs": kwargs, "seed": seed})
        if ce_ts_kwargs is not None:
            configs.append(
                {
                    **base,
                    "loss": "ce",
                    "loss_kwargs": dict(ce_ts_kwargs),
                    "seed": seed,
                    "temperature_scaling": True,
                }
            )
    return configs


# --------------------------------------------------------------- the CLI's configs, from flags

#: the demo's and sweep's MbLS margin (not train's 10: on the bundled data CE's logit distances
#: peak near 10, where a margin of 10 barely binds; see docs/results.md)
DEMO_MARGIN = 5.0


def train_config(
    base: Mapping[str, Any],
    loss: str,
    seed: int,
    *,
    margin: float | None = None,
    alpha: float | None = None,
    params: Sequence[tuple[str, Any]] = (),
    temperature_scaling: bool = False,
) -> dict[str, Any]:
    """``train``'s one config: ``--margin``, ``--alpha``, ``--loss-param`` must apply to the loss."""
    given = {"margin": margin, "alpha": alpha}
    knobs = {name: (f"--{name}", [v]) for name, v in given.items() if v is not None}
    ((loss, grid),) = flag_grids([loss], knobs, params)
    kwargs = {key: values[0] for key, values in grid.items()}
    return {
        **base,
        "loss": loss,
        "loss_kwargs": kwargs,
        "seed": seed,
        "temperature_scaling": temperature_scaling,
    }


def losses_configs(
    base: Mapping[str, Any],
    losses: Sequence[str],
    seeds: Sequence[int],
    *,
    margins: tuple[str, list[float] | None],
    alpha: float | None = None,
    params: Sequence[tuple[str, Any]] = (),
    ce_ts: bool = False,
) -> list[dict[str, Any]]:
    """``demo`` and ``sweep --losses``: each loss with the flags that apply to it, x seeds.

    ``margins``: ``(flag, values or None)``, MbLS's margins (``DEMO_MARGIN`` when None);
    ``ce_ts``: add CE + temperature scaling (with the ``params`` CE takes) for each seed."""
    flag, values = margins
    grids = flag_grids(
        losses,
        {} if alpha is None else {"alpha": ("--alpha", [alpha])},
        params,
        mbls_margins=(flag, [DEMO_MARGIN] if values is None else values, values is not None),
        losses_flag="--losses",
    )
    ce_kwargs = {k: v for k, v in params if k in loss_parameters("ce")}
    return grid_configs(grids, seeds, base, ce_ts_kwargs=ce_kwargs if ce_ts else None)


def grid_text_configs(
    base: Mapping[str, Any], texts: Sequence[str], seeds: Sequence[int], *, ce_ts: bool = False
) -> list[dict[str, Any]]:
    """``sweep --grid TEXT ...``: every grid point x seeds; ``FlagError`` names a bad ``--grid``."""
    try:
        grids = [parse_grid(text) for text in texts]
    except GridError as exc:
        raise FlagError(f"--grid {exc.text!r}: {exc.problem}") from None
    return grid_configs(grids, seeds, base, ce_ts_kwargs={} if ce_ts else None)
