"""ACLS, MDCA and the hard / soft L1-ACE losses against float64 formulas written here.

Each reference is a plain re-derivation of the published formula (loops over images, classes
and bins where that is clearer), differentiated by autograd in float64; the library's values
and hand-written gradients must match it.
"""

from __future__ import annotations

import pytest
import torch
from _logits import IGNORE, make

from mls_tutorial.losses import (
    LOSS_NAMES,
    ACLSLoss,
    HardL1ACELoss,
    MDCALoss,
    SoftL1ACELoss,
    build_loss,
)


def pixels(z, y):
    """Counted pixels as rows: logits (P, K) and labels (P,), float64."""
    zk = z.movedim(1, -1).reshape(-1, z.shape[1])
    yk = y.reshape(-1)
    keep = yk != IGNORE
    return zk[keep], yk[keep]


def ref_ce(z, y):
    zp, yp = pixels(z, y)
    logp = zp - torch.logsumexp(zp, dim=1, keepdim=True)
    return -logp[torch.arange(len(yp)), yp].mean()


def ref_acls(z, y, alpha=0.1, pos_lambda=1.0, neg_lambda=0.1, margin=10.0):
    zp, _ = pixels(z, y)
    n, k = zp.shape
    top = zp.max(dim=1).values
    pos = torch.relu(top - margin) ** 2
    neg = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            if zp[i, j] != top[i]:
                neg = neg + torch.relu(top[i].detach() - zp[i, j] - margin) ** 2
    reg = pos_lambda * pos.sum() / n + neg_lambda * neg / (n * (k - 1))
    return ref_ce(z, y) + alpha * reg


def ref_mdca(z, y, beta=1.0):
    zp, yp = pixels(z, y)
    k = zp.shape[1]
    s = torch.softmax(zp, dim=1)
    term = sum(torch.abs(s[:, c].mean() - (yp == c).double().mean()) for c in range(k)) / k
    return ref_ce(z, y) + beta * term


def ref_dice(z, y, smooth_dr=1e-5):
    """MONAI DiceLoss(softmax, squared_pred, smooth_nr=0, smooth_dr) per image and class, mean."""
    n, k = z.shape[:2]
    s = torch.softmax(z, dim=1)
    total = torch.zeros((), dtype=torch.float64)
    for b in range(n):
        keep = y[b] != IGNORE
        for c in range(k):
            p, g = s[b, c][keep], (y[b][keep] == c).double()
            total = total + 1 - 2 * (p * g).sum() / ((p * p).sum() + (g * g).sum() + smooth_dr)
    return total / (n * k)


def _bins_hard(p, nb):
    """Hard bin of each probability: (b_{i-1}, b_i], edges i (1 + eps32) / nb."""
    edges = torch.linspace(0, 1 + torch.finfo(torch.float32).eps, nb + 1).double()
    out = []
    for v in p:
        i = int(((v.detach() > edges[1:]).sum()).clamp(max=nb - 1))
        out.append([(i, torch.ones((), dtype=torch.float64))])
    return out


def _bins_soft(p, nb):
    """Linear interpolation between the bin centres (clamped at both ends)."""
    centres = torch.linspace(0, 1 + torch.finfo(torch.float32).eps, 2 * nb + 1).double()[1::2]
    out = []
    for v in p:
        if v <= centres[0]:
            out.append([(0, torch.ones((), dtype=torch.float64))])
        elif v > centres[-1]:
            out.append([(nb - 1, torch.ones((), dtype=torch.float64))])
        else:
            j = int((v.detach() > centres).sum()) - 1  # centres[j] < v <= centres[j + 1]
            t = (v - centres[j]) / (centres[j + 1] - centres[j])
            out.append([(j, 1 - t), (j + 1, t)])
    return out


def ref_ace(z, y, nb=20, soft=False, empty_weight=0.01, include_background=True):
    n, k = z.shape[:2]
    s = torch.softmax(z, dim=1)
    per = []
    for b in range(n):
        keep = y[b] != IGNORE
        for c in range(0 if include_background else 1, k):
            p, g = s[b, c][keep], (y[b][keep] == c).double()
            if g.sum() == 0:  # class absent from the image: scores 0, still counted
                per.append(torch.zeros((), dtype=torch.float64))
                continue
            w = [torch.zeros((), dtype=torch.float64) for _ in range(nb)]
            wp, wg = list(w), list(w)
            for v, gv, parts in zip(p, g, (_bins_soft if soft else _bins_hard)(p, nb), strict=True):
                for i, weight in parts:
                    w[i], wp[i], wg[i] = w[i] + weight, wp[i] + weight * v, wg[i] + weight * gv
            gaps = [
                torch.abs(wp[i] - wg[i]) / w[i]
                for i in range(nb)
                if w[i] > 0 and (w[i] >= empty_weight if soft else True)
            ]
            per.append(sum(gaps) / len(gaps))
    return torch.stack(per).mean()


def ref_l1ace_total(z, y, soft, **kw):
    return 0.33 * ref_ace(z, y, soft=soft, **kw) + 0.33 * ref_dice(z, y) + 0.33 * ref_ce(z, y)


def _check(loss_fn, ref_fn, z, y, atol=1e-10):
    za = z.clone().requires_grad_(True)
    value = loss_fn(za, y)
    (grad,) = torch.autograd.grad(value, za)
    zr = z.clone().requires_grad_(True)
    ref = ref_fn(zr, y)
    (ref_grad,) = torch.autograd.grad(ref, zr)
    assert value.item() == pytest.approx(ref.item(), abs=atol, rel=1e-9)
    torch.testing.assert_close(grad, ref_grad, atol=atol, rtol=1e-7)


SHAPES = [(4, 3), (2, 3, 5, 6), (2, 4, 3, 4, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_acls_matches_float64_formula(shape, ignore_frac):
    z, y = make(shape, seed=1, scale=6.0, ignore_frac=ignore_frac)
    z = z + 3.0  # some winning logits above the margin: the positive term is active
    kw = dict(alpha=0.3, pos_lambda=1.5, neg_lambda=0.7, margin=4.0)
    _check(ACLSLoss(**kw), lambda a, b: ref_acls(a, b, **kw), z, y)


def test_acls_both_terms_are_active_in_the_test_data():
    z, y = make((2, 3, 5, 6), seed=1, scale=6.0)
    z = z + 3.0
    zp, _ = pixels(z, y)
    top = zp.max(1).values
    assert (top > 4.0).any() and ((top[:, None] - zp) > 4.0).any()


def test_acls_ties_count_the_positive_term_once_per_tied_class():
    z = torch.tensor([[12.0, 12.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    value = ACLSLoss(alpha=1.0, pos_lambda=1.0, neg_lambda=0.0, margin=10.0)(z, y)
    ce = -torch.log_softmax(z, 1)[0, 0]
    assert value.item() == pytest.approx(ce.item() + 2 * 2.0**2, abs=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_mdca_matches_float64_formula(shape, ignore_frac):
    z, y = make(shape, seed=2, ignore_frac=ignore_frac)
    _check(MDCALoss(beta=2.5), lambda a, b: ref_mdca(a, b, beta=2.5), z, y)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3])
def test_l1ace_matches_float64_formula(soft, ignore_frac):
    z, y = make((2, 3, 6, 5), seed=3, scale=2.0, ignore_frac=ignore_frac)
    y[1][y[1] == 2] = 0  # class 2 absent from image 1
    cls = SoftL1ACELoss if soft else HardL1ACELoss
    _check(cls(), lambda a, b: ref_l1ace_total(a, b, soft), z, y)


@pytest.mark.parametrize("soft", [False, True])
def test_l1ace_term_alone_and_without_background(soft):
    z, y = make((2, 4, 5, 4), seed=4, scale=3.0)
    cls = SoftL1ACELoss if soft else HardL1ACELoss
    loss = cls(ace_weight=1.0, dice_weight=0.0, ce_weight=0.0, include_background=False)
    _check(loss, lambda a, b: ref_ace(a, b, soft=soft, include_background=False), z, y)


def test_soft_l1ace_leaves_out_bins_below_empty_weight():
    # two pixels, p_0 = 0.485 (weights 0.8 / 0.2 to the centres 0.475 / 0.525) and 0.9
    p0 = torch.tensor([0.485, 0.9], dtype=torch.float64)
    z = torch.stack([torch.log(p0 / (1 - p0)), torch.zeros(2, dtype=torch.float64)])[None]
    y = torch.tensor([[0, 1]])
    values = []
    for ew in (0.0, 0.3):
        loss = SoftL1ACELoss(ace_weight=1.0, dice_weight=0.0, ce_weight=0.0, empty_weight=ew)
        _check(loss, lambda a, b, ew=ew: ref_ace(a, b, soft=True, empty_weight=ew), z, y)
        values.append(loss(z, y).item())
    assert values[0] != pytest.approx(values[1])  # the 0.2 bin counts only in the first


def test_absent_class_scores_zero_but_counts_in_the_mean():
    z, y = make((1, 3, 4, 4), seed=5)
    y[y == 2] = 1
    loss = HardL1ACELoss(ace_weight=1.0, dice_weight=0.0, ce_weight=0.0)
    with_absent = loss(z, y).item()
    scored = HardL1ACELoss(
        ace_weight=1.0, dice_weight=0.0, ce_weight=0.0, ignore_empty_classes=False
    )(z, y).item()
    present_only = ref_ace(z, y)  # classes 0 and 1 scored, divided by 3
    assert with_absent == pytest.approx(present_only.item(), abs=1e-12)
    assert scored > with_absent  # the absent class's own bins are scored when asked


@pytest.mark.parametrize("name", ["cals", "acls", "mdca", "hl1ace", "sl1ace"])
def test_build_loss_knows_the_new_names_with_no_argument(name):
    assert name in LOSS_NAMES
    loss = build_loss(name)
    z, y = make((2, 3, 4, 4), seed=6)
    z32 = z.float().requires_grad_(True)
    value = loss(z32, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z32.grad).all()


def test_half_precision_logits_are_upcast():
    z, y = make((2, 3, 4, 4), seed=7)
    for cls in (ACLSLoss, MDCALoss, HardL1ACELoss):
        full = cls()(z.float(), y).item()
        half = cls()(z.bfloat16(), y).item()
        ref = cls()(z.bfloat16().float(), y).item()
        assert half == pytest.approx(ref, abs=1e-6) and abs(half - full) < 0.1


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ACLSLoss(alpha=-1.0), "alpha"),
        (lambda: ACLSLoss(margin=float("nan")), "margin"),
        (lambda: ACLSLoss(neg_lambda="x"), "neg_lambda"),
        (lambda: MDCALoss(beta=-0.1), "beta"),
        (lambda: HardL1ACELoss(num_bins=0), "num_bins"),
        (lambda: SoftL1ACELoss(empty_weight=-1.0), "empty_weight"),
        (lambda: HardL1ACELoss(include_background=1), "include_background"),
        (lambda: HardL1ACELoss(ace_weight=float("inf")), "ace_weight"),
        (lambda: MDCALoss(ignore_index=1.5), "ignore_index"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


@pytest.mark.parametrize("name", ["acls", "mdca", "hl1ace", "sl1ace"])
def test_bad_inputs_raise_value_error(name):
    loss = build_loss(name)
    z, y = make((2, 3, 4, 4), seed=8)
    with pytest.raises(ValueError, match="target has values outside"):
        loss(z, y + 5)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(z, y[:, :3])
    with pytest.raises(ValueError, match="NaN or inf"):
        loss(z.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="floating point"):
        loss(y.unsqueeze(1).repeat(1, 3, 1, 1), y)
    with pytest.raises(ValueError, match="every target pixel"):
        loss(z, torch.full_like(y, IGNORE))
