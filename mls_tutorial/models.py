"""2D U-Nets for slice-wise segmentation, built on ``monai.networks.nets.UNet``.

Presets (parameter counts for ``in_channels=1, num_classes=4``; ``tests/test_models.py`` recomputes
them and fails if this table goes stale):

=========  ==========================  =======  ==============  =========  ===========
preset     channels                    strides  residual units  norm       parameters
=========  ==========================  =======  ==============  =========  ===========
``tiny``   (8, 16, 32, 64)             2, 2, 2  0               instance   41,122
``small``  (16, 32, 64, 128)           2, 2, 2  0               instance   162,874
``paper``  (32, 64, 128, 256, 512)     2 (x4)   2               none       6,496,585
=========  ==========================  =======  ==============  =========  ===========

``tiny`` and ``small`` use MONAI's defaults (one convolution per level, instance norm, PReLU):
``tiny`` is the CPU/CI model of the tutorial (about 0.12 s an iteration at batch 16 on 96x112
slices on two CPU cores). ``paper`` approximates the segmentation paper's 2D U-Net: 32..512
channels, two convolutions per level (MONAI residual units) and no normalisation layer.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=0, norm="INSTANCE"),
    "small": dict(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0, norm="INSTANCE"),
    "paper": dict(
        channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2, norm=None
    ),
}


def build_unet(in_channels: int, num_classes: int, preset: str = "tiny") -> UNet:
    """A 2D MONAI ``UNet`` mapping ``(N, in_channels, H, W)`` to logits ``(N, num_classes, H, W)``.

    H and W must be divisible by ``2 ** len(strides)`` (8 for tiny/small, 16 for paper).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; valid presets: {sorted(PRESETS)}")
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + one class), got {num_classes}")
    p = PRESETS[preset]
    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=p["channels"],
        strides=p["strides"],
        num_res_units=p["num_res_units"],
        norm=p["norm"],
    )


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
