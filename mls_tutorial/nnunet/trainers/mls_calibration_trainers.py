"""nnU-Net v2 trainers with calibration penalties: MbLS, label smoothing (LS) and ECP.

nnU-Net imports this module from the folder named by ``nnUNet_extTrainer`` and asks it for a
class by name (``-tr NAME``). Families (each a subclass of nnU-Net's own trainer, whose loss it
builds unchanged and then extends):

    nnUNetTrainerMbLS    nnU-Net's Dice + CE            + alpha * mean relu(d - m)   m 10, alpha 0.1
    nnUNetTrainerCEMbLS  nnU-Net's CE (nnUNetTrainerCELoss) + the same margin penalty (the paper's form)
    nnUNetTrainerLS      Dice + CE against (1 - alpha) onehot + alpha / K           alpha 0.1
    nnUNetTrainerCELS    CE against the smoothed target
    nnUNetTrainerECP     Dice + CE - alpha * H(softmax)                             alpha 0.1
    nnUNetTrainerCEECP   CE - alpha * H(softmax)

with ``d_k = max_j z_j - z_k`` and the penalties of ``mls_tutorial.nnunet.penalties``. The
defaults m = 10, alpha = 0.1 are the paper's (not the course's validated choice, m = 5 on the
bundled data). Label smoothing is torch's ``CrossEntropyLoss(label_smoothing=alpha)`` inside
nnU-Net's CE.

**Deep supervision.** nnU-Net weights its outputs 1, 1/2, 1/4, ... (the lowest 0, normalised to
sum 1). The penalty is added to the loss of every output *inside* nnU-Net's
``DeepSupervisionWrapper``, so it gets exactly the CE term's per-scale weight: each output is
trained with "loss + penalty" at the same ratio alpha, the weights summing to 1 keep the total
penalty weight at alpha, as on a single-output network, and the full-resolution output that
predicts gets the largest share.

**Knobs by name**, nnU-Net's convention of named variants, so the result folder says what ran:
``FAMILY[_m<margin>][_a<weight>][_<N>epochs][_<N>iters][_seed<N>]`` with ``p`` for a decimal
point, e.g. ``nnUNetTrainerMbLS_m5``, ``nnUNetTrainerLS_a0p05``, ``nnUNetTrainerMbLS_m5_a0p3``.
``_<N>epochs`` / ``_<N>iters`` shorten training (iterations per epoch; validation iterations
``max(1, N // 5)``); ``_seed<N>`` seeds Python, NumPy and torch before nnU-Net builds anything
(with ``nnUNet_n_proc_DA=0`` the augmentation runs in the main process and is seeded too);
``_noval`` skips nnU-Net's final validation (predict the cases with ``nnUNetv2_predict``). The
schedule and seed tokens also apply to nnU-Net's own ``nnUNetTrainer`` and
``nnUNetTrainerCELoss`` (``nnUNetTrainer_20epochs_50iters_seed1``: the baseline on the same
schedule). The values are written to nnU-Net's training log and ``debug.json``.

Region-based (sigmoid) datasets are refused: the margin is defined on the distances between
mutually exclusive softmax logits, which independent sigmoid outputs do not have.
"""

from __future__ import annotations

import functools
import random
import re

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

from mls_tutorial.nnunet.penalties import EntropyPenalty, MarginPenalty, PenalizedLoss, check_knob

#: family -> (nnU-Net trainer it extends, penalty, default knobs)
FAMILIES = {
    "nnUNetTrainerMbLS": (nnUNetTrainer, "margin", {"margin": 10.0, "alpha": 0.1}),
    "nnUNetTrainerCEMbLS": (nnUNetTrainerCELoss, "margin", {"margin": 10.0, "alpha": 0.1}),
    "nnUNetTrainerLS": (nnUNetTrainer, "ls", {"alpha": 0.1}),
    "nnUNetTrainerCELS": (nnUNetTrainerCELoss, "ls", {"alpha": 0.1}),
    "nnUNetTrainerECP": (nnUNetTrainer, "ecp", {"alpha": 0.1}),
    "nnUNetTrainerCEECP": (nnUNetTrainerCELoss, "ecp", {"alpha": 0.1}),
}
#: nnU-Net's own trainers, which take the schedule and seed tokens only
BASELINES = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerCELoss": nnUNetTrainerCELoss}
_NUMBER = r"(\d+(?:p\d+)?)"
_TOKENS = {
    "margin": re.compile(rf"m{_NUMBER}"),
    "alpha": re.compile(rf"a{_NUMBER}"),
    "epochs": re.compile(r"(\d+)epochs"),
    "iters": re.compile(r"(\d+)iters"),
    "seed": re.compile(r"seed(\d+)"),
    "noval": re.compile(r"noval()"),
}
_CUDA = torch.device("cuda")  # nnU-Net's default device argument
GRAMMAR = "FAMILY[_m<margin>][_a<weight>][_<N>epochs][_<N>iters][_seed<N>][_noval], 'p' for '.'"


class CalibrationTrainerMixin:
    """Applies a variant's penalty, schedule and seed to an nnU-Net trainer (see module doc)."""

    penalty_kind: str | None = None
    knobs: dict = {}
    schedule: dict = {}

    def __init__(self, plans, configuration, fold, dataset_json, device=_CUDA):
        seed = self.schedule.get("seed")
        if seed is not None:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        name = type(self).__name__
        if self.penalty_kind is not None and self.label_manager.has_regions:
            raise ValueError(
                f"{name}: this dataset is region-based (sigmoid outputs; dataset.json gives "
                "regions as lists of labels). The calibration penalties are defined on softmax "
                "logit distances d_k = max_j z_j - z_k between mutually exclusive classes, which "
                "independent sigmoid outputs do not have: use a label-based dataset."
            )
        if "epochs" in self.schedule:
            self.num_epochs = self.schedule["epochs"]
        if "iters" in self.schedule:
            self.num_iterations_per_epoch = self.schedule["iters"]
            self.num_val_iterations_per_epoch = max(1, self.schedule["iters"] // 5)
        #: what ran, also in debug.json (nnU-Net writes every plain attribute there)
        self.calibration = {"penalty": self.penalty_kind, **self.knobs, **self.schedule}
        self.print_to_log_file(f"{name}: {self.describe()}")

    def describe(self) -> str:
        what = {
            None: "no penalty (nnU-Net's own loss)",
            "margin": "+ alpha * mean relu(d - margin), d_k = max_j z_j - z_k",
            "ls": "CE with label smoothing alpha (target (1 - alpha) onehot + alpha / K)",
            "ecp": "- alpha * mean entropy of softmax",
        }[self.penalty_kind]
        knobs = ", ".join(f"{k}={v:g}" for k, v in {**self.knobs, **self.schedule}.items())
        where = "; on every deep-supervision output, weighted as CE" if self.penalty_kind else ""
        return f"{what}; {knobs or 'defaults'}{where}"

    def _build_loss(self):
        loss = super()._build_loss()
        wrapper = loss if isinstance(loss, DeepSupervisionWrapper) else None
        inner = wrapper.loss if wrapper is not None else loss
        ignore = self.label_manager.ignore_label
        if self.penalty_kind == "ls":
            ce = inner.ce if isinstance(inner, DC_and_CE_loss) else inner
            ce.label_smoothing = self.knobs["alpha"]
        elif self.penalty_kind == "margin":
            inner = PenalizedLoss(inner, MarginPenalty(ignore_label=ignore, **self.knobs))
        elif self.penalty_kind == "ecp":
            inner = PenalizedLoss(inner, EntropyPenalty(self.knobs["alpha"], ignore_label=ignore))
        if wrapper is None:
            return inner
        wrapper.loss = inner
        return wrapper

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.schedule.get("noval"):
            self.print_to_log_file("_noval: nnU-Net's final validation skipped")
            return
        super().perform_actual_validation(save_probabilities)


def _number(text: str) -> float:
    return float(text.replace("p", "."))


def _family(name: str) -> str | None:
    for fam in sorted((*FAMILIES, *BASELINES), key=len, reverse=True):
        if name == fam or name.startswith(fam + "_"):
            return fam
    return None


def parse_variant(name: str) -> tuple[str, dict, dict] | None:
    """``name`` -> (family, knobs, schedule); ``None`` if ``name`` is none of this module's.

    A name of a penalty family that does not parse raises ``ValueError`` naming the token."""
    fam = _family(name)
    if fam is None:
        return None
    ours = fam in FAMILIES
    tokens = [t for t in name[len(fam) :].split("_") if t] if name != fam else []
    knobs = dict(FAMILIES[fam][2]) if ours else {}
    schedule: dict = {}
    seen = set()

    def bad(msg: str):
        if not ours:  # a foreign nnUNetTrainer_* class: let nnU-Net keep searching
            return None
        raise ValueError(f"trainer {name!r}: {msg}; variant names are {GRAMMAR}")

    for tok in tokens:
        key = next((k for k, rx in _TOKENS.items() if rx.fullmatch(tok)), None)
        if key is None:
            neg = tok[:1] in "ma" and tok[1:2] == "-"
            return bad(f"{'margin and weight must be >= 0' if neg else 'unknown token'} {tok!r}")
        if key in seen:
            return bad(f"token {key} given twice")
        if key in ("margin", "alpha") and (not ours or key not in knobs):
            return bad(f"{fam} has no {key}")
        seen.add(key)
        value = _TOKENS[key].fullmatch(tok).group(1)
        if key in ("margin", "alpha"):
            knobs[key] = check_knob(key, _number(value))
        elif key == "noval":
            schedule[key] = 1
        elif int(value) < (0 if key == "seed" else 1):
            return bad(f"{key} must be >= 1, got {tok!r}")
        else:
            schedule[key] = int(value)
    if not ours and not tokens:
        return None
    return fam, knobs, schedule


@functools.cache
def trainer_class(name: str) -> type | None:
    """The trainer class called ``name`` (built once), or ``None`` if not one of ours."""
    parsed = parse_variant(name)
    if parsed is None:
        return None
    fam, knobs, schedule = parsed
    base, kind = (FAMILIES[fam][:2]) if fam in FAMILIES else (BASELINES[fam], None)
    attrs = {"penalty_kind": kind, "knobs": knobs, "schedule": schedule, "__module__": __name__}
    attrs["__doc__"] = f"{fam} ({kind or 'no penalty'}), knobs {knobs}, schedule {schedule}."
    return type(name, (CalibrationTrainerMixin, base), attrs)


def __getattr__(name: str):
    # nnU-Net asks hasattr(module, NAME) for the -tr name: build the variant on demand
    cls = trainer_class(name) if not name.startswith("_") else None
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls


nnUNetTrainerMbLS = trainer_class("nnUNetTrainerMbLS")
nnUNetTrainerCEMbLS = trainer_class("nnUNetTrainerCEMbLS")
nnUNetTrainerLS = trainer_class("nnUNetTrainerLS")
nnUNetTrainerCELS = trainer_class("nnUNetTrainerCELS")
nnUNetTrainerECP = trainer_class("nnUNetTrainerECP")
nnUNetTrainerCEECP = trainer_class("nnUNetTrainerCEECP")
