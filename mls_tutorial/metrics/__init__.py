"""Exact, streaming calibration and segmentation metrics.

- ``CalibrationMeter``: top-label / classwise ECE, MCE, RMSCE, ACE, Brier, NLL from bin tables
  (int64 counts, float64 sums) whose size does not grow with the voxels; ``torch.distributed``-aware.
- Functional forms: ``expected_calibration_error``, ``classwise_calibration_error``,
  ``brier_score``, ``negative_log_likelihood``.
- ``LogitDistanceHistogram``: streaming histogram of logit distances ``d_k = max_j z_j - z_k``
  with exact counts above given margins; ``distance_summary``: their exact mean and shares.
- ``dice_per_class``, ``hd95_per_class``: per-volume segmentation scores (MONAI, imported lazily);
  ``dice_from_confusion``: Dice from a confusion matrix summed over pieces of a volume.
- ``true_calibration_error`` / ``truth_table``: ``tce``, ``ece_true``, ``prob_gap`` against known
  true class probabilities (the bundled data).
- ``results.assemble``: the results dict of a ``metrics.json`` (its keys, their order, their
  table headers), one assembler for ``train.evaluate`` and ``score``.
"""

from .calibration import (
    REGIONS,
    CalibrationMeter,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    negative_log_likelihood,
)
from .distances import LogitDistanceHistogram, distance_summary
from .segmentation import dice_from_confusion, dice_per_class, hd95_per_class
from .truth import true_calibration_error, truth_table

__all__ = [
    "REGIONS",
    "CalibrationMeter",
    "LogitDistanceHistogram",
    "brier_score",
    "classwise_calibration_error",
    "dice_from_confusion",
    "dice_per_class",
    "distance_summary",
    "expected_calibration_error",
    "hd95_per_class",
    "negative_log_likelihood",
    "true_calibration_error",
    "truth_table",
]
