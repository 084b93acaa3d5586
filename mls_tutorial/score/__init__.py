"""Score any model's saved probability maps: the course's metrics, figures and summary.

    from mls_tutorial.score import score_cases, score_folder

- ``score_cases(pairs)``: any iterable of ``(probabilities (C, *spatial), labels, spacing)``
  -> the results dict of a run (Dice, HD95, foreground ECE, ``ece_all``, CECE, gap, NLL, Brier,
  logit distances), one pass per piece of a case (``case``, ``tables``), one case in memory at a
  time per worker (``core``; checks and the walk over a case's pieces in ``checks``);
- ``fit_temperature_on_cases(val_pairs)``: post-hoc temperature scaling fitted on validation
  cases only (``log p / T`` is temperature scaling of the logits) (``temperature``);
- ``score_folder(pred, labels, out)``: nnU-Net v2 ``.npz``, NIfTI ``(X, Y, Z, C)`` or NumPy
  ``(C, X, Y, Z)`` folders (``layouts``) -> ``metrics.json``, ``cases.csv``, figures and
  ``summary.md`` (``folder``), replacing only score's own files in OUT (``output``); the
  ``mls-tutorial score`` command;
- ``score_region_cases(pairs, regions)``: a region-based (sigmoid) model, e.g. nnU-Net's BraTS
  regions, each region scored as the two-class problem ``(1 - p_r, p_r)`` against
  ``label in labels_r``, one temperature per region (``regions``); ``score_folder`` takes this
  path when ``PRED/dataset.json`` defines regions (``region_report``).
"""

from mls_tutorial.score.core import SCORE_MARGINS, class_gaps, score_cases
from mls_tutorial.score.folder import OUTPUT_FILES, score_folder
from mls_tutorial.score.layouts import (
    LAYOUTS,
    Case,
    ScoreInputError,
    detect_layout,
    read_dataset_json,
    read_label,
    read_probabilities,
)
from mls_tutorial.score.regions import fit_region_temperatures, score_region_cases
from mls_tutorial.score.summary import summary_text
from mls_tutorial.score.temperature import fit_temperature_on_cases

__all__ = [
    "LAYOUTS",
    "OUTPUT_FILES",
    "SCORE_MARGINS",
    "Case",
    "ScoreInputError",
    "class_gaps",
    "detect_layout",
    "fit_region_temperatures",
    "fit_temperature_on_cases",
    "read_dataset_json",
    "read_label",
    "read_probabilities",
    "score_cases",
    "score_folder",
    "score_region_cases",
    "summary_text",
]
