"""Shared helpers for the figures: axes handling and input adapters.

Every figure function takes ``ax=None``. ``None`` makes a new pyplot figure (so that it shows
inline in a notebook; close it with ``plt.close(fig)`` or :func:`save_figure`). An ``Axes`` is
split in place when the figure needs several panels (its subplot slot is subdivided). A sequence
of axes of the right length is used as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure


def new_figure(nrows: int, ncols: int, *, figsize, **gridspec_kw) -> tuple[Figure, np.ndarray]:
    """A constrained-layout pyplot figure with ``nrows x ncols`` axes (always a flat array)."""
    import matplotlib.pyplot as plt  # lazy: picks the backend only when a figure is made

    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize, layout="constrained", squeeze=False, gridspec_kw=gridspec_kw
    )
    return fig, axes.ravel()


def root_figure(ax: Axes) -> Figure:
    """The top-level figure holding ``ax`` (through sub-figures)."""
    fig = ax.figure
    while isinstance(fig, SubFigure):
        fig = fig.figure
    return fig


def axes_grid(
    ax, n: int, *, direction: str = "row", ratios=None, figsize=(5.0, 4.0), name: str = "ax"
) -> list[Axes]:
    """Return ``n`` axes: new ones, the given sequence, or the given Axes split into ``n``.

    ``direction`` is ``"row"`` (side by side) or ``"column"`` (stacked); ``ratios`` the relative
    widths/heights of the panels.
    """
    if ax is None:
        kw = {}
        if ratios is not None:
            kw["width_ratios" if direction == "row" else "height_ratios"] = ratios
        shape = (1, n) if direction == "row" else (n, 1)
        return list(new_figure(*shape, figsize=figsize, **kw)[1])
    if isinstance(ax, Axes):
        if n == 1:
            return [ax]
        return _split_axes(ax, n, direction, ratios, name)
    if isinstance(ax, Sequence | np.ndarray):
        axes = list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
            raise ValueError(f"{name} must be None, one Axes or a sequence of {n} Axes")
        return axes
    raise ValueError(f"{name} must be None, one Axes or a sequence of {n} Axes, got {type(ax)}")


def _split_axes(ax: Axes, n: int, direction: str, ratios, name: str) -> list[Axes]:
    spec = ax.get_subplotspec()
    if spec is None:
        raise ValueError(f"{name}: an Axes that is not in a grid cannot be split; pass {n} Axes")
    kw = {}
    if ratios is not None:
        kw["width_ratios" if direction == "row" else "height_ratios"] = ratios
    shape = (1, n) if direction == "row" else (n, 1)
    sub = spec.subgridspec(*shape, **kw)
    ax.set_subplotspec(sub[0])
    return [ax] + [ax.figure.add_subplot(sub[i]) for i in range(1, n)]


def axes_block(ax, nrows: int, ncols: int, *, figsize, **ratios) -> list[Axes]:
    """``nrows x ncols`` axes (flat, row-major): a new figure, or the given Axes' slot split."""
    if ax is None:
        return list(new_figure(nrows, ncols, figsize=figsize, **ratios)[1])
    spec = ax.get_subplotspec()
    if spec is None:
        raise ValueError("ax: an Axes that is not in a grid cannot be split; pass a list of Axes")
    sub = spec.subgridspec(nrows, ncols, **ratios)
    ax.set_subplotspec(sub[0, 0])
    cells = [(r, c) for r in range(nrows) for c in range(ncols)]
    return [ax] + [ax.figure.add_subplot(sub[r, c]) for r, c in cells[1:]]


def save_figure(fig: Figure, path, *, dpi: int = 120, close: bool = True) -> None:
    """Save ``fig`` to ``path`` (format from the suffix) and close it (no leaked pyplot figures)."""
    fig.savefig(path, dpi=dpi)
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)


def class_names_for(class_names, k: int, what: str | None = None) -> list[str]:
    """``class_names`` as a list of ``k`` names (``"class i"`` when None); a ValueError
    ``"class_names has n names for <what>"`` (default ``"<k> classes"``) when the count differs."""
    names = list(class_names) if class_names is not None else [f"class {i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {what or f'{k} classes'}")
    return names


def as_float_array(values, name: str, length: int | None = None) -> np.ndarray:
    """1-D float64 array; ``None`` entries (NaN written as null in JSON) become NaN."""
    try:
        arr = np.asarray([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers ({exc})") from None
    if length is not None and arr.shape != (length,):
        raise ValueError(f"{name} must have {length} entries, got {arr.shape[0]}")
    return arr


def check_edges(edges, name: str) -> np.ndarray:
    edges = as_float_array(edges, name)
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"{name} must be at least 2 finite, strictly increasing bin edges")
    return edges


def check_counts(counts, name: str, length: int) -> np.ndarray:
    counts = as_float_array(counts, name, length)
    if np.any(~np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite and >= 0")
    return counts


def is_mapping_with(obj, keys) -> bool:
    return isinstance(obj, Mapping) and all(k in obj for k in keys)


def rebuild_from_dict(data: Mapping, kind: str, arg: str, alternative: str):
    """Rebuild ``mls_tutorial.metrics.<kind>`` from its ``to_dict()``; ValueError naming ``arg``."""
    from mls_tutorial import metrics

    try:
        return getattr(metrics, kind).from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{arg} is neither {alternative} nor a {kind}.to_dict() dict ({exc!r})"
        ) from None
