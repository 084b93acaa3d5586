"""Segmentation overlays and per-class confidence / entropy maps for one 2D slice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import Patch

from mls_tutorial.plots._common import axes_grid, class_names_for, root_figure


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be array-like ({exc})") from None


def _image_2d(image) -> np.ndarray:
    img = _to_numpy(image, "image").astype(np.float64)
    if img.ndim == 3:  # (C, H, W): show the first channel
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"image must be (H, W) or (C, H, W), got shape {img.shape}")
    return img


def _label_map(label, name: str, num_classes: int, shape) -> np.ndarray:
    lab = _to_numpy(label, name)
    if lab.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(f"{name} must hold integer class indices")
        lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise ValueError(f"{name} holds classes outside [0, {num_classes - 1}]")
    return lab


def check_probs(probs, name: str = "probs") -> np.ndarray:
    """``(K, H, W)`` class probabilities in [0, 1] summing to 1 over K (float64)."""
    p = _to_numpy(probs, name).astype(np.float64)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"{name} must be (K, H, W) with K >= 2, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"{name} must be finite probabilities in [0, 1]")
    if not np.allclose(p.sum(0), 1.0, atol=1e-3):
        raise ValueError(
            f"{name} must sum to 1 over the class axis (got sums in "
            f"[{p.sum(0).min():.4f}, {p.sum(0).max():.4f}])"
        )
    return p


def label_rgba(
    label: np.ndarray, class_colors: Sequence, background: int | None = 0, opacity: float = 0.5
) -> np.ndarray:
    """``(H, W, 4)`` overlay: each pixel in its class colour, ``background`` transparent."""
    palette = np.array([to_rgba(c) for c in class_colors], dtype=np.float64)
    palette[:, 3] = opacity
    if background is not None:
        palette[background, 3] = 0.0
    return palette[label]


def segmentation_overlay(
    image,
    label,
    pred_or_probs,
    class_names: Sequence[str],
    class_colors: Sequence,
    ax=None,
    background: int | None = 0,
    label_title: str = "ground truth",
):
    """Image, ground truth and prediction (argmax of probabilities) side by side; returns the figure.

    ``image`` ``(H, W)`` or ``(C, H, W)`` (first channel shown), ``label`` ``(H, W)`` class
    indices, ``pred_or_probs`` ``(H, W)`` class indices or ``(K, H, W)`` probabilities. Classes
    are drawn in ``class_colors`` at half opacity, ``background`` (class 0) left transparent.
    ``ax``: None, one Axes (split) or three. ``label_title`` names the middle panel (e.g.
    ``"sampled label"`` when the reference is one draw from the true probabilities).
    """
    img = _image_2d(image)
    k = len(class_names)
    if len(class_colors) < k:
        raise ValueError(f"class_colors has {len(class_colors)} colours for {k} classes")
    if k < 2:
        raise ValueError("class_names must name at least 2 classes")
    gt = _label_map(label, "label", k, img.shape)
    pred = _to_numpy(pred_or_probs, "pred_or_probs")
    if pred.ndim == 3:
        if pred.shape[0] != k:
            raise ValueError(f"pred_or_probs has {pred.shape[0]} classes, class_names {k}")
        pred = check_probs(pred, "pred_or_probs").argmax(0)
    pred = _label_map(pred, "pred_or_probs", k, img.shape)
    axes = axes_grid(ax, 3, direction="row", figsize=(10.5, 3.8))
    for axis, title, lab in zip(
        axes, ("image", label_title, "prediction"), (None, gt, pred), strict=True
    ):
        axis.imshow(img, cmap="gray", interpolation="nearest")
        if lab is not None:
            axis.imshow(
                label_rgba(lab, class_colors[:k], background),
                interpolation="nearest",
                gid="overlay",
            )
        axis.set_title(title)
        axis.set_axis_off()
    shown = [c for c in range(k) if c != background]
    axes[-1].legend(
        handles=[Patch(color=class_colors[c], label=class_names[c]) for c in shown],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
        frameon=False,
    )
    return root_figure(axes[0])


def entropy_map(probs) -> np.ndarray:
    """``H = -sum_k s_k log s_k`` per pixel, in nats (``0 log 0 = 0``)."""
    p = check_probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(0)


def confidence_entropy_maps(probs, ax=None, class_names: Sequence[str] | None = None):
    """One map per class probability ``s_k`` (0..1) and the entropy map (0..log K); returns the figure.

    ``probs``: ``(K, H, W)``. ``ax``: None, one Axes (split) or ``K + 1`` Axes.
    """
    p = check_probs(probs)
    k = p.shape[0]
    names = class_names_for(class_names, k)
    axes = axes_grid(ax, k + 1, direction="row", figsize=(2.8 * (k + 1), 3.2))
    fig = root_figure(axes[0])
    for c in range(k):
        im = axes[c].imshow(p[c], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[c].set_title(f"$s$ {names[c]}", fontsize="medium")
    fig.colorbar(im, ax=axes[:k], shrink=0.8, label="probability")
    im = axes[k].imshow(
        entropy_map(p),
        cmap="magma",
        vmin=0.0,
        vmax=np.log(k),
        interpolation="nearest",
        gid="entropy",
    )
    axes[k].set_title("entropy $H(s)$ (nats)", fontsize="medium")
    fig.colorbar(im, ax=axes[k], shrink=0.8, label=f"0 .. log {k}")
    for axis in axes:
        axis.set_axis_off()
    return fig
