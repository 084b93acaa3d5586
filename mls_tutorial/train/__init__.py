"""Training and evaluation: ``fit``, ``evaluate``, temperature scaling, atomic checkpoints.

    from mls_tutorial.train import fit, evaluate, fit_temperature

- ``engine``: ``fit`` (iteration-based, AMP on CUDA, seeded, validation and model selection,
  atomic checkpoints, resume, NaN/inf guard, DDP under torchrun);
- ``evaluation``: ``evaluate`` on whole volumes (Dice, HD95 in mm, calibration, logit distances,
  error against true probabilities); ``evaluate_true_probabilities`` (the reference row);
- ``temperature``: ``fit_temperature`` / ``optimal_temperature`` (post-hoc scaling);
- ``checkpoint``: atomic ``save_checkpoint`` / ``load_checkpoint`` (``weights_only=True``),
  ``write_json`` / ``read_json``;
- ``sampling``: the seeded, resumable batch stream; ``distributed``: torchrun helpers.
"""

from mls_tutorial.train.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_json,
)
from mls_tutorial.train.engine import VAL_METRICS, fit
from mls_tutorial.train.evaluation import evaluate, evaluate_true_probabilities, predict_logits
from mls_tutorial.train.sampling import StreamBatchSampler, seed_everything
from mls_tutorial.train.temperature import fit_temperature, optimal_temperature

__all__ = [
    "CHECKPOINT_NAME",
    "StreamBatchSampler",
    "VAL_METRICS",
    "evaluate",
    "evaluate_true_probabilities",
    "fit",
    "fit_temperature",
    "load_checkpoint",
    "optimal_temperature",
    "predict_logits",
    "read_json",
    "save_checkpoint",
    "seed_everything",
    "write_json",
]
