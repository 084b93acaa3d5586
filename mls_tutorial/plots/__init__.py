"""Every figure of the tutorial (matplotlib); ``from mls_tutorial import plots``.

Each figure function takes ``ax=None`` and returns the ``Figure`` it drew on:

- ``ax=None``: a new pyplot figure (shown inline in notebooks; close it, e.g. with
  :func:`save_figure`, when drawing many);
- one ``Axes``: used, and split in place when the figure has several panels;
- a sequence of ``Axes`` of the right length: used as given.

Library code never calls ``plt.show()`` and never chooses a backend. Inputs are plain arrays,
dicts or meters (``CalibrationMeter`` / ``LogitDistanceHistogram`` objects or their ``to_dict()``
dicts, e.g. from a run's ``metrics.json``), never a model.
"""

from mls_tutorial.plots._common import save_figure
from mls_tutorial.plots.distances import (
    class_distance_data,
    class_distance_histograms,
    distance_histogram_data,
    logit_distance_histogram,
    margin_sweep,
)
from mls_tutorial.plots.images import confidence_entropy_maps, entropy_map, segmentation_overlay
from mls_tutorial.plots.multipliers import (
    augmented_lagrangian_curves,
    multiplier_curves,
    multiplier_history,
)
from mls_tutorial.plots.paired import paired_differences
from mls_tutorial.plots.penalties import penalty_curves, penalty_functions
from mls_tutorial.plots.regime import (
    regime_capacity,
    regime_curves,
    regime_histograms,
    regime_points,
)
from mls_tutorial.plots.reliability import (
    classwise_reliability,
    reliability_data,
    reliability_diagram,
)
from mls_tutorial.plots.training import split_history, training_curves
from mls_tutorial.plots.weights import weight_curves, weight_sweep

__all__ = [
    "augmented_lagrangian_curves",
    "class_distance_data",
    "class_distance_histograms",
    "classwise_reliability",
    "confidence_entropy_maps",
    "distance_histogram_data",
    "entropy_map",
    "logit_distance_histogram",
    "margin_sweep",
    "multiplier_curves",
    "multiplier_history",
    "paired_differences",
    "penalty_curves",
    "penalty_functions",
    "regime_capacity",
    "regime_curves",
    "regime_histograms",
    "regime_points",
    "reliability_data",
    "reliability_diagram",
    "save_figure",
    "segmentation_overlay",
    "split_history",
    "training_curves",
    "weight_curves",
    "weight_sweep",
]
