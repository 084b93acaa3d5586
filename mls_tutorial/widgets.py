"""The margin explorer: browse a sweep of MbLS runs by margin, or train a new margin.

``margin_explorer(runs)`` returns an ``ipywidgets.VBox`` holding a margin slider (and an alpha
selector when the sweep has several), one figure rendered as a PNG ``Image`` widget and a status
line. Moving the slider redraws, in one persistent matplotlib figure, the logit-distance histogram
(CE reference + the selected run, line at ``m``), the reliability diagram, one test slice
(``Run.example()``: image, ground truth, prediction, entropy) and moves a marker along the
margin-sweep curves. Everything comes from the run folders (``metrics.json``, ``example.npz``):
no model runs in the callback, so it is instant on a CPU and works headless (setting
``box.slider.value`` in code runs the same update). With ``train_fn(margin, alpha) -> Run`` a
"Train with this margin" button trains a new run and adds it to the sweep. Errors are shown in
``box.error`` (and kept in ``box.last_error``), never lost.
"""

from __future__ import annotations

import html
import inspect
import io
import math
import traceback
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from mls_tutorial import plots
from mls_tutorial.registry import config_label

MBLS = "mbls"
WEIGHT_KEYS = ("alpha", "lam", "lambda", "lambda_", "weight")
DEFAULT_ALPHA = "default"  # selector value for runs whose config records no alpha
NO_RUN = "none yet"  # slider value while the sweep is empty (train mode)


def margin_explorer(runs: Sequence, example_index: int = 0, train_fn: Callable | None = None,
                    **kwargs) -> MarginExplorer:  # fmt: skip
    """Build the margin explorer over ``runs`` (``mls_tutorial.runs.Run`` objects).

    MbLS runs (``config["loss"] == "mbls"``) form the sweep, keyed by ``loss_kwargs`` margin and
    alpha (the first run of each key wins); the other runs are references keyed by their label
    (``registry.config_label``: ``CE`` and ``CE + TS`` are two; CE is drawn in the histogram;
    all are horizontal lines on the sweep). ``example_index`` selects the test slice
    of ``Run.example``. ``train_fn(margin, alpha) -> Run`` enables train mode. Keyword options:
    ``summary`` ("all"/"mean"), ``class_names``, ``class_colors``, ``dpi``.
    """
    return MarginExplorer(runs, example_index=example_index, train_fn=train_fn, **kwargs)


def loss_margin_alpha(run) -> tuple[str, float | None, float | None]:
    """``(loss, margin, alpha)`` from ``run.config`` (margin/alpha None when not set)."""
    config = getattr(run, "config", None)
    if not isinstance(config, dict) or "loss" not in config:
        raise ValueError(f"run {run!r} has no config dict with a 'loss' entry")
    kwargs = config.get("loss_kwargs") or {}
    margin = kwargs.get("margin")
    alpha = next((kwargs[k] for k in WEIGHT_KEYS if kwargs.get(k) is not None), None)
    return (
        str(config["loss"]).lower(),
        None if margin is None else float(margin),
        None if alpha is None else float(alpha),
    )


def _takes_index(run) -> bool:
    """Whether ``run.example`` accepts an example index (the contract's takes none)."""
    try:
        return bool(inspect.signature(run.example).parameters)
    except (TypeError, ValueError, AttributeError):
        return False


def _fmt(value, spec=".4f") -> str:
    return "n/a" if value is None else format(float(value), spec)


class MarginExplorer(widgets.VBox):
    """The widget returned by :func:`margin_explorer`.

    Children exposed as attributes: ``alpha`` (Dropdown, hidden with one alpha), ``slider``
    (SelectionSlider of margins, ``continuous_update=False``), ``summary`` (ToggleButtons),
    ``image`` (PNG of ``figure``), ``status`` and ``error`` (HTML), and for train mode
    ``train_margin``, ``train_alpha``, ``train_button``, ``train_output`` (progress bars).
    State: ``run`` (the displayed run), ``markers`` (the sweep marker lines), ``last_error``.
    """

    def __init__(self, runs, example_index=0, train_fn=None, *, summary="all",
                 class_names=None, class_colors=None, dpi=72):  # fmt: skip
        super().__init__()
        if isinstance(runs, str | bytes) or not isinstance(runs, Sequence):
            raise ValueError(f"runs must be a list of Run objects, got {type(runs).__name__}")
        if int(example_index) != example_index or example_index < 0:
            raise ValueError(f"example_index must be an integer >= 0, got {example_index}")
        if train_fn is not None and not callable(train_fn):
            raise ValueError("train_fn must be callable(margin, alpha) -> Run or None")
        if summary not in plots.distances.SUMMARIES:
            raise ValueError(f"summary must be 'all' or 'mean', got {summary!r}")
        self.example_index, self.train_fn, self.dpi = int(example_index), train_fn, dpi
        self.class_names, self.class_colors = class_names, class_colors
        self.runs, self._sweep, self._refs, self._examples = [], {}, {}, {}
        for run in runs:
            self._register(run, replace=False)
        if not self._sweep and train_fn is None:
            raise ValueError("runs hold no MbLS run (config loss 'mbls') and no train_fn is given")
        if self.example_index and not all(map(_takes_index, self._sweep.values())):
            raise ValueError(
                f"example_index={example_index}: these runs store one example (Run.example() "
                "takes no index); use example_index=0"
            )
        self.run, self.markers, self.last_error = None, [], None
        self._suspended, self._sweep_key, self._layout_frozen = False, None, False
        self._build_widgets(summary)
        self._build_figure()
        self.update()

    # ---- construction -------------------------------------------------------------------
    def _register(self, run, replace: bool) -> tuple:
        loss, margin, alpha = loss_margin_alpha(run)
        if not isinstance(getattr(run, "metrics", None), dict):
            raise ValueError(f"run {run!r} has no metrics dict")
        if loss == MBLS:
            if margin is None or not margin >= 0:
                raise ValueError(f"MbLS run {run!r} needs loss_kwargs margin >= 0, got {margin}")
            key = (DEFAULT_ALPHA if alpha is None else alpha, margin)
            store, label = self._sweep, key
        else:
            store, label = self._refs, config_label({**run.config, "loss": loss})
        self.runs.append(run)
        if replace or label not in store:
            store[label] = run
        return label

    def _alphas(self) -> list:
        alphas = {a for a, _ in self._sweep} or {DEFAULT_ALPHA}
        return sorted(alphas, key=lambda a: (a == DEFAULT_ALPHA, 0.0 if isinstance(a, str) else a))

    def _alpha_options(self) -> list:
        return [(a if isinstance(a, str) else f"{a:g}", a) for a in self._alphas()]

    def _margin_options(self, alpha) -> list:
        margins = sorted(m for a, m in self._sweep if a == alpha)
        return [(f"{m:g}", m) for m in margins] or [(NO_RUN, NO_RUN)]

    def _build_widgets(self, summary: str) -> None:
        self.alpha = widgets.Dropdown(options=self._alpha_options(), description="alpha (weight)")
        self.slider = widgets.SelectionSlider(
            options=self._margin_options(self.alpha.value),
            description="margin m",
            continuous_update=False,
            layout=widgets.Layout(width="480px"),
        )
        self.slider.disabled = self.slider.value == NO_RUN
        self.summary = widgets.ToggleButtons(
            options=[("all distances", "all"), ("mean per voxel", "mean")], value=summary
        )
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.status, self.error = widgets.HTML(), widgets.HTML()
        first_alpha = 0.1 if isinstance(self.alpha.value, str) else self.alpha.value
        first_margin = 10.0 if self.slider.value == NO_RUN else self.slider.value
        self.train_margin = widgets.FloatText(value=first_margin, description="new margin m")
        self.train_alpha = widgets.FloatText(value=first_alpha, description="alpha")
        self.train_button = widgets.Button(
            description="Train with this margin",
            button_style="primary",
            icon="play",
            disabled=self.train_fn is None,
            layout=widgets.Layout(width="auto"),
        )
        self.train_output = widgets.Output()
        self.alpha.observe(self._on_alpha, names="value")
        self.slider.observe(self.update, names="value")
        self.summary.observe(self.update, names="value")
        self.train_button.on_click(self._on_train)
        self._sync_alpha_visibility()
        controls = widgets.HBox([self.alpha, self.slider, self.summary])
        children = [controls, self.status, self.error, self.image]
        if self.train_fn is not None:
            row = widgets.HBox([self.train_margin, self.train_alpha, self.train_button])
            children += [row, self.train_output]
        self.children = children

    def _sync_alpha_visibility(self) -> None:
        self.alpha.layout.display = None if len(self.alpha.options) > 1 else "none"

    def _build_figure(self) -> None:
        self.figure = Figure(figsize=(15, 9.5), dpi=self.dpi, layout="constrained")
        top, bottom = self.figure.subfigures(2, 1, height_ratios=(1.2, 1))
        names = ("histogram", "reliability", "sweep")
        self.panels = dict(
            zip(names, top.subfigures(1, 3, width_ratios=(1.3, 1, 1.1)), strict=True)
        )
        self.panels["overlay"] = bottom

    # ---- browse mode --------------------------------------------------------------------
    def _on_alpha(self, change) -> None:
        if self._suspended:
            return
        previous = self.slider.value
        options = self._margin_options(change["new"])
        values = [v for _, v in options]
        nearest = previous if previous in values else values[0]
        if previous != NO_RUN and NO_RUN not in values and previous not in values:
            nearest = min(values, key=lambda m: abs(m - previous))
        self._suspended = True
        try:
            self.slider.options = options
            self.slider.value = nearest
        finally:
            self._suspended = False
        self.update()

    def update(self, *_change) -> None:
        """Redraw for the current alpha/margin (the slider's observer; safe to call directly)."""
        if self._suspended:
            return
        errors = []
        alpha, margin = self.alpha.value, self.slider.value
        run = self._sweep.get((alpha, margin))
        self.slider.disabled = margin == NO_RUN
        if run is None:
            self.run = None
            self.status.value = "<i>No MbLS run yet: train one with the button below.</i>"
            return
        self.run = run
        if self._sweep_key != (alpha, len(self.runs)):
            self._panel("sweep", self._draw_sweep, errors, alpha)
        self._panel("histogram", self._draw_histogram, errors, run, margin)
        self._panel("reliability", self._draw_reliability, errors, run, margin, alpha)
        self._panel("overlay", self._draw_overlay, errors, run)
        try:
            self._move_markers(margin)
            self._render()
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            errors.append(self._describe("render", exc))
        self.status.value = self._status_html(run, margin, alpha)
        self._show_errors(errors)

    def _panel(self, name, draw, errors, *args) -> None:
        """Clear one sub-figure and redraw it; a failure is written in the panel and reported.

        Once laid out, the axes keep their positions (constrained layout, the slow part of a
        render, runs again only when a panel's axes change in number).
        """
        panel = self.panels[name]
        positions = [ax.get_position(original=True) for ax in panel.axes]
        panel.clear()
        try:
            draw(panel, *args)
        except Exception as exc:  # noqa: BLE001 - one broken panel must not hide the others
            panel.clear()
            panel.text(0.5, 0.5, f"{name}: {exc}", ha="center", va="center", wrap=True, color="C3")
            errors.append(self._describe(name, exc))
            if name == "sweep":
                self.markers, self._sweep_key = [], None
        if self._layout_frozen and len(panel.axes) == len(positions) and positions:
            for ax, position in zip(panel.axes, positions, strict=True):
                ax.set_position(position)
        else:
            self._layout_frozen = False

    def _draw_histogram(self, panel, run, margin) -> None:
        hists = {}
        if "CE" in self._refs:
            hists["CE"] = self._refs["CE"].metrics["histogram"]
        hists[f"MbLS m={margin:g}"] = run.metrics["histogram"]
        plots.logit_distance_histogram(hists, margin=margin, summary=self.summary.value,
                                       ax=panel.subplots())  # fmt: skip

    def _draw_reliability(self, panel, run, margin, alpha) -> None:
        axes = panel.subplots(2, 1, height_ratios=(3, 1))
        weight = "" if isinstance(alpha, str) else f", alpha={alpha:g}"
        title = f"MbLS m={margin:g}{weight} (foreground voxels, pooled)"
        plots.reliability_diagram(run.metrics["meter"], ax=axes, title=title)

    def _draw_overlay(self, panel, run) -> None:
        example = self._example(run)
        probs = plots.images.check_probs(example["probs"], "example probs")
        names, colors = self._classes(run, probs.shape[0])
        axes = panel.subplots(1, 4)
        params = run.config.get("data_params") or {}
        sampled = params.get("labels", "sampled" if run.config.get("data") == "mni" else None)
        title = "test label (sampled)" if sampled == "sampled" else "test label"
        plots.segmentation_overlay(example["image"], example["label"], probs, names, colors,
                                   ax=axes[:3], label_title=title)  # fmt: skip
        im = axes[3].imshow(plots.entropy_map(probs), cmap="magma", vmin=0.0,
                            vmax=math.log(probs.shape[0]), interpolation="nearest")  # fmt: skip
        axes[3].set_title("entropy $H(s)$")
        axes[3].set_axis_off()
        panel.colorbar(im, ax=axes[3], shrink=0.8)

    def _draw_sweep(self, panel, alpha) -> None:
        keys = ("dice", "ece", "cece")
        rows = [
            {"margin": m, **{k: r.metrics.get(k) for k in keys}}
            for (a, m), r in self._sweep.items()
            if a == alpha
        ]
        refs = {label: run.metrics for label, run in self._refs.items()}
        axes = panel.subplots(2, 1, sharex=True)
        plots.margin_sweep(rows, refs, ax=axes)
        self.markers = []
        for axis in axes:
            for line in [ln for ln in axis.lines if ln.get_gid() in ("dice", "ece", "cece")]:
                (marker,) = axis.plot([], [], "*", ms=16, color="gold", mec="k", zorder=5,
                                      gid="highlight")  # fmt: skip
                self.markers.append((marker, line))
        self._sweep_key = (alpha, len(self.runs))

    def _move_markers(self, margin) -> None:
        """Move the sweep markers in place (``set_data``) to the curves' values at ``margin``."""
        for marker, line in self.markers:
            x, y = (np.asarray(v, dtype=float) for v in line.get_data())
            marker.set_data([margin], [float(np.interp(margin, x, y))])

    def _render(self) -> None:
        buffer = io.BytesIO()
        if not self._layout_frozen:  # slack in the pads: later tick labels may be a bit wider
            self.figure.set_layout_engine("constrained", w_pad=0.16, h_pad=0.06)
        self.figure.savefig(buffer, format="png", dpi=self.dpi)
        self.figure.set_layout_engine("none")
        self._layout_frozen = True
        self.image.value = buffer.getvalue()

    def _example(self, run) -> dict:
        key = id(run)
        if key not in self._examples:
            if _takes_index(run):
                example = run.example(self.example_index)
            elif self.example_index == 0:
                example = run.example()
            else:
                raise ValueError(f"example_index={self.example_index}: run stores one example")
            missing = [k for k in ("image", "label", "probs") if k not in example]
            if missing:
                raise ValueError(f"run.example() lacks {missing}")
            self._examples[key] = example
        return self._examples[key]

    def _classes(self, run, k: int) -> tuple[list, list]:
        """Class names and colours: given ones, else ``metrics["data"]`` (or the config)."""
        sources = [run.metrics.get("data"), run.config, run.config.get("data")]
        sources = [src for src in sources if isinstance(src, dict)]
        names = self.class_names or next(
            (src["class_names"] for src in sources if src.get("class_names")), None
        )
        colors = self.class_colors or next(
            (src["class_colors"] for src in sources if src.get("class_colors")), None
        )
        names = list(names) if names else ["background"] + [f"class {c}" for c in range(1, k)]
        colors = list(colors) if colors else ["black"] + [to_hex(f"C{c - 1}") for c in range(1, k)]
        if len(names) < k or len(colors) < k:
            raise ValueError(f"{len(names)} class names / {len(colors)} colours for {k} classes")
        return names[:k], colors[:k]

    def _status_html(self, run, margin, alpha) -> str:
        m = run.metrics
        try:
            share = plots.distance_histogram_data(m["histogram"], self.summary.value, margin)
            share_text = f"{share['fraction_above']:.1%}"
        except Exception:  # noqa: BLE001 - the histogram panel already reports it
            share_text = "n/a"
        name = getattr(run, "name", None) or getattr(getattr(run, "path", None), "name", "run")
        weight = alpha if isinstance(alpha, str) else f"{alpha:g}"
        return (
            f"<b>{html.escape(str(name))}</b>: MbLS m = {margin:g}, alpha = {weight} | "
            f"DSC {_fmt(m.get('dice'))}, ECE {_fmt(m.get('ece'))}, CECE {_fmt(m.get('cece'))} "
            "(foreground, mean over test volumes) | "
            f"share of d &gt; m: {share_text}"
        )

    # ---- errors -------------------------------------------------------------------------
    def _describe(self, where: str, exc: BaseException) -> str:
        self.last_error = exc
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return f"<b>{html.escape(where)}</b>: {html.escape(f'{type(exc).__name__}: {exc}')}" + (
            f"<details><summary>traceback</summary><pre>{html.escape(tail)}</pre></details>"
        )

    def _show_errors(self, messages: list[str]) -> None:
        self.error.value = (
            "" if not messages else '<div style="color:#b00020">' + "<br>".join(messages) + "</div>"
        )

    # ---- train mode ---------------------------------------------------------------------
    def _on_train(self, _button=None) -> None:
        margin, alpha = self.train_margin.value, self.train_alpha.value
        if self.train_fn is None:
            self._show_errors([self._describe("train", ValueError("no train_fn was given"))])
            return
        if not (math.isfinite(margin) and margin >= 0):
            self._show_errors(
                [self._describe("train", ValueError(f"margin must be >= 0, got {margin}"))]
            )
            return
        if not (math.isfinite(alpha) and alpha > 0):
            self._show_errors(
                [self._describe("train", ValueError(f"alpha must be > 0, got {alpha}"))]
            )
            return
        self._show_errors([])
        self.train_button.disabled = True
        self.status.value = f"<i>training MbLS m = {margin:g}, alpha = {alpha:g} ...</i>"
        try:
            with self.train_output:
                run = self.train_fn(margin, alpha)
            self.add_run(run, select=True)
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self._show_errors([self._describe("train", exc)])
        finally:
            self.train_button.disabled = False

    def add_run(self, run, select: bool = True) -> None:
        """Add ``run`` to the sweep (replacing one with the same margin and alpha) and redraw.

        ``select``: show the new run (an MbLS run); otherwise keep the current selection.
        """
        label = self._register(run, replace=True)
        self._examples.pop(id(run), None)
        alpha, margin = self.alpha.value, self.slider.value
        if select and isinstance(label, tuple):
            alpha, margin = label
        self._suspended = True
        try:
            self.alpha.options = self._alpha_options()
            self._sync_alpha_visibility()
            if alpha in self._alphas():
                self.alpha.value = alpha
            self.slider.options = self._margin_options(self.alpha.value)
            if margin in [v for _, v in self.slider.options]:
                self.slider.value = margin
        finally:
            self._suspended = False
        self._sweep_key = None  # a new row or reference: redraw the sweep
        self.update()
