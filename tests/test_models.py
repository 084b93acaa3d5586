"""build_unet presets: shapes, documented parameter counts, bad arguments."""

from __future__ import annotations

import re

import pytest
import torch

from mls_tutorial import models
from mls_tutorial.models import PRESETS, build_unet, count_parameters


def _documented_counts() -> dict[str, int]:
    """Parameter counts from the table in the models module docstring."""
    counts = {}
    for line in models.__doc__.splitlines():
        m = re.match(r"``(\w+)``\s.*\s([\d,]+)\s*$", line)
        if m:
            counts[m.group(1)] = int(m.group(2).replace(",", ""))
    return counts


def test_docstring_documents_every_preset_with_its_true_parameter_count():
    documented = _documented_counts()
    assert set(documented) == set(PRESETS)
    for preset, n in documented.items():
        model = build_unet(1, 4, preset)
        # independent reference: count scalars in the state dict entries that are parameters
        names = {name for name, _ in model.named_parameters()}
        reference = sum(t.numel() for k, t in model.state_dict().items() if k in names)
        assert count_parameters(model) == reference == n, preset


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_forward_shape_and_channels(preset):
    model = build_unet(2, 3, preset).eval()
    x = torch.randn(2, 2, 32, 40)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 32, 40)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(c.out_channels for c in convs) == PRESETS[preset]["channels"][-1]


def test_paper_preset_has_no_normalisation_and_five_levels():
    model = build_unet(1, 4, "paper")
    norms = (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})
    assert {32, 64, 128, 256, 512} <= set(widths)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 4, 32, 32)


def test_count_parameters_trainable_only():
    model = build_unet(1, 2, "tiny")
    total = count_parameters(model)
    next(model.parameters()).requires_grad_(False)
    frozen = next(model.parameters()).numel()
    assert count_parameters(model) == total - frozen
    assert count_parameters(model, trainable_only=False) == total


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 4, "huge"), "preset"),
        ((0, 4, "tiny"), "in_channels"),
        ((1, 1, "tiny"), "num_classes"),
        ((1, 2.0, "tiny"), "num_classes"),
        ((True, 4, "tiny"), "in_channels"),
    ],
)
def test_bad_arguments_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        build_unet(*args)
