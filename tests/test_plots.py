"""Figures draw the right data: bar heights, line positions and annotations are compared with
float64 NumPy references computed here from the raw logits (never with pixels)."""

from __future__ import annotations

import io
import json
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.stats import entropy as scipy_entropy  # noqa: E402

from mls_tutorial import plots  # noqa: E402
from mls_tutorial.metrics import CalibrationMeter, LogitDistanceHistogram  # noqa: E402

K, B = 3, 15


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data():
    """Over-confident logits (1, K, 40, 50) and labels that agree with them 70% of the time."""
    g = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(1, K, 40, 50, generator=g, dtype=torch.float64).float()
    pred = logits.argmax(1)
    noise = torch.randint(0, K, pred.shape, generator=g)
    keep = torch.rand(pred.shape, generator=g) < 0.7
    target = torch.where(keep, pred, noise)
    return logits, target


@pytest.fixture(scope="module")
def meter(data):
    m = CalibrationMeter(K, n_bins=B)
    m.update(*data)
    return m


def ref_reliability(scores: np.ndarray, hits: np.ndarray, n_bins: int = B) -> dict:
    """Float64 reference: bins (lo, hi] with 0 in the first bin."""
    idx = np.clip(np.ceil(scores * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(idx, scores, n_bins) / counts
        acc = np.bincount(idx, hits.astype(float), n_bins) / counts
    ece = np.nansum(counts / counts.sum() * np.abs(acc - conf))
    return dict(counts=counts, confidence=conf, accuracy=acc, ece=ece)


def softmax64(logits) -> np.ndarray:
    z = logits.double().numpy().swapaxes(0, 1).reshape(K, -1)
    e = np.exp(z - z.max(0))
    return e / e.sum(0)


def top_label_ref(data) -> dict:
    logits, target = data
    p = softmax64(logits)
    y = target.numpy().ravel()
    return ref_reliability(p.max(0), p.argmax(0) == y)


def container(ax, label):
    found = [c for c in ax.containers if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.containers]
    return found[0]


def annotation(ax) -> str:
    (text,) = [t for t in ax.texts if t.get_gid() == "annotation"]
    return text.get_text()


# ------------------------------------------------------------------------- reliability diagram


def test_reliability_bars_equal_bin_accuracies_and_skip_empty_bins(data, meter):
    ref = top_label_ref(data)
    filled = ref["counts"] > 0
    assert not filled.all()  # top-label confidence >= 1/K: the low bins are empty
    fig = plots.reliability_diagram(meter)
    ax_rel, ax_cnt = fig.axes
    acc_bars = container(ax_rel, "accuracy")
    assert len(acc_bars) == filled.sum()
    edges = np.linspace(0, 1, B + 1)
    np.testing.assert_allclose([b.get_x() for b in acc_bars], edges[:-1][filled], atol=1e-12)
    np.testing.assert_allclose([b.get_width() for b in acc_bars], 1 / B, atol=1e-12)
    np.testing.assert_allclose(
        [b.get_height() for b in acc_bars], ref["accuracy"][filled], atol=1e-9
    )
    over = ref["confidence"][filled] >= ref["accuracy"][filled]
    assert over.any()  # over-confident logits: most bins sit above their accuracy
    for name, sel in (("over-confident gap", over), ("under-confident gap", ~over)):
        gap = container(ax_rel, name)
        lo = np.minimum(ref["accuracy"], ref["confidence"])[filled][sel]
        hi = np.maximum(ref["accuracy"], ref["confidence"])[filled][sel]
        np.testing.assert_allclose([b.get_y() for b in gap], lo, atol=1e-6)
        np.testing.assert_allclose([b.get_y() + b.get_height() for b in gap], hi, atol=1e-6)
    text = annotation(ax_rel)
    ece = float(re.search(r"ECE = ([0-9.]+)", text).group(1))
    assert abs(ece - ref["ece"]) <= 5e-5 + 1e-6
    assert f"N = {ref['counts'].sum():,}" in text
    counts = container(ax_cnt, "counts")
    np.testing.assert_array_equal([b.get_height() for b in counts], ref["counts"][filled])
    assert ax_cnt.get_yscale() == "log"
    lines = {ln.get_gid(): ln.get_xdata()[0] for ln in ax_cnt.lines}
    w = ref["counts"][filled]
    assert lines["overall"] == pytest.approx(np.sum(w * ref["accuracy"][filled]) / w.sum())
    assert lines["mean_confidence"] == pytest.approx(
        np.sum(w * ref["confidence"][filled]) / w.sum()
    )
    diag = [ln for ln in ax_rel.lines if ln.get_label() == "perfect calibration"][0]
    np.testing.assert_array_equal(diag.get_xdata(), diag.get_ydata())


def test_reliability_under_confident_gap_has_its_own_opaque_colour_in_the_legend():
    """A bin with acc > conf draws its gap over the bar in a second colour, not a blended one."""
    edges = np.linspace(0, 1, 6)
    rel = dict(edges=edges, counts=[0, 0, 10, 20, 30], confidence=[np.nan, np.nan, 0.5, 0.7, 0.95],
               accuracy=[np.nan, np.nan, 0.8, 0.6, 0.7], ece=0.1, n=60)  # fmt: skip
    ax_rel = plots.reliability_diagram(rel).axes[0]
    over, under = container(ax_rel, "over-confident gap"), container(ax_rel, "under-confident gap")

    def spans(bars):
        return np.array([(b.get_y(), b.get_y() + b.get_height()) for b in bars]).ravel()

    np.testing.assert_allclose(spans(under), [0.5, 0.8], atol=1e-12)
    np.testing.assert_allclose(spans(over), [0.6, 0.7, 0.7, 0.95], atol=1e-12)
    (face_under,) = {b.get_facecolor() for b in under}
    face_over = {b.get_facecolor() for b in over}
    assert face_over == {face_over.copy().pop()} and face_under not in face_over
    assert face_under[3] == 1.0  # opaque: no purple blend with the blue bar underneath
    texts = [t.get_text() for t in ax_rel.get_legend().get_texts()]
    ax_rel.figure.canvas.draw()
    box = ax_rel.get_legend().get_window_extent().transformed(ax_rel.transAxes.inverted())
    assert box.x0 >= 1.0  # right of the bars, never over them
    assert {"over-confident gap", "under-confident gap", "accuracy"} <= set(texts)
    # both colours are explained even when every bin is over-confident
    only_over = {**rel, "accuracy": [np.nan, np.nan, 0.3, 0.6, 0.7]}
    texts = [
        t.get_text() for t in plots.reliability_diagram(only_over).axes[0].get_legend().get_texts()
    ]
    assert "under-confident gap" in texts
    assert len(container(plots.reliability_diagram(only_over).axes[0], "under-confident gap")) == 0


def heights(fig) -> list[float]:
    return [b.get_height() for b in container(fig.axes[0], "accuracy")]


def test_reliability_accepts_meter_to_dict_json_and_reliability_dict(meter):
    expected = heights(plots.reliability_diagram(meter))
    as_json = json.loads(json.dumps(meter.to_dict()))
    rel = meter.reliability()
    rel_json = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in rel.items()}))
    for source in (meter.to_dict(), as_json, rel, rel_json):
        assert heights(plots.reliability_diagram(source)) == pytest.approx(expected, abs=1e-12)


def test_reliability_on_given_axes_creates_no_pyplot_figure(meter):
    before = plt.get_fignums()
    fig = Figure(layout="constrained")
    out = plots.reliability_diagram(meter, ax=fig.add_subplot(), title="t")
    assert out is fig and len(fig.axes) == 2 and plt.get_fignums() == before
    axes = Figure().subplots(2)
    assert plots.reliability_diagram(meter, ax=axes) is axes[0].figure
    with pytest.raises(ValueError, match="ax"):
        plots.reliability_diagram(meter, ax=Figure().subplots(3))


def test_classwise_panels_equal_per_class_frequencies(data, meter):
    logits, target = data
    p, y = softmax64(logits), target.numpy().ravel()
    refs = [ref_reliability(p[k], y == k) for k in range(K)]
    fig = plots.classwise_reliability(meter, class_names=["bg", "a", "b"])
    assert len(fig.axes) == 2 * K
    for k in range(K):
        filled = refs[k]["counts"] > 0
        ax = fig.axes[k]  # the first row holds the diagrams
        bars = container(ax, "frequency")
        np.testing.assert_allclose([b.get_height() for b in bars], refs[k]["accuracy"][filled],
                                   atol=1e-9)  # fmt: skip
        assert "class " + str(k) in ax.get_title()
    cece = float(re.search(r"CECE = ([0-9.]+)", fig.get_suptitle()).group(1))
    assert abs(cece - np.mean([r["ece"] for r in refs])) <= 5e-5 + 1e-6
    # the single-Axes form (what runs.save_figures passes) splits into the same 2 x K block
    fig2 = Figure(layout="constrained")
    plots.classwise_reliability(meter.to_dict(), ax=fig2.add_subplot())
    assert len(fig2.axes) == 2 * K
    assert heights_of(fig2.axes[1]) == pytest.approx(heights_of(fig.axes[1]))
    # one class via reliability_diagram(cls=k) draws the same bars
    one = plots.reliability_diagram(meter, cls=1)
    assert heights_of(one.axes[0]) == pytest.approx(heights_of(fig.axes[1]))


def heights_of(ax):
    return [b.get_height() for b in ax.containers[0]]


def test_reliability_rejects_bad_input(meter):
    with pytest.raises(ValueError, match="no samples"):
        plots.reliability_diagram(CalibrationMeter(K))
    rel = meter.reliability()
    with pytest.raises(ValueError, match="cls"):
        plots.reliability_diagram(rel, cls=0)
    with pytest.raises(ValueError, match="accuracy"):
        plots.reliability_diagram({**rel, "accuracy": rel["accuracy"][:-1]})
    with pytest.raises(ValueError, match="edges"):
        plots.reliability_diagram({**rel, "edges": rel["edges"][::-1]})
    with pytest.raises(ValueError, match="CalibrationMeter"):
        plots.reliability_diagram([1, 2, 3])
    with pytest.raises(ValueError):
        plots.reliability_diagram({"type": "something else"})
    with pytest.raises(ValueError, match="cls"):
        plots.reliability_diagram(meter, cls=K)
    with pytest.raises(ValueError, match="class_names"):
        plots.classwise_reliability(meter, class_names=["only one"])


# ------------------------------------------------------------------ logit-distance histograms


def distances64(logits) -> np.ndarray:
    """Every non-winning d_k = max_j z_j - z_k, float64."""
    z = logits.double().numpy().swapaxes(0, 1).reshape(K, -1)
    d = z.max(0) - z
    winner = z.argmax(0)
    return d[np.arange(K)[:, None] != winner[None, :]]


@pytest.fixture(scope="module")
def hists():
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, scale in (("CE", 12.0), ("MbLS", 2.0)):
        logits = scale * torch.randn(2, K, 30, 30, generator=g)
        h = LogitDistanceHistogram(K, max_distance=40.0, n_bins=80)
        h.update(logits)
        out[name] = (h, logits)
    return out


def stairs(ax):
    return [p for p in ax.patches if type(p).__name__ == "StepPatch"]


@pytest.mark.parametrize("margin", [5.0, 7.5])
def test_logit_distance_histogram_margin_line_share_and_bins(hists, margin):
    fig = plots.logit_distance_histogram({k: h for k, (h, _) in hists.items()}, margin=margin)
    ax = fig.axes[0]
    (line,) = [ln for ln in ax.lines if ln.get_gid() == "margin"]
    assert list(line.get_xdata()) == [margin, margin]
    edges = np.linspace(0, 40, 81)
    for patch, (name, (_, logits)) in zip(stairs(ax), hists.items(), strict=True):
        d = distances64(logits)
        share = np.mean(d > margin)
        assert f"{name} ({share:.1%} > {margin:g})" in patch.get_label()
        idx = np.clip(np.ceil(d / 0.5).astype(int) - 1, 0, None)  # (lo, hi], 0 in the first
        counts = np.bincount(idx[d <= 40], minlength=80)
        np.testing.assert_allclose(patch.get_data().values, counts / d.size, rtol=1e-12)
        np.testing.assert_allclose(patch.get_data().edges, edges)
    assert "every non-winning class" in ax.get_xlabel()


def test_logit_distance_histogram_share_equals_fraction_above_and_dict_forms(hists):
    h, logits = hists["CE"]
    frac = h.fraction_above(10.0)
    assert frac == np.mean(distances64(logits) > 10.0)  # the meter is exact
    assert frac > 0.05  # wide CE distances: part beyond 40 too
    for source in (h, h.to_dict(), json.loads(json.dumps(h.to_dict()))):
        data = plots.distance_histogram_data(source, margin=10.0)
        assert data["fraction_above"] == frac and data["exact"]
    # a plain histogram() dict: read from the bins, exact at an edge, "~" inside a bin
    plain = {k: np.asarray(v).tolist() if k != "summary" else v for k, v in h.histogram().items()}
    assert plots.distance_histogram_data(plain, margin=10.0)["fraction_above"] == pytest.approx(
        frac
    )
    data = plots.distance_histogram_data(plain, margin=10.2)
    assert not data["exact"]
    # a margin the histogram object has no exact boundary for falls back to the bins too
    from_object = plots.distance_histogram_data(h, margin=10.2)
    assert not from_object["exact"]
    assert from_object["fraction_above"] == pytest.approx(data["fraction_above"], abs=1e-15)
    assert np.mean(distances64(logits) > 10.5) <= data["fraction_above"] <= frac
    label = stairs(plots.logit_distance_histogram({"CE": plain}, margin=10.2).axes[0])[
        0
    ].get_label()
    assert "~" in label and "beyond 40" in label
    overflow = np.mean(distances64(logits) > 40)
    assert f"[{overflow:.1%} beyond 40]" in label


def test_logit_distance_histogram_mean_summary_and_errors(hists):
    h, logits = hists["MbLS"]
    fig = plots.logit_distance_histogram(h, margin=2.0, summary="mean")
    ax = fig.axes[0]
    assert "mean over the K-1 non-winning classes" in ax.get_xlabel()
    z = logits.double().numpy().swapaxes(0, 1).reshape(K, -1)
    mean_d = (z.max(0)[None] - z).sum(0) / (K - 1)
    assert f"({np.mean(mean_d > 2.0):.1%} > 2)" in stairs(ax)[0].get_label()
    with pytest.raises(ValueError, match="summary"):
        plots.logit_distance_histogram(h, summary="median")
    with pytest.raises(ValueError, match="margin"):
        plots.logit_distance_histogram(h, margin=-1.0)
    with pytest.raises(ValueError, match="summary"):
        plots.logit_distance_histogram({"x": h.histogram("all")}, summary="mean")
    with pytest.raises(ValueError, match="no distances"):
        plots.logit_distance_histogram(LogitDistanceHistogram(K))
    with pytest.raises(ValueError, match="hists"):
        plots.logit_distance_histogram({})


def test_logit_distance_histogram_each_curve_measured_at_its_own_margin(hists):
    """``margins`` per label: each legend share uses that curve's margin, not the one drawn."""
    sources = {"CE": hists["CE"][0], "MbLS m=2": hists["MbLS"][0], "MbLS m=5": hists["MbLS"][0]}
    own = {"MbLS m=2": 2.0, "MbLS m=5": 5.0}
    ax = plots.logit_distance_histogram(sources, margin=10.0, margins=own).axes[0]
    logits = {"CE": hists["CE"][1], "MbLS m=2": hists["MbLS"][1], "MbLS m=5": hists["MbLS"][1]}
    for patch, name in zip(stairs(ax), sources, strict=True):
        m = own.get(name, 10.0)
        share = np.mean(distances64(logits[name]) > m)
        assert f"{name} ({share:.1%} > {m:g})" in patch.get_label()
    shares = [np.mean(distances64(hists["MbLS"][1]) > m) for m in (2.0, 5.0)]
    assert shares[0] > shares[1]  # the same histogram gives different shares at 2 and 5
    gids = sorted(ln.get_gid() for ln in ax.lines)
    assert gids == ["margin", "margin 2", "margin 5"]
    with pytest.raises(ValueError, match="margins"):
        plots.logit_distance_histogram(sources, margins={"LS": 1.0})


# ------------------------------------------------------------------------------ margin sweep


def test_margin_sweep_markers_references_and_highlight():
    rows = [dict(margin=m, dice=0.8 + 0.01 * m, ece=0.1 - 0.004 * m, cece=0.05 + 0.001 * m)
            for m in (10.0, 0.0, 5.0, 2.0)]  # fmt: skip
    refs = {"CE": dict(dice=0.79, ece=0.12, cece=0.07), "LS": dict(dice=0.81, ece=0.09)}
    fig = plots.margin_sweep(rows, refs, highlight=3.0)
    ax_dsc, ax_cal = fig.axes
    by_gid = {ln.get_gid(): ln for ax in fig.axes for ln in ax.lines if ln.get_gid()}
    ms = np.array([0.0, 2.0, 5.0, 10.0])
    for key, f in (("dice", lambda m: 0.8 + 0.01 * m), ("ece", lambda m: 0.1 - 0.004 * m),
                   ("cece", lambda m: 0.05 + 0.001 * m)):  # fmt: skip
        np.testing.assert_array_equal(by_gid[key].get_xdata(), ms)
        np.testing.assert_allclose(by_gid[key].get_ydata(), f(ms))
    hl = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "highlight"]
    assert sorted(float(ln.get_ydata()[0]) for ln in hl) == pytest.approx(
        sorted([0.8 + 0.03, 0.1 - 0.012, 0.05 + 0.003])
    )
    assert all(ln.get_xdata()[0] == 3.0 for ln in hl)
    horizontal = {ln.get_label(): ln.get_ydata()[0] for ax in fig.axes for ln in ax.lines
                  if ln.get_label().startswith(("CE", "LS"))}  # fmt: skip
    assert horizontal == {"CE DSC": 0.79, "CE ECE": 0.12, "CE CECE": 0.07, "LS DSC": 0.81,
                          "LS ECE": 0.09}  # fmt: skip
    assert "DSC" in ax_dsc.get_ylabel() and ax_cal.get_xlabel() == "margin m"


def test_margin_sweep_dice_axis_does_not_magnify_tiny_differences():
    rows = [dict(margin=m, dice=d, ece=e) for m, d, e in ((2, 0.529, 0.05), (5, 0.534, 0.09),
                                                          (10, 0.531, 0.11))]  # fmt: skip
    ax_dsc, ax_cal = plots.margin_sweep(rows).axes
    lo, hi = ax_dsc.get_ylim()
    assert hi - lo == pytest.approx(0.1) and lo < 0.529 and hi > 0.534
    assert ax_cal.get_ylim()[0] == 0.0
    fig = ax_dsc.figure
    fig.canvas.draw()
    for axis in (ax_dsc, ax_cal):  # legends off the data
        box = axis.get_legend().get_window_extent().transformed(axis.transAxes.inverted())
        assert box.x0 >= 1.0
    # a wide spread is left as matplotlib drew it; the span stays inside [0, 1]
    wide = [dict(margin=m, dice=d, ece=0.1) for m, d in ((0, 0.2), (5, 0.8))]
    lo, hi = plots.margin_sweep(wide).axes[0].get_ylim()
    assert lo < 0.2 and hi > 0.8 and hi - lo > 0.6
    edge = [dict(margin=m, dice=d, ece=0.1) for m, d in ((0, 0.995), (5, 0.999))]
    assert plots.margin_sweep(edge).axes[0].get_ylim() == pytest.approx((0.9, 1.0))
    with pytest.raises(ValueError, match="min_dice_span"):
        plots.margin_sweep(rows, min_dice_span=-1)


def test_margin_sweep_one_curve_per_alpha_and_errors():
    rows = [dict(margin=m, dice=0.8, ece=0.1, alpha=a) for a in (0.1, 0.2) for m in (0, 5)]
    fig = plots.margin_sweep(rows)
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert labels == ["MbLS DSC, alpha=0.1", "MbLS DSC, alpha=0.2"]
    with pytest.raises(ValueError, match="lacks"):
        plots.margin_sweep([dict(margin=1.0, dice=0.5)])
    with pytest.raises(ValueError, match="margin"):
        plots.margin_sweep([dict(margin=-1.0, dice=0.5, ece=0.1)])
    with pytest.raises(ValueError, match="rows"):
        plots.margin_sweep([])


# ------------------------------------------------------------------- constrained optimisation


def torch_penalties(d: float, k: int, a: float, m: float) -> dict:
    """The penalties from their definitions, at logits (d, 0, ..., 0), with autograd slopes."""
    out = {}
    for name in ("linear", "LS", "ECP", "margin"):
        dd = torch.tensor(d, dtype=torch.float64, requires_grad=True)
        z = torch.cat([dd.view(1), torch.zeros(k - 1, dtype=torch.float64)])
        logp = torch.log_softmax(z, 0)
        dist = z.max() - z
        if name == "linear":
            p = a * dist.mean()  # MarginLoss(margin=0) minus CE: the weight is a / K
        elif name == "LS":  # LS loss minus (1 - a) CE, for label 1 (any label gives the same)
            q = torch.full((k,), a / k, dtype=torch.float64)
            q[1] += 1 - a
            p = -(q * logp).sum() - (1 - a) * (-logp[1])
        elif name == "ECP":
            p = a * (np.log(k) + (logp.exp() * logp).sum())
        else:
            p = a * torch.relu(dist - m).mean()
        (g,) = torch.autograd.grad(p, dd)
        out[name] = (p.item(), g.item())
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_penalty_values_and_derivatives_match_autograd(k):
    a, m = 0.1, 3.0
    funcs = plots.penalty_functions(margin=m, alpha=a, num_classes=k)
    names = dict(zip(("linear", "LS", "ECP", "margin"), funcs, strict=True))
    for d in (0.0, 0.5, 1.7, 2.9, 3.1, 6.0, 12.0):
        ref = torch_penalties(d, k, a, m)
        for short, name in names.items():
            f, df = funcs[name]
            assert float(f(np.float64(d))) == pytest.approx(ref[short][0], abs=1e-12)
            if d > 0:  # autograd of max/relu at a kink is a convention
                assert float(df(np.float64(d))) == pytest.approx(ref[short][1], abs=1e-12)
    f_m, df_m = funcs[f"margin (m={m:g})"]
    assert float(df_m(np.float64(2.0))) == 0.0
    assert float(df_m(np.float64(4.0))) == pytest.approx(a * (k - 1) / k, abs=1e-15)
    # MbLS with m = 0 is exactly the linear penalty for d >= 0
    zero = plots.penalty_functions(margin=0.0, alpha=a, num_classes=k)
    d = np.linspace(0, 10, 11)
    np.testing.assert_allclose(zero["margin (m=0)"][0](d), zero["linear (equality)"][0](d))


def test_penalty_defaults_are_the_course_task_and_the_library_losses():
    """K = 4 by default; the linear penalty is MarginLoss(margin=0) minus CE, and LS converges
    to it (its extra term a log(1 + (K-1) e^-d) vanishes): "LS is hidden under CE + linear"."""
    from mls_tutorial.losses import CrossEntropyLoss, MarginLoss

    a, m = 0.1, 10.0
    funcs = plots.penalty_functions(margin=m, alpha=a)
    assert plots.penalty_curves().axes[0].get_title().startswith("penalties (K=4")
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    for d in (0.5, 3.0, 12.0):
        z = torch.tensor([d, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 4, 1, 1)
        for mm, name in ((0.0, "linear (equality)"), (m, f"margin (m={m:g})")):
            ref = MarginLoss(margin=mm, alpha=a)(z, y) - CrossEntropyLoss()(z, y)
            assert float(funcs[name][0](np.float64(d))) == pytest.approx(float(ref), abs=1e-12)
    ls, lin = funcs["LS"][0], funcs["linear (equality)"][0]
    assert ls(0.0) - lin(0.0) == pytest.approx(a * np.log(4))
    assert ls(20.0) - lin(20.0) == pytest.approx(a * np.log1p(3 * np.exp(-20.0)), rel=1e-9)
    assert ls(20.0) - lin(20.0) < 1e-8


def test_penalty_curves_draw_the_functions():
    fig = plots.penalty_curves(margin=4.0, alpha=0.2)
    ax_p, ax_g = fig.axes
    funcs = plots.penalty_functions(4.0, 0.2)
    for ax, which in ((ax_p, 0), (ax_g, 1)):
        curves = {ln.get_label(): ln for ln in ax.lines if ln.get_label() in funcs}
        assert set(curves) == set(funcs)
        for name, ln in curves.items():
            np.testing.assert_allclose(ln.get_ydata(), funcs[name][which](ln.get_xdata()))
        assert any(list(ln.get_xdata()) == [4.0, 4.0] for ln in ax.lines)
    with pytest.raises(ValueError, match="margin"):
        plots.penalty_curves(margin=-1)
    with pytest.raises(ValueError, match="alpha"):
        plots.penalty_curves(alpha=0)
    with pytest.raises(ValueError, match="num_classes"):
        plots.penalty_functions(num_classes=1)


# --------------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def slice_data():
    rng = np.random.default_rng(3)
    label = np.zeros((12, 16), dtype=np.int64)
    label[2:6, 3:9], label[7:11, 8:15] = 1, 2
    z = rng.normal(size=(K, 12, 16)) * 3
    probs = np.exp(z) / np.exp(z).sum(0)
    return rng.normal(size=(12, 16)), label, probs


def test_segmentation_overlay_colours_classes(slice_data):
    image, label, probs = slice_data
    colors = ["black", "red", "#00ccff"]
    fig = plots.segmentation_overlay(image, label, probs, ["bg", "A", "B"], colors)
    overlays = [im for ax in fig.axes for im in ax.images if im.get_gid() == "overlay"]
    assert len(overlays) == 2  # ground truth, prediction
    for im, lab in zip(overlays, (label, probs.argmax(0)), strict=True):
        rgba = np.asarray(im.get_array())
        for c, color in enumerate(colors):
            expected = (*to_rgba(color)[:3], 0.0 if c == 0 else 0.5)
            np.testing.assert_allclose(
                rgba[lab == c], np.broadcast_to(expected, rgba[lab == c].shape)
            )
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B"]
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "prediction"]
    named = plots.segmentation_overlay(image, label, probs, ["bg", "A", "B"], colors,
                                       label_title="sampled label")  # fmt: skip
    assert named.axes[1].get_title() == "sampled label"
    # a label map as prediction, torch tensors and (C, H, W) images work too
    plots.segmentation_overlay(torch.tensor(image)[None], torch.tensor(label), label,
                               ["bg", "A", "B"], colors)  # fmt: skip


def test_segmentation_overlay_rejects_bad_input(slice_data):
    image, label, probs = slice_data
    names, colors = ["bg", "A", "B"], ["k", "r", "b"]
    with pytest.raises(ValueError, match="label"):
        plots.segmentation_overlay(image, label + 1, probs, names, colors)
    with pytest.raises(ValueError, match="label"):
        plots.segmentation_overlay(image, label[:-1], probs, names, colors)
    with pytest.raises(ValueError, match="sum to 1"):
        plots.segmentation_overlay(image, label, probs * 0.5, names, colors)
    with pytest.raises(ValueError, match="class_colors"):
        plots.segmentation_overlay(image, label, probs, names, colors[:2])
    with pytest.raises(ValueError, match="classes"):
        plots.segmentation_overlay(image, label, probs[:2] / probs[:2].sum(0), names, colors)


def test_confidence_entropy_maps_equal_scipy_entropy(slice_data):
    _, _, probs = slice_data
    fig = plots.confidence_entropy_maps(probs, class_names=["bg", "A", "B"])
    images = [im for ax in fig.axes for im in ax.images]
    for c in range(K):
        np.testing.assert_allclose(images[c].get_array(), probs[c])
    (ent,) = [im for im in images if im.get_gid() == "entropy"]
    np.testing.assert_allclose(ent.get_array(), scipy_entropy(probs, axis=0), rtol=1e-12)
    assert ent.get_clim() == pytest.approx((0.0, np.log(K)))
    with pytest.raises(ValueError, match="probs"):
        plots.confidence_entropy_maps(probs[0])
    with pytest.raises(ValueError, match="probs"):
        plots.confidence_entropy_maps(np.full_like(probs, np.nan))


# --------------------------------------------------------------------------- training curves


def test_training_curves_from_a_fit_history():
    history = {  # the layout train.fit writes (history.json)
        "iteration": [1, 2, 3, 4, 5, 6],
        "loss": [1.0, 0.8, 0.7, 0.5, 0.45, 0.4],
        "val_iteration": [3, 6],
        "lr": [1e-3, 1e-3],
        "val_fg_dice": [0.5, 0.7],
        "val_fg_ece": [0.2, 0.1],
        "select_metric": "val_fg_dice",
        "best_iteration": 6,
        "best_value": 0.7,
        "seconds": 1.5,
    }
    fig = plots.training_curves(history)
    ax_loss, ax_val = fig.axes
    (loss,) = ax_loss.lines
    assert list(loss.get_xdata()) == history["iteration"]
    assert list(loss.get_ydata()) == history["loss"]
    val = {ln.get_label(): ln for ln in ax_val.lines}
    assert list(val["fg_dice"].get_ydata()) == [0.5, 0.7]
    assert list(val["fg_ece"].get_xdata()) == [3, 6]
    assert list(val["kept: best fg_dice (it. 6)"].get_xdata()) == [6, 6]
    legend = ax_val.get_legend()
    fig.canvas.draw()
    box = legend.get_window_extent().transformed(ax_val.transAxes.inverted())
    assert box.x0 >= 1.0  # right of the data, never over it
    last = plots.training_curves({**history, "select_metric": "last"}).axes[1]
    labels = [ln.get_label() for ln in last.lines]
    assert "kept: last weights (it. 6)" in labels and not any("best" in t for t in labels)
    records = [{"iteration": i, "loss": v} for i, v in zip([1, 2], [0.3, 0.2], strict=True)]
    assert list(plots.training_curves(records).axes[0].lines[0].get_ydata()) == [0.3, 0.2]
    with pytest.raises(ValueError, match="no loss"):
        plots.training_curves({"lr": [0.1]})
    with pytest.raises(ValueError, match="history"):
        plots.training_curves(3)


def test_save_figure_writes_png_and_closes(tmp_path):
    fig = plots.penalty_curves()
    plots.save_figure(fig, tmp_path / "p.png", dpi=40)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert fig.number not in plt.get_fignums()


def test_one_axes_is_split_for_multi_panel_figures(meter, hists, slice_data):
    """What runs.save_figures does: one Axes per figure, split in place, no pyplot figure."""
    image, label, probs = slice_data
    history = {"iteration": [1, 2], "loss": [1.0, 0.5], "val_iteration": [2], "val_fg_dice": [0.5]}
    rows = [dict(margin=0, dice=0.5, ece=0.1), dict(margin=5, dice=0.6, ece=0.05)]
    draws = {
        2: [lambda ax: plots.reliability_diagram(meter, ax=ax),
            lambda ax: plots.margin_sweep(rows, ax=ax),
            lambda ax: plots.penalty_curves(ax=ax),
            lambda ax: plots.training_curves(history, ax=ax)],
        1: [lambda ax: plots.logit_distance_histogram(hists["CE"][0], margin=5, ax=ax)],
        2 * K: [lambda ax: plots.classwise_reliability(meter, ax=ax)],
        3: [lambda ax: plots.segmentation_overlay(image, label, probs, "abc", "krb", ax=ax)],
        K + 1 + 2: [lambda ax: plots.confidence_entropy_maps(probs, ax=ax)],  # + 2 colorbars
    }  # fmt: skip
    before = plt.get_fignums()
    for n_axes, fns in draws.items():
        for draw in fns:
            fig = Figure(layout="constrained")
            assert draw(fig.add_subplot()) is fig
            assert len(fig.axes) == n_axes
            fig.savefig(io.BytesIO(), format="png", dpi=20)
    assert plt.get_fignums() == before


# ------------------------------------------------------------------------ weight sweep


def _weight_row(family, weight, ece, gap, dice, margin=None):
    knob = "beta" if family == "ecp" else "alpha"
    kwargs = {knob: weight} if margin is None else {knob: weight, "margin": margin}
    return {
        "family": family,
        "loss": {"linear": "mbls"}.get(family, family),
        "loss_kwargs": kwargs,
        "margin": margin,
        "temperature_scaling": False,
        "ece": ece,
        "ece_std": 0.01,
        "gap": gap,
        "gap_std": None,
        "dice": dice,
        "dice_std": 0.02,
    }


def test_weight_sweep_draws_one_line_per_family_sorted_by_weight():
    from matplotlib.figure import Figure

    from mls_tutorial import plots

    rows = [
        _weight_row("ls", 0.3, 0.07, -0.07, 0.49),
        _weight_row("ls", 0.03, 0.10, 0.09, 0.51),
        _weight_row("ecp", 1.0, 0.15, -0.15, 0.51),
        _weight_row("ecp", 0.1, 0.10, 0.08, 0.51),
        _weight_row("mbls", 0.1, 0.09, 0.07, 0.51, margin=5.0),
        _weight_row("mbls", 1.0, 0.05, 0.01, 0.50, margin=5.0),
        _weight_row("mbls", 0.1, 0.06, 0.04, 0.50, margin=3.0),  # one weight: no line
        _weight_row("nacl", 0.1, 0.07, 0.05, 0.48),  # not a default family
        {**_weight_row("ls", 0.1, 0.0, 0.0, 0.5), "temperature_scaling": True},  # skipped
    ]
    curves = plots.weight_curves(rows)
    assert list(curves) == ["LS", "ECP", "MbLS m=5"]
    assert curves["LS"]["weight"].tolist() == [0.03, 0.3]
    assert curves["LS"]["gap"].tolist() == [0.09, -0.07]
    assert curves["LS"]["gap_std"].tolist() == [0.0, 0.0]  # None -> no error bar
    fig = Figure()
    axes = fig.subplots(1, 3)
    plots.weight_sweep(rows, references={"CE": {"ece": 0.11, "gap": 0.09, "dice": 0.51}}, ax=axes)
    assert axes[0].get_xscale() == "log"
    ece_ls = next(line for line in axes[0].get_lines() if line.get_gid() == "LS:ece")
    assert ece_ls.get_ydata().tolist() == [0.10, 0.07]
    assert any(line.get_ydata()[0] == 0.09 for line in axes[1].get_lines())  # CE's gap line
    assert list(plots.weight_curves(rows, families=("ls",))) == ["LS"]
    assert axes[0].get_xlabel() == "penalty weight (alpha; beta for ECP)"
    fig = Figure()
    axes = fig.subplots(1, 3)
    plots.weight_sweep(rows, ax=axes, families=("ls", "mbls"))  # no ECP drawn: no beta named
    assert axes[0].get_xlabel() == "penalty weight (alpha)"
    with pytest.raises(ValueError, match="two or more weights"):
        plots.weight_sweep(rows[6:8])


def test_classwise_reliability_names_a_malformed_meter_dict():
    # a dict that is neither a meter's to_dict() nor a reliability dict: ValueError, no KeyError
    with pytest.raises(ValueError, match="meter_or_dict is neither"):
        plots.classwise_reliability({"type": "CalibrationMeter", "config": {}})


def test_classwise_reliability_titles_its_own_subfigure():
    from mls_tutorial.metrics import CalibrationMeter

    g = torch.Generator().manual_seed(0)
    fig = plt.figure(layout="constrained")
    subs = fig.subfigures(2, 1)
    ceces = []
    for i, sub in enumerate(subs):
        meter = CalibrationMeter(num_classes=3, n_bins=5)
        logits = torch.randn(2, 3, 8, 8, generator=g) * (1 + 3 * i)
        meter.update(logits.softmax(1), torch.randint(0, 3, (2, 8, 8), generator=g))
        plots.classwise_reliability(meter, ax=sub.subplots(), title=f"run {i}")
        ceces.append(meter.compute()["cece"])
    for i, sub in enumerate(subs):  # each sub-figure keeps its own run's CECE
        assert sub._suptitle.get_text().startswith(f"run {i}: classwise reliability")
        assert f"CECE = {ceces[i]:.4f}" in sub._suptitle.get_text()
    assert fig._suptitle is None
    plt.close(fig)


def test_training_curves_keep_one_scale_per_panel():
    """Seven validation series on one axis hid the small ones: DSC, ECE and the gap share the
    validation panel, the NLL goes next to the training loss (same unit), the rest stay out."""
    keys = ("dice", "ece", "cece", "nll", "brier", "gap", "ece_all")
    history = {
        "iteration": [1, 2, 3, 4],
        "loss": [1.0, 0.8, 0.6, 0.4],
        "val_iteration": [2, 4],
        **{f"val_fg_{k}": [0.1 * (i + 1), 0.2 * (i + 1)] for i, k in enumerate(keys)},
    }
    ax_loss, ax_val = plots.training_curves(history).axes[:2]
    labels = {ln.get_label() for ln in ax_val.lines if not ln.get_label().startswith("_")}
    assert labels == {"fg_dice", "fg_ece", "fg_gap"}
    nll = next(ln for ln in ax_loss.lines if ln.get_label() == "validation NLL (fg)")
    assert list(nll.get_ydata()) == history["val_fg_nll"]
    assert list(nll.get_xdata()) == [2, 4]


def test_a_tiny_overflow_is_named_as_under_a_tenth_of_a_percent_never_zero():
    edges = np.linspace(0.0, 40.0, 81)
    counts = np.zeros(80)
    counts[10] = 99_990.0
    for overflow, shown in ((3.0, "[<0.1% beyond 40]"), (600.0, "[0.6% beyond 40]")):
        source = {"edges": edges, "counts": counts, "overflow": overflow, "n": 99_990.0 + overflow}
        fig = plots.logit_distance_histogram({"CE": source}, margin=5.0)
        label = stairs(fig.axes[0])[0].get_label()
        assert shown in label and "[0.0%" not in label, label
        plt.close(fig)
    fig = plots.logit_distance_histogram({"CE": {"edges": edges, "counts": counts}}, margin=5.0)
    assert "beyond" not in stairs(fig.axes[0])[0].get_label()
    plt.close(fig)
