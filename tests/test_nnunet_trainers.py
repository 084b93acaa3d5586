"""The nnU-Net trainers' losses against float64 references of their stated formulas, on
nnU-Net-shaped deep-supervision outputs (a list of ``(B, K, h, w)`` logits, targets ``(B, 1, h,
w)`` float), built through nnU-Net's own ``_build_loss``. Needs nnunetv2 (CI's nnU-Net venv)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from mls_tutorial.nnunet import trainer_folder  # noqa: E402
from mls_tutorial.nnunet.penalties import EntropyPenalty, MarginPenalty  # noqa: E402
from mls_tutorial.nnunet.trainers import mls_calibration_trainers as mod  # noqa: E402

STRIDES = [[1, 1], [2, 2], [2, 2], [2, 2]]  # 3 deep-supervision outputs: weights 2/3, 1/3, 0
SHAPE = (16, 12)  # non-square
LABELS = {"background": 0, "a": 1, "b": 2}
K = len(LABELS)


def _plans() -> dict:
    return {
        "dataset_name": "Dataset998_Loss",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, *SHAPE],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {
            "2d": {
                "data_identifier": "nnUNetPlans_2d",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(SHAPE),
                "median_image_size_in_voxels": list(SHAPE),
                "spacing": [1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {"n_stages": 4, "strides": STRIDES},
                    "_kw_requires_import": [],
                },
                "batch_dice": True,
            }
        },
        "continue_training": False,
    }


def _trainer(name: str, tmp_path, monkeypatch, labels=None, **dataset_keys):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    dataset = {"labels": labels or LABELS, "channel_names": {"0": "x"}, "numTraining": 2}
    dataset.update(dataset_keys)
    cls = getattr(mod, name)
    return cls(_plans(), "2d", 0, dataset, device=torch.device("cpu"))


def _outputs(seed: int, ignore: int | None = None, dtype=torch.float32):
    """Logits at scales 1, 1/2, 1/4 and their targets, large enough for the margin to bind."""
    g = torch.Generator().manual_seed(seed)
    outs, targets = [], []
    for s in (1, 2, 4):
        h, w = SHAPE[0] // s, SHAPE[1] // s
        outs.append((torch.randn(2, K, h, w, generator=g) * 8).to(dtype).requires_grad_())
        t = torch.randint(0, K, (2, 1, h, w), generator=g).float()
        if ignore is not None:
            t[:, :, : h // 3] = float(ignore)
        targets.append(t)
    return outs, targets


# ------------------------------------------------------------------ float64 references


def _ds_weights(n: int) -> np.ndarray:
    w = np.array([1 / 2**i for i in range(n)])
    w[-1] = 0
    return w / w.sum()


def _log_softmax(z: np.ndarray) -> np.ndarray:  # z (B, K, ...)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _valid(t: np.ndarray, ignore) -> np.ndarray:
    return np.ones(t[:, 0].shape, bool) if ignore is None else t[:, 0] != ignore


def _ce(z, t, ignore=None, smooth=0.0):
    logp = _log_softmax(z)
    y = np.where(_valid(t, ignore), t[:, 0], 0).astype(int)
    nll = -np.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    per = (1 - smooth) * nll + smooth * (-logp.mean(axis=1))
    return per[_valid(t, ignore)].mean()


def _margin(z, t, m, alpha, ignore=None):
    d = z.max(axis=1, keepdims=True) - z
    per = alpha * np.maximum(d - m, 0).mean(axis=1)
    return per[_valid(t, ignore)].mean()


def _entropy(z, t, beta, ignore=None):
    logp = _log_softmax(z)
    per = beta * (np.exp(logp) * logp).sum(axis=1)
    return per[_valid(t, ignore)].mean()


def _nnunet_default(outs, targets, trainer_kwargs):
    """nnU-Net's own default loss (Dice + CE), one output at a time, in float64."""
    base = nnUNetTrainer._build_loss(trainer_kwargs).loss
    return [
        float(base(o.detach().double(), t.double())) for o, t in zip(outs, targets, strict=True)
    ]


def _reference(name, outs, targets, trainer, ignore=None):
    zs = [o.detach().double().numpy() for o in outs]
    ts = [t.double().numpy() for t in targets]
    fam, knobs, _ = mod.parse_variant(name)
    kind = mod.FAMILIES[fam][1]
    dice_ce = fam in ("nnUNetTrainerMbLS", "nnUNetTrainerLS", "nnUNetTrainerECP")
    per_scale = []
    for i, (z, t) in enumerate(zip(zs, ts, strict=True)):
        smooth = knobs["alpha"] if kind == "ls" else 0.0
        if dice_ce:  # nnU-Net's Dice + CE, its CE replaced by the (smoothed) float64 CE
            base = _nnunet_default(outs, targets, trainer)[i] - _ce(z, t, ignore)
            base += _ce(z, t, ignore, smooth)
        else:
            base = _ce(z, t, ignore, smooth)
        if kind == "margin":
            base += _margin(z, t, knobs["margin"], knobs["alpha"], ignore)
        elif kind == "ecp":
            base += _entropy(z, t, knobs["alpha"], ignore)
        per_scale.append(base)
    return float(np.dot(_ds_weights(len(zs)), per_scale))


NAMES = [
    "nnUNetTrainerMbLS",
    "nnUNetTrainerMbLS_m2_a0p3",
    "nnUNetTrainerCEMbLS",
    "nnUNetTrainerCEMbLS_m5",
    "nnUNetTrainerLS",
    "nnUNetTrainerCELS_a0p2",
    "nnUNetTrainerECP",
    "nnUNetTrainerCEECP_a0p3",
]


@pytest.mark.parametrize("name", NAMES)
def test_loss_equals_float64_reference(name, tmp_path, monkeypatch):
    trainer = _trainer(name, tmp_path, monkeypatch)
    loss = trainer._build_loss()
    outs, targets = _outputs(1)
    got = float(loss(outs, targets).detach())
    want = _reference(name, outs, targets, trainer)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    if "MbLS" in name:  # the margin binds on these logits: the penalty is not a no-op
        z0, t0 = outs[0].detach().double().numpy(), targets[0].numpy()
        assert _margin(z0, t0, 10, 0.1) > 0.1


@pytest.mark.parametrize("spatial", [(9, 7), (3, 9, 7)])  # 2D and 3D configurations
def test_margin_penalty_is_the_project_margin_loss_minus_ce(spatial):
    """A peer: the course's MarginLoss (CE + the same penalty) minus torch's CE."""
    from mls_tutorial.losses import MarginLoss

    z = torch.randn(3, 4, *spatial, dtype=torch.float64) * 10
    y = torch.randint(0, 4, (3, *spatial))
    peer = MarginLoss(margin=3.0, alpha=0.2)(z, y) - torch.nn.functional.cross_entropy(z, y)
    assert float(MarginPenalty(3.0, 0.2)(z)) == pytest.approx(float(peer), rel=1e-10)


@pytest.mark.parametrize("name", ["nnUNetTrainerMbLS_m2", "nnUNetTrainerCEECP", "nnUNetTrainerLS"])
def test_ignore_label_is_excluded(name, tmp_path, monkeypatch):
    labels = {**LABELS, "ignore": K}
    trainer = _trainer(name, tmp_path, monkeypatch, labels=labels)
    assert trainer.label_manager.ignore_label == K
    loss = trainer._build_loss()
    outs, targets = _outputs(2, ignore=K)
    value = loss(outs, targets)
    assert float(value.detach()) == pytest.approx(
        _reference(name, outs, targets, trainer, ignore=K), rel=1e-5, abs=1e-6
    )
    value.backward()
    for o, t in zip(outs[:2], targets[:2], strict=True):  # nothing flows into ignored voxels
        ignored = (t[:, 0] == K).unsqueeze(1).expand_as(o)
        assert ignored.any() and o.grad[ignored].abs().max() == 0


def test_penalties_in_float32_and_finite_under_bf16_autocast(tmp_path, monkeypatch):
    trainer = _trainer("nnUNetTrainerMbLS_m2", tmp_path, monkeypatch)
    loss = trainer._build_loss()
    conv = torch.nn.Conv2d(1, K, 3, padding=1)
    torch.nn.init.normal_(conv.weight, std=5.0)
    x = [torch.randn(2, 1, SHAPE[0] // s, SHAPE[1] // s) for s in (1, 2, 4)]
    _, targets = _outputs(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [conv(xi) for xi in x]
        assert outs[0].dtype == torch.bfloat16
        penalty = MarginPenalty(2.0, 0.1)(outs[0])
        value = loss(outs, targets)
    assert penalty.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("penalty", [MarginPenalty(1.0, 0.5), EntropyPenalty(0.3, ignore_label=2)])
def test_penalties_compile_without_graph_breaks(penalty):
    z = torch.randn(2, 3, 8, 6) * 4
    t = torch.randint(0, 3, (2, 1, 8, 6)).float()
    compiled = torch.compile(penalty, backend="aot_eager", fullgraph=True)
    assert float(compiled(z, t)) == pytest.approx(float(penalty(z, t)), rel=1e-6)


def test_region_based_dataset_is_refused(tmp_path, monkeypatch):
    regions = {"background": 0, "whole": [1, 2], "core": 2}
    with pytest.raises(ValueError, match="region-based"):
        _trainer("nnUNetTrainerMbLS", tmp_path, monkeypatch, regions, regions_class_order=[1, 2])


def test_knobs_written_to_training_log_and_debug_json(tmp_path, monkeypatch):
    trainer = _trainer("nnUNetTrainerMbLS_m5_a0p3_2epochs_3iters_seed7", tmp_path, monkeypatch)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (2, 3)
    log = open(trainer.log_file).read()
    assert "margin=5, alpha=0.3, epochs=2, iters=3, seed=7" in log
    trainer.loss = trainer._build_loss()
    trainer._save_debug_information()
    debug = json.loads((tmp_path / "results").joinpath(
        "Dataset998_Loss", "nnUNetTrainerMbLS_m5_a0p3_2epochs_3iters_seed7__nnUNetPlans__2d",
        "fold_0", "debug.json").read_text())  # fmt: skip
    assert "'margin': 5.0" in debug["calibration"] and "'alpha': 0.3" in debug["calibration"]
    assert "MarginPenalty(margin=5.0, alpha=0.3" in debug["loss"]


def test_baseline_schedule_variant_keeps_nnunet_loss(tmp_path, monkeypatch):
    trainer = _trainer("nnUNetTrainer_2epochs_4iters", tmp_path, monkeypatch)
    assert isinstance(trainer, nnUNetTrainer) and trainer.num_iterations_per_epoch == 4
    outs, targets = _outputs(4)
    assert float(trainer._build_loss()(outs, targets).detach()) == pytest.approx(
        float(nnUNetTrainer._build_loss(trainer)(outs, targets).detach()), rel=1e-7
    )


@pytest.mark.parametrize("name", ["nnUNetTrainer", "nnUNetTrainerMbLS"])
def test_deep_supervision_weights_are_nnunets(name, tmp_path, monkeypatch):
    """The torch-only mirror the course teaches with equals nnU-Net's own wrapper weights."""
    from mls_tutorial.nnunet.penalties import deep_supervision_weights

    wrapper = _trainer(name, tmp_path, monkeypatch)._build_loss()
    got = deep_supervision_weights(len(wrapper.weight_factors))
    assert got == pytest.approx(list(wrapper.weight_factors), rel=1e-12)


def test_variant_names():
    assert mod.parse_variant("nnUNetTrainerMbLS_m5") == (
        "nnUNetTrainerMbLS",
        {"margin": 5.0, "alpha": 0.1},
        {},
    )
    fam, knobs, schedule = mod.parse_variant("nnUNetTrainerCEMbLS_a0p05_m2p5_3epochs_seed0")
    assert knobs == {"margin": 2.5, "alpha": 0.05} and schedule == {"epochs": 3, "seed": 0}
    assert mod.trainer_class("nnUNetTrainerMbLS_m5") is mod.trainer_class("nnUNetTrainerMbLS_m5")
    assert hasattr(mod, "nnUNetTrainerLS_a0p2") and not hasattr(mod, "SomethingElse")
    # names of other trainers are left to nnU-Net's search (no error from this module)
    for foreign in ("nnUNetTrainerFoo", "nnUNetTrainer_myVariant", "nnUNetTrainerMbLSX"):
        assert mod.parse_variant(foreign) is None and not hasattr(mod, foreign)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nnUNetTrainerMbLS_m-5", "margin and weight must be >= 0"),
        ("nnUNetTrainerMbLS_foo", "unknown token 'foo'"),
        ("nnUNetTrainerLS_m5", "has no margin"),
        ("nnUNetTrainerMbLS_m5_m3", "given twice"),
        ("nnUNetTrainerECP_0epochs", "epochs must be >= 1"),
    ],
)
def test_bad_variant_names(name, message):
    with pytest.raises(ValueError, match=message):
        mod.parse_variant(name)
    with pytest.raises(ValueError, match="variant names are"):
        hasattr(mod, name)  # nnU-Net's lookup sees the message, not "trainer not found"


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA torchvision beside a CPU torch raises RuntimeError
        return False
    return True


def test_nnunet_finds_the_trainers_through_the_env_var(monkeypatch, tmp_path):
    if not _torchvision_importable():
        pytest.skip(
            "torchvision does not import beside this torch, and nnU-Net's trainer search needs "
            "it: install the matching CPU torchvision (CI: .ci/torchvision_cpu_shim.py)"
        )
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("nnUNet_extTrainer", f"{other}{__import__('os').pathsep}{trainer_folder()}")
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMbLS_m5")
    assert cls.__name__ == "nnUNetTrainerMbLS_m5" and cls.knobs["margin"] == 5.0
    with pytest.raises(ValueError, match="unknown token"):
        recursive_find_trainer_class_by_name("nnUNetTrainerMbLS_typo")
    monkeypatch.delenv("nnUNet_extTrainer")
    with pytest.raises(RuntimeError, match="nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerCEMbLS")


def test_seed_token_pairs_a_penalty_with_its_baseline(tmp_path, monkeypatch):
    """Same seed: the random streams nnU-Net builds the network and draws batches from are the
    same after ``__init__`` for the penalty and its baseline; another seed differs."""

    def draws(name):
        _trainer(name, tmp_path, monkeypatch)
        return torch.rand(4).tolist(), np.random.rand(4).tolist()

    a = draws("nnUNetTrainerMbLS_seed3")
    assert a == draws("nnUNetTrainer_seed3") == draws("nnUNetTrainerCEECP_seed3")
    assert a != draws("nnUNetTrainerMbLS_seed4")
