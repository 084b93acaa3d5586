"""mls_tutorial.losses against float64 formulas written here, MONAI as a peer, and properties."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mls_tutorial.losses import (
    LOSS_NAMES,
    ACLSLoss,
    CALSLoss,
    ConfidencePenaltyLoss,
    CrossEntropyLoss,
    DiceCELoss,
    FocalLoss,
    HardL1ACELoss,
    LabelSmoothingLoss,
    MarginLoss,
    MDCALoss,
    NACLLoss,
    SoftL1ACELoss,
    SVLSLoss,
    build_loss,
    logit_distances,
    svls_kernel,
)
from mls_tutorial.losses.margin import _MarginCrossEntropy
from mls_tutorial.losses.spatial import _SoftTargetCrossEntropy

IGNORE = -100
SHAPES = {"cls": (5, 3), "2d": (2, 3, 5, 6), "3d": (2, 3, 3, 4, 5)}


def make(shape, seed=0, scale=4.0, ignore_frac=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    if ignore_frac:
        drop = torch.rand(y.shape, generator=g) < ignore_frac
        drop.view(-1)[0] = False  # keep at least one pixel
        y = y.masked_fill(drop, IGNORE)
    return z, y


# ----------------------------------------------------------------------------- float64 references
def _logp(z):
    z = z.double()
    return z - torch.logsumexp(z, dim=1, keepdim=True)


def _onehot(y, k):
    """(N, K, *spatial) float64 one-hot, zero on ignored pixels."""
    valid = y != IGNORE
    oh = torch.stack([(y == c) & valid for c in range(k)], dim=1)
    return oh.double()


def _masked_mean(per_pixel, y):
    valid = y != IGNORE
    return per_pixel[valid].sum() / valid.sum()


def ref_ce(z, y):
    return _masked_mean(-(_onehot(y, z.shape[1]) * _logp(z)).sum(1), y)


def ref_ls(z, y, a=0.1):
    k = z.shape[1]
    q = (1 - a) * _onehot(y, k) + a / k
    return _masked_mean(-(q * _logp(z)).sum(1), y)


def ref_ecp(z, y, beta=0.1, average=False):
    logp = _logp(z)
    entropy = -(logp.exp() * logp).sum(1)
    if average:
        entropy = entropy / z.shape[1]
    ce = -(_onehot(y, z.shape[1]) * logp).sum(1)
    return _masked_mean(ce - beta * entropy, y)


def ref_focal(z, y, gamma=3.0):
    logp_y = (_onehot(y, z.shape[1]) * _logp(z)).sum(1)
    return _masked_mean(-((1 - logp_y.exp()) ** gamma) * logp_y, y)


def ref_margin_term(z, y, m):
    z = z.double()
    d = z.max(dim=1, keepdim=True).values - z
    return _masked_mean(torch.relu(d - m).mean(1), y)


def ref_mbls(z, y, m=10.0, a=0.1):
    return ref_ce(z, y) + a * ref_margin_term(z, y, m)


def ref_svls_kernel(k, sigma, dims):
    """Gaussian weights on the k^dims grid, centre := sum of the others, normalised (numpy)."""
    r = k // 2
    w = np.zeros((k,) * dims)
    for off in itertools.product(range(-r, r + 1), repeat=dims):
        w[tuple(o + r for o in off)] = math.exp(-sum(o * o for o in off) / (2 * sigma**2))
    w /= w.sum()
    w[(r,) * dims] = 0.0
    w[(r,) * dims] = w.sum()
    return w / w.sum()


def _window_sum(x, w, mode):
    """sum_o w[o] x[p + o] over the window, edge-replicated (mode 'edge') or zero padded; numpy."""
    k, dims = w.shape[0], w.ndim
    r = k // 2
    pad = [(0, 0), (0, 0)] + [(r, r)] * dims
    xp = np.pad(x, pad, mode=mode) if mode == "edge" else np.pad(x, pad)
    out = np.zeros_like(x)
    size = x.shape[2:]
    for idx in itertools.product(range(k), repeat=dims):
        sl = tuple(slice(i, i + n) for i, n in zip(idx, size, strict=True))
        out += w[idx] * xp[(slice(None), slice(None), *sl)]
    return out


def ref_svls(z, y, sigma=1.0, ks=3):
    dims = z.dim() - 2
    w = ref_svls_kernel(ks, sigma, dims)
    oh = _onehot(y, z.shape[1]).numpy()
    valid = (y != IGNORE).double().numpy()[:, None]
    q = _window_sum(oh, w, "edge") / _window_sum(valid, w, "edge")
    q = torch.from_numpy(q)
    return _masked_mean(-(q * _logp(z)).sum(1), y)


def ref_dice_ce(z, y, include_background=True, smooth=1e-5):
    k = z.shape[1]
    valid = (y != IGNORE).double().unsqueeze(1)
    p = _logp(z).exp() * valid
    g = _onehot(y, k)
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    axes = tuple(range(2, z.dim()))
    inter, sp, sg = (p * g).sum(axes), p.sum(axes), g.sum(axes)
    dice = 1 - (2 * inter + smooth) / (sp + sg + smooth)
    return ref_ce(z, y) + dice.mean()


def ref_nacl(z, y, alpha=0.1, ks=3):
    dims = z.dim() - 2
    tau = _window_sum(_onehot(y, z.shape[1]).numpy(), np.ones((ks,) * dims) / ks**dims, "zero")
    dist = (torch.from_numpy(tau) - z.double()).abs().mean(1)
    return ref_ce(z, y) + alpha * _masked_mean(dist, y)


REFS = {
    "ce": (CrossEntropyLoss, {}, ref_ce),
    "ls": (LabelSmoothingLoss, {"alpha": 0.2}, lambda z, y: ref_ls(z, y, 0.2)),
    "ecp": (ConfidencePenaltyLoss, {"beta": 0.3}, lambda z, y: ref_ecp(z, y, 0.3)),
    "ecp_avg": (
        ConfidencePenaltyLoss,
        {"beta": 0.3, "entropy_average": True},
        lambda z, y: ref_ecp(z, y, 0.3, average=True),
    ),
    "focal": (FocalLoss, {"gamma": 2.0}, lambda z, y: ref_focal(z, y, 2.0)),
    "mbls": (MarginLoss, {"margin": 3.0, "alpha": 0.2}, lambda z, y: ref_mbls(z, y, 3.0, 0.2)),
    "dice_bg": (DiceCELoss, {"include_background": True}, ref_dice_ce),
    "dice_fg": (
        DiceCELoss,
        {"include_background": False},
        lambda z, y: ref_dice_ce(z, y, include_background=False),
    ),
}
SPATIAL_REFS = {
    "svls": (SVLSLoss, {}, ref_svls),
    "svls_k5": (SVLSLoss, {"kernel_size": 5, "sigma": 1.5}, lambda z, y: ref_svls(z, y, 1.5, 5)),
    "nacl": (NACLLoss, {}, ref_nacl),
}


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("name", list(REFS))
def test_loss_matches_float64_formula(name, kind, ignore_frac):
    cls, kwargs, ref = REFS[name]
    z, y = make(SHAPES[kind], seed=1, ignore_frac=ignore_frac)
    got = cls(**kwargs)(z, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref(z, y), rtol=1e-10, atol=1e-10)
    # float32 logits give the same value to float32 precision
    got32 = cls(**kwargs)(z.float(), y)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref(z, y), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
@pytest.mark.parametrize("kind", ["2d", "3d"])
@pytest.mark.parametrize("name", list(SPATIAL_REFS))
def test_spatial_loss_matches_float64_formula(name, kind, ignore_frac):
    cls, kwargs, ref = SPATIAL_REFS[name]
    z, y = make(SHAPES[kind], seed=2, ignore_frac=ignore_frac)
    torch.testing.assert_close(cls(**kwargs)(z, y), ref(z, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_nacl_equals_monai_without_ignored_pixels(kind):
    from monai.losses import NACLLoss as MonaiNACL

    z, y = make(SHAPES[kind], seed=3, dtype=torch.float32)
    dims = z.dim() - 2
    for kwargs in ({}, {"kernel_ops": "gaussian", "sigma": 0.8}, {"distance_type": "l2"}):
        ours = NACLLoss(alpha=0.3, **kwargs)(z, y)
        peer = MonaiNACL(classes=z.shape[1], dim=dims, alpha=0.3, **kwargs)(z, y)
        torch.testing.assert_close(ours, peer)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_dice_ce_equals_monai_without_ignored_pixels(kind, include_background):
    from monai.losses import DiceCELoss as MonaiDiceCE

    z, y = make(SHAPES[kind], seed=4, dtype=torch.float32)
    peer = MonaiDiceCE(include_background=include_background, to_onehot_y=True, softmax=True)
    ours = DiceCELoss(include_background=include_background)
    torch.testing.assert_close(ours(z, y), peer(z, y.unsqueeze(1)))


def test_logit_distances_formula_and_dtype():
    z, _ = make(SHAPES["3d"], seed=5)
    d = logit_distances(z)
    ref = torch.stack([z.max(dim=1).values - z[:, k] for k in range(z.shape[1])], dim=1)
    torch.testing.assert_close(d, ref, rtol=0, atol=0)
    assert (d >= 0).all() and (d.min(dim=1).values == 0).all()
    assert logit_distances(z.half()).dtype == torch.float32


def test_label_smoothing_decomposition_is_exact():
    """L_LS = (1-a) L_CE + (a/K) sum_k d_k + a (LSE(z) - max z), per pixel then mean."""
    a = 0.3
    for kind in SHAPES:
        z, y = make(SHAPES[kind], seed=6, scale=6.0)
        k = z.shape[1]
        d = z.max(dim=1, keepdim=True).values - z
        lse_minus_max = torch.logsumexp(z, 1) - z.max(dim=1).values
        ce_pix = -(_onehot(y, k) * _logp(z)).sum(1)
        per_pixel = (1 - a) * ce_pix + (a / k) * d.sum(1) + a * lse_minus_max
        assert ((lse_minus_max >= 0) & (lse_minus_max <= math.log(k) + 1e-12)).all()
        got = LabelSmoothingLoss(alpha=a)(z, y)
        torch.testing.assert_close(got, per_pixel.mean(), rtol=1e-12, atol=1e-12)


def test_margin_zero_is_the_linear_penalty():
    for kind in SHAPES:
        z, y = make(SHAPES[kind], seed=7)
        linear = F.cross_entropy(z, y) + 0.25 * logit_distances(z).mean()
        got = MarginLoss(margin=0.0, alpha=0.25)(z, y)
        torch.testing.assert_close(got, linear, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_margin_gradient_matches_autograd_of_naive_formula(kind, ignore_frac):
    z, y = make(SHAPES[kind], seed=8, scale=5.0, ignore_frac=ignore_frac)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        zz = z.to(dtype).clone().requires_grad_(True)
        MarginLoss(margin=2.0, alpha=0.7)(zz, y).backward()
        zr = z.clone().requires_grad_(True)
        ref_mbls(zr, y, 2.0, 0.7).backward()
        torch.testing.assert_close(zz.grad.double(), zr.grad, rtol=tol, atol=tol)


ALL_REFS = {**REFS, **SPATIAL_REFS}


@pytest.mark.parametrize("kind", ["cls", "2d", "3d"])
@pytest.mark.parametrize("name", list(ALL_REFS))
def test_gradient_matches_autograd_of_float64_formula(name, kind):
    cls, kwargs, ref = ALL_REFS[name]
    if kind == "cls" and name in SPATIAL_REFS:
        return
    z, y = make(SHAPES[kind], seed=22, ignore_frac=0.3)
    zz = z.clone().requires_grad_(True)
    cls(**kwargs)(zz, y).backward()
    zr = z.clone().requires_grad_(True)
    ref(zr, y).backward()
    torch.testing.assert_close(zz.grad, zr.grad, rtol=1e-7, atol=1e-10)


def _fn_args(name, ignore):
    z, y = make((2, 4, 3, 3), seed=9, scale=3.0, ignore_frac=0.2 if ignore else 0.0)
    index = y.clamp_min(0).unsqueeze(1)
    if ignore:
        valid = (y != IGNORE).unsqueeze(1)
        count = valid.sum()
        weight = valid.double() / count
    else:
        valid, count, weight = None, index.numel(), None
    extra = {"margin": (1.5, 0.8), "ls": (0.3,), "ecp": (0.4,), "focal": (2.5,)}[name]
    return z, (index, valid, count, weight, *extra)


@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("name", ["margin", "ls", "ecp", "focal"])
def test_hand_written_backward_gradcheck_float64(name, ignore):
    from mls_tutorial.losses import baselines

    fn = {
        "margin": _MarginCrossEntropy,
        "ls": baselines._LabelSmoothedCrossEntropy,
        "ecp": baselines._EntropyPenalisedCrossEntropy,
        "focal": baselines._FocalLoss,
    }[name]
    z, args = _fn_args(name, ignore)
    zz = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn.apply(x, *args), (zz,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("ignore", [False, True])
def test_soft_target_cross_entropy_gradcheck_float64(ignore):
    z, y = make((1, 3, 3, 3), seed=10, ignore_frac=0.3 if ignore else 0.0)
    q = torch.softmax(torch.randn(z.shape, dtype=torch.float64), 1)
    if ignore:
        valid = (y != IGNORE).unsqueeze(1)
        count = valid.sum()
        weight, q = valid.double() / count, q * valid
    else:
        count, weight = y.numel(), None
    zz = z.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: _SoftTargetCrossEntropy.apply(x, q, count, weight), (zz,), eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_label_smoothing_equals_torch(ignore_frac):
    z, y = make(SHAPES["3d"], seed=23, ignore_frac=ignore_frac)
    zz, zt = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ours = LabelSmoothingLoss(alpha=0.15)(zz, y)
    peer = F.cross_entropy(zt, y, ignore_index=IGNORE, label_smoothing=0.15)
    torch.testing.assert_close(ours, peer, rtol=1e-12, atol=1e-12)
    ours.backward()
    peer.backward()
    torch.testing.assert_close(zz.grad, zt.grad, rtol=1e-10, atol=1e-14)


def test_margin_term_gradient_vanishes_inside_the_margin():
    z, y = make((4, 5, 6, 6), seed=11, scale=6.0)
    m, a = 4.0, 0.5
    zm = z.clone().requires_grad_(True)
    MarginLoss(margin=m, alpha=a)(zm, y).backward()
    zc = z.clone().requires_grad_(True)
    F.cross_entropy(zc, y).backward()
    margin_grad = zm.grad - zc.grad
    d = logit_distances(z)
    inside = d < m
    outside = d > m
    assert inside.any() and outside.any()
    winner = d == 0
    torch.testing.assert_close(margin_grad[inside & ~winner], torch.zeros_like(z)[inside & ~winner])
    scale = a / z.numel()  # alpha / (pixels * classes)
    torch.testing.assert_close(
        margin_grad[outside], torch.full_like(z, -scale)[outside], rtol=1e-9, atol=1e-15
    )
    # the winner collects +scale for every class beyond the margin
    count = outside.sum(1, keepdim=True).double().expand_as(z)
    torch.testing.assert_close(margin_grad[winner], scale * count[winner], rtol=1e-9, atol=1e-15)


def test_margin_ties_share_the_winner_gradient_like_autograd():
    z = torch.tensor([[3.0, 3.0, -9.0, 0.0], [1.0, 1.0, 1.0, -20.0]], dtype=torch.float64)
    y = torch.tensor([0, 3])
    zz = z.clone().requires_grad_(True)
    MarginLoss(margin=2.0, alpha=1.0)(zz, y).backward()
    zr = z.clone().requires_grad_(True)
    d = zr.amax(1, keepdim=True) - zr  # amax shares the gradient among ties
    (F.cross_entropy(zr, y) + torch.relu(d - 2.0).mean()).backward()
    torch.testing.assert_close(zz.grad, zr.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_backpropagates_finite_gradients(name):
    z, y = make(SHAPES["2d"], seed=12, dtype=torch.float32, ignore_frac=0.2)
    z.requires_grad_(True)
    build_loss(name)(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_focal_gradient_finite_when_confident():
    z = torch.tensor([[80.0, 0.0, 0.0]], requires_grad=True)  # p_y == 1 in float32
    for gamma in (0.0, 0.5, 1.0, 3.0):
        z.grad = None
        FocalLoss(gamma=gamma)(z, torch.tensor([0])).backward()
        assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- SVLS kernel
def test_svls_kernel_official_2d_values():
    w = svls_kernel(3, 1.0, 2)
    np.testing.assert_allclose(w.numpy(), ref_svls_kernel(3, 1.0, 2), rtol=1e-12)
    assert w[1, 1].item() == pytest.approx(0.5, abs=1e-12)
    assert w[0, 1].item() == pytest.approx(0.0778, abs=5e-5)  # 4-neighbours
    assert w[0, 0].item() == pytest.approx(0.0472, abs=5e-5)  # diagonals
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("ks,sigma,dims", [(3, 1.0, 3), (5, 1.0, 2), (5, 2.0, 3), (7, 0.7, 2)])
def test_svls_kernel_size_is_honoured(ks, sigma, dims):
    w = svls_kernel(ks, sigma, dims)
    assert w.shape == (ks,) * dims
    np.testing.assert_allclose(w.numpy(), ref_svls_kernel(ks, sigma, dims), rtol=1e-12)
    assert w[(ks // 2,) * dims].item() == pytest.approx(0.5, abs=1e-12)


def test_svls_uniform_labels_reduce_to_cross_entropy():
    z, _ = make(SHAPES["2d"], seed=13)
    y = torch.full((2, 5, 6), 2)
    torch.testing.assert_close(SVLSLoss()(z, y), F.cross_entropy(z, y), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- shapes, ignore
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_target_with_channel_dim_is_squeezed(name):
    z, y = make(SHAPES["2d"], seed=14, dtype=torch.float32)
    loss = build_loss(name)
    torch.testing.assert_close(loss(z, y.unsqueeze(1)), loss(z, y))


@pytest.mark.parametrize("name", ["ce", "mbls", "ls", "ecp", "focal", "svls", "ce_dice", "nacl"])
def test_ignore_index_inside_the_class_range(name):
    """ignore_index=0 (e.g. leave background out) equals dropping those pixels by hand."""
    z, y = make(SHAPES["2d"], seed=15, dtype=torch.float64)
    ours = build_loss(name, ignore_index=0)(z, y)
    y_ref = y.masked_fill(y == 0, IGNORE)
    ours_ref = build_loss(name)(z, y_ref)
    torch.testing.assert_close(ours, ours_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_validate_false_gives_the_same_value(name):
    z, y = make(SHAPES["2d"], seed=16, dtype=torch.float64, ignore_frac=0.25)
    for target in (y, y.clamp_min(0)):
        a = build_loss(name)(z, target)
        b = build_loss(name, validate=False)(z, target)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_ignored_pixels_do_not_matter(name):
    z, y = make(SHAPES["2d"], seed=17, dtype=torch.float64, ignore_frac=0.3)
    z2 = z.clone()
    z2[(y == IGNORE).unsqueeze(1).expand_as(z)] = 123.0  # garbage where ignored
    loss = build_loss(name)
    torch.testing.assert_close(loss(z2, y), loss(z, y), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ("shapes differ", lambda z, y: (z, y[:, :4])),
    ("shapes differ", lambda z, y: (z, y[:1])),
    ("outside [0, 3)", lambda z, y: (z, y.masked_fill(y == 1, 3))),
    ("outside [0, 3)", lambda z, y: (z, y.masked_fill(y == 1, -1))),
    ("floating point", lambda z, y: (z.long(), y)),
    ("integer class indices", lambda z, y: (z, y.float())),
    ("integer class indices", lambda z, y: (z, y.bool())),
    ("NaN or inf", lambda z, y: (z.index_put((torch.tensor(0),), torch.tensor(math.nan)), y)),
    ("NaN or inf", lambda z, y: (z.index_put((torch.tensor(1),), torch.tensor(-math.inf)), y)),
    ("0 to 3 spatial dims", lambda z, y: (z[..., None, None, None], y[..., None, None, None])),
    ("K >= 2", lambda z, y: (z[:, :1], y.clamp_max(0))),
    ("every target pixel", lambda z, y: (z, torch.full_like(y, IGNORE))),
]


@pytest.mark.parametrize("message,corrupt", BAD_INPUTS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_input_raises_naming_the_problem(name, message, corrupt):
    z, y = make(SHAPES["2d"], seed=18, dtype=torch.float32)
    z_bad, y_bad = corrupt(z, y)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_loss(name)(z_bad, y_bad)


def test_large_finite_logits_are_not_mistaken_for_inf():
    z = torch.zeros(1, 2, 8, 8)
    z[:, 1] = 1e37  # finite, but their float32 sum overflows
    y = torch.ones(1, 8, 8, dtype=torch.long)
    assert CrossEntropyLoss()(z, y).item() == 0.0


@pytest.mark.parametrize(
    "factory,message",
    [
        (lambda: MarginLoss(margin=-1.0), "margin"),
        (lambda: MarginLoss(margin=math.inf), "margin"),
        (lambda: MarginLoss(alpha=-0.1), "alpha"),
        (lambda: LabelSmoothingLoss(alpha=-0.1), "alpha"),
        (lambda: LabelSmoothingLoss(alpha=1.5), "alpha"),
        (lambda: ConfidencePenaltyLoss(beta=-0.1), "beta"),
        (lambda: FocalLoss(gamma=-1.0), "gamma"),
        (lambda: SVLSLoss(sigma=0.0), "sigma"),
        (lambda: SVLSLoss(sigma=-1.0), "sigma"),
        (lambda: SVLSLoss(kernel_size=4), "kernel_size"),
        (lambda: NACLLoss(alpha=-1.0), "alpha"),
        (lambda: NACLLoss(kernel_ops="max"), "kernel_ops"),
        (lambda: NACLLoss(distance_type="l3"), "distance_type"),
        (lambda: DiceCELoss(lambda_dice=-1.0), "lambda_dice"),
        (lambda: DiceCELoss(lambda_ce=-1.0), "lambda_ce"),
        (lambda: DiceCELoss(include_background="yes"), "include_background"),
        (lambda: CrossEntropyLoss(ignore_index=1.5), "ignore_index"),
    ],
)
def test_bad_hyperparameters_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("name", ["svls", "nacl"])
def test_spatial_losses_reject_classification_shapes(name):
    z, y = make(SHAPES["cls"], seed=19)
    with pytest.raises(ValueError, match="2 or 3 spatial dims"):
        build_loss(name)(z, y)


def test_logit_distances_rejects_bad_logits():
    with pytest.raises(ValueError, match="floating point"):
        logit_distances(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial dims"):
        logit_distances(torch.zeros(3))


# ----------------------------------------------------------------------------- build_loss
EXPECTED_CLASSES = {
    "ce": CrossEntropyLoss,
    "ce_dice": DiceCELoss,
    "focal": FocalLoss,
    "ls": LabelSmoothingLoss,
    "ecp": ConfidencePenaltyLoss,
    "svls": SVLSLoss,
    "mbls": MarginLoss,
    "nacl": NACLLoss,
    "cals": CALSLoss,
    "acls": ACLSLoss,
    "mdca": MDCALoss,
    "hl1ace": HardL1ACELoss,
    "sl1ace": SoftL1ACELoss,
}


def test_build_loss_round_trip():
    assert set(LOSS_NAMES) == set(EXPECTED_CLASSES)
    for name in LOSS_NAMES:
        assert type(build_loss(name)) is EXPECTED_CLASSES[name]
    loss = build_loss("mbls", margin=3.0, alpha=0.2, ignore_index=255)
    assert (loss.margin, loss.alpha, loss.ignore_index) == (3.0, 0.2, 255)
    assert build_loss("ce_dice", include_background=False).include_background is False
    assert build_loss("svls", kernel_size=5).kernel_size == 5


def test_build_loss_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_loss("mlbs")
    for name in LOSS_NAMES:
        assert name in str(err.value)


# ----------------------------------------------------------------------------- precision
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_half_precision_logits_are_upcast(name):
    z, y = make(SHAPES["2d"], seed=20, dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        zh = z.to(dtype).requires_grad_(True)
        got = build_loss(name)(zh, y)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, build_loss(name)(zh.detach().float(), y))
        got.backward()
        assert zh.grad.dtype == dtype and torch.isfinite(zh.grad.float()).all()


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_losses_run_under_cpu_autocast(name):
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(2, 2, 6, 6)
    y = torch.randint(0, 3, (2, 6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = build_loss(name)(logits, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, build_loss(name)(logits.detach().float(), y))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_cuda_matches_cpu(name):
    z, y = make(SHAPES["3d"], seed=21, dtype=torch.float32, ignore_frac=0.2)
    zc = z.cuda().requires_grad_(True)
    zz = z.clone().requires_grad_(True)
    loss = build_loss(name)
    a, b = loss(zc, y.cuda()), loss(zz, y)
    torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-5)
    a.backward()
    b.backward()
    torch.testing.assert_close(zc.grad.cpu(), zz.grad, rtol=1e-4, atol=1e-6)


def _fused_available():
    from mls_tutorial.losses import _fused

    return torch.cuda.is_available() and _fused.triton is not None


@pytest.mark.skipif(not _fused_available(), reason="needs CUDA and Triton")
@pytest.mark.parametrize("kind", list(SHAPES) + ["k5"])
def test_fused_margin_kernel_matches_eager(kind):
    shape = (2, 5, 9, 7) if kind == "k5" else SHAPES[kind]
    for ignore_frac, dtype in ((0.0, torch.float32), (0.3, torch.float32), (0.3, torch.bfloat16)):
        z, y = make(shape, seed=24, ignore_frac=ignore_frac, dtype=dtype)
        z, y = z.cuda(), y.cuda()
        za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        a = MarginLoss(margin=3.0, alpha=0.5)(za, y)
        b = MarginLoss(margin=3.0, alpha=0.5, fused=False)(zb, y)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        a.backward()
        b.backward()
        assert za.grad.dtype == dtype
        torch.testing.assert_close(za.grad.float(), zb.grad.float(), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not _fused_available(), reason="needs CUDA and Triton")
@pytest.mark.parametrize("message,corrupt", BAD_INPUTS)
def test_fused_margin_kernel_rejects_bad_input(message, corrupt):
    z, y = make(SHAPES["2d"], seed=18, dtype=torch.float32)
    z_bad, y_bad = corrupt(z.cuda(), y.cuda())
    with pytest.raises(ValueError, match=re.escape(message)):
        MarginLoss()(z_bad, y_bad)


# ----------------------------------------------------------------------------- properties
@st.composite
def batches(draw):
    n = draw(st.integers(1, 3))
    k = draw(st.integers(2, 5))
    spatial = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, k, *spatial), generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n, *spatial), generator=g)
    return z, y


@settings(max_examples=40, deadline=None)
@given(batches(), st.floats(0.0, 20.0), st.floats(0.0, 2.0))
def test_property_mbls_at_least_ce_and_nonnegative(batch, margin, alpha):
    z, y = batch
    mbls = MarginLoss(margin=margin, alpha=alpha)(z, y)
    ce = CrossEntropyLoss()(z, y)
    assert mbls >= ce - 1e-12 >= -1e-12
    torch.testing.assert_close(mbls, ref_mbls(z, y, margin, alpha), rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(batches(), st.lists(st.floats(0.0, 40.0), min_size=2, max_size=5))
def test_property_margin_term_non_increasing_in_margin(batch, margins):
    z, y = batch
    ce = CrossEntropyLoss()(z, y)
    terms = [MarginLoss(margin=m, alpha=1.0)(z, y) - ce for m in sorted(margins)]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(terms))


@settings(max_examples=30, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 5.0))
def test_property_nonnegative_losses(batch, a, gamma):
    z, y = batch
    assert LabelSmoothingLoss(alpha=a)(z, y) >= 0
    assert FocalLoss(gamma=gamma)(z, y) >= 0
    assert CrossEntropyLoss()(z, y) >= 0
    # focal never exceeds CE, and LS is CE at alpha = 0
    assert FocalLoss(gamma=gamma)(z, y) <= CrossEntropyLoss()(z, y) + 1e-12
    d = logit_distances(z)
    assert (d >= 0).all() and (d.amin(1) == 0).all()


@settings(max_examples=30, deadline=None)
@given(batches(), st.floats(0.0, 1.0))
def test_property_ecp_lies_between_ce_minus_beta_logk_and_ce(batch, beta):
    z, y = batch
    ce = CrossEntropyLoss()(z, y)
    ecp = ConfidencePenaltyLoss(beta=beta)(z, y)
    assert ce - beta * math.log(z.shape[1]) - 1e-12 <= ecp <= ce + 1e-12


# ------------------------------------------------------------------ equilibrium distance


@pytest.mark.parametrize("alpha", [0.01, 0.03, 0.1, 0.3, 0.9])
@pytest.mark.parametrize("k", [2, 4, 7])
def test_equilibrium_distance_zeroes_the_float64_gradient(alpha, k):
    """At d_eq the gradient of CE + alpha/K * sum_k d_k along equal non-winning distances is 0,
    and MbLS settles at max(m, d_eq)."""
    from mls_tutorial.losses import equilibrium_distance

    def grad_at(d: float) -> float:
        t = torch.tensor(d, dtype=torch.float64, requires_grad=True)
        z = torch.cat([torch.zeros(1, dtype=torch.float64), -t.expand(k - 1)])
        loss = -torch.log_softmax(z, 0)[0] + alpha / k * (k - 1) * t
        (g,) = torch.autograd.grad(loss, t)
        return float(g)

    d = equilibrium_distance(alpha, k)
    assert abs(grad_at(d)) < 1e-12
    assert grad_at(d - 0.5) < 0 < grad_at(d + 0.5)  # a stable point: pulled up below, down above
    assert equilibrium_distance(alpha, k, margin=d + 2) == d + 2
    assert equilibrium_distance(alpha, k, margin=d / 2) == d


def test_equilibrium_distance_bad_inputs():
    from mls_tutorial.losses import equilibrium_distance

    assert equilibrium_distance(1.0, 4) == 0.0
    for kwargs, match in [
        ({"alpha": 0.0, "num_classes": 4}, "alpha"),
        ({"alpha": 0.1, "num_classes": 1}, "num_classes"),
        ({"alpha": 0.1, "num_classes": 4, "margin": -1.0}, "margin"),
    ]:
        with pytest.raises(ValueError, match=match):
            equilibrium_distance(**kwargs)
