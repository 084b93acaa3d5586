"""CALS and the adaptive-loss protocol: float64 formula, multiplier update, rho schedule, fit.

References are written here from the published formulas (PHR, P2, P3 penalties; the update
``lambda_k = mean clamp(P'(h_k))``; rho x gamma when the mean constraint did not improve by tau),
never from the library's helpers.
"""

from __future__ import annotations

import pytest
import torch
from _logits import IGNORE, make

from mls_tutorial.data import build_data
from mls_tutorial.losses import AdaptiveLoss, CALSLoss, build_loss, is_adaptive
from mls_tutorial.models import build_unet
from mls_tutorial.train import CHECKPOINT_NAME, fit, load_checkpoint


def ref_penalty(name, h, lam, rho):
    """Value of the penalty, elementwise, by cases (float64)."""
    if name == "phr":
        x = lam + rho * h
        return torch.where(x >= 0, (x * x - lam * lam) / (2 * rho), -lam * lam / (2 * rho))
    below = lam * h / (1 - rho * torch.clamp(h, max=0))
    above = lam * h + lam * rho * h * h
    if name == "p2":
        above = above + rho * rho * h**3 / 6
    return torch.where(h >= 0, above, below)


def ref_cals(z, y, lam, rho, margin, penalty="phr", normalize=True):
    k = z.shape[1]
    zk = z.movedim(1, -1).reshape(-1, k)
    yk = y.reshape(-1)
    keep = yk != IGNORE
    zk, yk = zk[keep], yk[keep]
    logp = zk - torch.logsumexp(zk, 1, keepdim=True)
    ce = -logp[torch.arange(len(yk)), yk].mean()
    h = zk.max(1, keepdim=True).values - zk - margin
    if normalize:
        h = h / margin
    return ce + ref_penalty(penalty, h, lam, rho).mean()


def _grads(loss_fn, ref_fn, z, y):
    za = z.clone().requires_grad_(True)
    value = loss_fn(za, y)
    (grad,) = torch.autograd.grad(value, za)
    zr = z.clone().requires_grad_(True)
    ref = ref_fn(zr, y)
    (ref_grad,) = torch.autograd.grad(ref, zr)
    return value, grad, ref, ref_grad


@pytest.mark.parametrize("penalty", ["phr", "p2", "p3"])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 5, 6), (2, 4, 3, 4, 3)])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_cals_value_and_gradient_match_float64_formula(penalty, shape, ignore_frac):
    z, y = make(shape, seed=1, ignore_frac=ignore_frac)
    k = shape[1]
    g = torch.Generator().manual_seed(9)
    lam = torch.rand(k, generator=g, dtype=torch.float64) * 2
    rho = 1 + torch.rand(k, generator=g, dtype=torch.float64) * 4
    loss = CALSLoss(margin=3.0, penalty=penalty)
    loss.lambdas, loss.rho = lam, rho
    value, grad, ref, ref_grad = _grads(
        loss, lambda a, b: ref_cals(a, b, lam, rho, 3.0, penalty), z, y
    )
    assert value.item() == pytest.approx(ref.item(), abs=1e-10, rel=1e-10)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-8)


def test_cals_unnormalised_constraint_and_both_phr_branches_active():
    z, y = make((2, 3, 5, 6), seed=2)
    lam, rho = torch.tensor([0.5, 1.0, 2.0]).double(), torch.tensor([1.0, 2.0, 3.0]).double()
    loss = CALSLoss(margin=4.0, normalize=False)
    loss.lambdas, loss.rho = lam, rho
    h = z.amax(1, keepdim=True) - z - 4.0
    x = lam.view(1, 3, 1, 1) + rho.view(1, 3, 1, 1) * h
    assert (x >= 0).any() and (x < 0).any()
    value, grad, ref, ref_grad = _grads(
        loss, lambda a, b: ref_cals(a, b, lam, rho, 4.0, normalize=False), z, y
    )
    assert value.item() == pytest.approx(ref.item(), abs=1e-10)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=1e-8)


def test_cals_builds_with_no_argument_and_infers_k_lazily():
    loss = build_loss("cals")
    assert loss.lambdas is None and loss.rho is None and is_adaptive(loss)
    assert isinstance(loss, AdaptiveLoss) and not is_adaptive(build_loss("mbls"))
    z, y = make((2, 4, 3, 3), seed=3)
    loss(z.float(), y)
    assert loss.lambdas.tolist() == [1e-6] * 4 and loss.rho.tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="num_classes=4"):
        loss(*make((2, 3, 3, 3)))


def _observe(loss, d_pixels):
    """One validation pass over K = 2 pixels with logits (0, -d): d_1 = d, d_0 = 0."""
    z = torch.stack([torch.zeros(len(d_pixels)), -torch.tensor(d_pixels)], dim=1).double()
    loss.begin_validation()
    loss.observe(z, torch.zeros(len(d_pixels), dtype=torch.long))
    loss.end_validation()


def test_multiplier_update_is_the_clamped_mean_derivative():
    m = 10.0
    loss = CALSLoss(num_classes=2, margin=m, rho_step=0)
    loss.lambdas, loss.rho = [0.5, 0.2], [2.0, 3.0]
    d = [4.0, 12.0, 25.0]
    _observe(loss, d)
    # class 0: h = -1 for every pixel: x = 0.5 - 2 < 0, P' = 0 -> clamped to lambda_min
    # class 1: h = (d - 10) / 10 = -0.6, 0.2, 1.5; x = 0.2 + 3 h = -1.6, 0.8, 4.7 -> 0, 0.8, 4.7
    expect_1 = (1e-6 + 0.8 + 4.7) / 3
    assert loss.lambdas.tolist() == pytest.approx([1e-6, expect_1], rel=1e-12)
    assert loss.rho.tolist() == [2.0, 3.0]  # rho_step=0: never grows
    assert loss.history()["constraint"] == pytest.approx([-1.0, (-0.6 + 0.2 + 1.5) / 3])
    big = CALSLoss(num_classes=2, margin=m, lambda_max=2.0, rho_step=0)
    big.lambdas, big.rho = [0.5, 0.2], [2.0, 3.0]
    _observe(big, d)
    assert big.lambdas.tolist() == pytest.approx([1e-6, (1e-6 + 0.8 + 2.0) / 3], rel=1e-12)


def test_rho_schedule_on_a_hand_made_sequence():
    m = 10.0
    loss = CALSLoss(num_classes=2, margin=m, rho_step=2, rho_max=1.5)
    # mean constraint of class 1 per validation (h = (d - m) / m); class 0 has h = -1 always
    hbar = [0.5, 0.5, 0.1, 0.05, -0.2, -0.1, 0.3, 0.3, 0.3, 0.3]
    # growth considered at validations 2, 4, 6, 8, 10 against the previous one:
    # v2: 0.5 > 0.9 * 0.5 -> x1.2; v4: 0.05 < 0.09 -> kept; v6: -0.1 > 0.9 * max(-0.2, 0)? no;
    # v8: 0.3 > 0.27 -> x1.2 = 1.44; v10: 0.3 > 0.27 -> 1.728 capped at rho_max 1.5
    want = [1.0, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.44, 1.44, 1.5]
    got = []
    for h in hbar:
        _observe(loss, [m * (1 + h)])
        got.append(loss.rho.tolist())
    assert [r[1] for r in got] == pytest.approx(want, rel=1e-12)
    assert all(r[0] == 1.0 for r in got)  # class 0 satisfies its constraint: rho stays
    assert loss.validations == len(hbar)


def test_end_validation_sums_through_all_reduce_and_empty_pass_changes_nothing():
    loss = CALSLoss(num_classes=2, margin=10.0, rho_step=0)
    loss.lambdas, loss.rho = [0.5, 0.2], [2.0, 3.0]
    seen = []

    def doubled(t):  # another "rank" with the same data: sums and count double, means unchanged
        seen.append(t.clone())
        return t * 2

    loss.begin_validation()
    loss.observe(torch.tensor([[0.0, -25.0]]).double(), torch.tensor([0]))
    loss.end_validation(doubled)
    assert seen[0][-1].item() == 1.0 and loss.lambdas.tolist() == pytest.approx([1e-6, 4.7])
    loss.begin_validation()
    loss.end_validation()
    assert loss.lambdas.tolist() == pytest.approx([1e-6, 4.7]) and loss.validations == 1


def test_state_dict_round_trip_and_setters_check_values():
    loss = CALSLoss(num_classes=3, margin=5.0, rho_step=1)
    z, y = make((2, 3, 4, 4), seed=4)
    for _ in range(2):
        loss.begin_validation()
        loss.observe(z, y)
        loss.end_validation()
    state = loss.adaptive_state_dict()
    other = CALSLoss(margin=5.0, rho_step=1)
    other.load_adaptive_state_dict(state)
    for key in ("lambdas", "rho", "prev_constraint"):
        assert torch.equal(getattr(other, key), getattr(loss, key)), key
    assert other.validations == 2 and other.history() == loss.history()
    with pytest.raises(ValueError, match="lambdas"):
        loss.lambdas = [1.0, 2.0]
    with pytest.raises(ValueError, match="rho"):
        loss.rho = [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="lambdas"):
        loss.lambdas = [1.0, float("nan"), 1.0]
    with pytest.raises(ValueError, match="3 classes"):
        CALSLoss(num_classes=2).load_adaptive_state_dict(state)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"penalty": "l2"}, "penalty"),
        ({"margin": 0.0}, "margin"),
        ({"margin": -1.0}, "margin"),
        ({"lambda_min": 0.0}, "lambda_min"),
        ({"rho_min": 2.0, "rho_max": 1.0}, "rho_min"),
        ({"rho_step": -1}, "rho_step"),
        ({"normalize": "yes"}, "normalize"),
        ({"rho_gamma": float("nan")}, "rho_gamma"),
    ],
)
def test_cals_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        CALSLoss(**kw)


def test_cals_bad_inputs():
    loss = CALSLoss()
    z, y = make((2, 3, 4, 4), seed=8)
    with pytest.raises(ValueError, match="target has values outside"):
        loss(z, y + 5)
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(z.clone().fill_(float("inf")), y)
    with pytest.raises(ValueError, match="every target pixel"):
        loss.observe(z, torch.full_like(y, IGNORE))


# ------------------------------------------------------------------------------ fit and resume
@pytest.fixture(scope="module")
def data():
    return build_data("synthetic", n_train=16, size=32, slices=3, n_val=2, n_test=1, seed=3)


def _model():
    torch.manual_seed(0)
    return build_unet(1, 4, "tiny")


class _CALSStopAt(CALSLoss):
    """CALS that raises KeyboardInterrupt at the given training call."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at, self.calls = at, 0

    def forward(self, logits, target):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(logits, target)


CALS_KW = dict(margin=0.1, rho_step=1)  # a small margin: penalty and rho act on a short run


def _fit(data, loss, **kw):
    model = _model()
    kw = {
        "iterations": 8,
        "batch_size": 4,
        "progress": False,
        "device": "cpu",
        "val_every": 2,
        **kw,
    }
    return model, fit(model, loss, data, **kw)


def test_fit_updates_multipliers_and_records_them(data):
    loss = CALSLoss(**CALS_KW)
    _, h = _fit(data, loss)
    states = h["loss_state"]
    assert len(states) == len(h["val_iteration"]) == 4
    assert states[-1]["lambda"] == loss.lambdas.tolist() and loss.validations == 4
    assert states[0]["lambda"] != [1e-6] * 4  # the first validation moved them
    assert max(max(s["rho"]) for s in states) > 1.0  # rho grew at least once


def test_resumed_cals_run_equals_an_uninterrupted_one(data, tmp_path):
    straight = CALSLoss(**CALS_KW)
    model_a, ha = _fit(data, straight, run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _fit(data, _CALSStopAt(6, **CALS_KW), run_dir=tmp_path / "b")
    ck = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert ck["iteration"] == 4 and ck["loss_state"]["validations"] == 2
    resumed = CALSLoss(**CALS_KW)
    model_b, hb = _fit(data, resumed, run_dir=tmp_path / "b", resume=True)
    assert hb["loss"] == ha["loss"] and hb["loss_state"] == ha["loss_state"]
    assert torch.equal(resumed.lambdas, straight.lambdas)
    assert torch.equal(resumed.rho, straight.rho)
    for (key, a), b in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    a = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)["loss_state"]
    b = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["loss_state"]
    assert torch.equal(a["lambdas"], b["lambdas"]) and a["validations"] == b["validations"] == 4


def test_resume_with_an_adaptive_loss_needs_its_state(data, tmp_path):
    _fit(data, build_loss("ce"), run_dir=tmp_path, iterations=2)
    with pytest.raises(ValueError, match="no state for the adaptive loss"):
        _fit(data, CALSLoss(), run_dir=tmp_path, iterations=4, resume=True)
