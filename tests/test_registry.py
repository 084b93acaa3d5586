"""The loss registry: one table of names, labels, knobs (defaults, ranges) and families, that
agrees with the loss classes themselves and loads without torch."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest

from mls_tutorial import registry
from mls_tutorial.losses import _LOSSES, LOSS_NAMES, build_loss
from mls_tutorial.runs import KNOB_SYMBOLS, KNOBS, run_label


def test_importing_the_registry_imports_no_torch():
    code = "import sys, mls_tutorial.registry, mls_tutorial.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_loss_class_is_registered_in_order():
    assert tuple(_LOSSES) == LOSS_NAMES == registry.LOSS_NAMES


@pytest.mark.parametrize("spec", registry.LOSSES, ids=lambda s: s.name)
def test_knob_defaults_are_the_loss_class_s(spec):
    params = inspect.signature(_LOSSES[spec.name]).parameters
    for knob in spec.knobs:
        assert knob.name in params, (spec.name, knob.name)
        assert params[knob.name].default == knob.default, (spec.name, knob.name)


@pytest.mark.parametrize(
    ("spec", "knob"),
    [(s, k) for s in registry.LOSSES for k in s.knobs],
    ids=lambda x: x.name,
)
def test_knob_ranges_agree_with_the_loss_s_own_checks(spec, knob):
    """Just inside the range both accept; just outside both refuse (the loss is the reference)."""
    inside = [knob.default, knob.high] if math.isfinite(knob.high) else [knob.default, 1e6]
    inside.append(knob.low + 1e-3 if knob.low_open else knob.low)
    outside = [knob.low if knob.low_open else knob.low - 1e-3, math.nan, math.inf]
    if math.isfinite(knob.high):
        outside.append(knob.high + 1e-3)
    for value in inside:
        assert knob.check(value, spec.name) == value
        build_loss(spec.name, **{knob.name: value})
    for value in outside:
        with pytest.raises(ValueError, match=f"{spec.name} {knob.name} must be in"):
            knob.check(value, spec.name)
        with pytest.raises(ValueError, match=knob.name):
            build_loss(spec.name, **{knob.name: value})


def test_the_runs_tables_are_the_registry_s():
    assert KNOBS["mbls"] == ("margin", "alpha") and KNOBS["acls"] == ("alpha", "margin")
    assert "ce" not in KNOBS and KNOB_SYMBOLS["ace_weight"] == "w"
    assert registry.knobs_with("alpha") == ("ls", "mbls", "nacl", "acls")


@pytest.mark.parametrize(
    ("config", "label", "family", "family_label"),
    [
        ({"loss": "ce"}, "CE", "ce", "CE"),
        ({"loss": "ce", "temperature_scaling": True}, "CE + TS", "ce_ts", "CE + TS"),
        ({"loss": "ls", "loss_kwargs": {"alpha": 0.3}}, "LS a=0.3", "ls", "LS"),
        ({"loss": "mbls"}, "MbLS m=10", "mbls", "MbLS"),
        ({"loss": "mbls", "loss_kwargs": {"margin": 0}}, "MbLS m=0", "linear", "linear (MbLS m=0)"),
        ({"loss": "acls", "loss_kwargs": {"alpha": 0.3}}, "ACLS a=0.3", "acls", "ACLS"),
        ({"loss": "focal", "temperature_scaling": True}, "FL + TS", "focal_ts", "FL + TS"),
    ],
)
def test_labels_and_families(config, label, family, family_label):
    assert registry.config_label(config) == run_label(config) == label
    assert registry.family(config) == family
    assert registry.family_label(family) == family_label


def test_family_order_puts_ce_first_and_ce_ts_last():
    ranks = [registry.family_rank(f) for f in ("ce", "ls", "linear", "mbls", "cals", "ce_ts")]
    assert ranks == sorted(ranks) and registry.family_rank("nope") == len(registry.FAMILY_ORDER)
    assert set(LOSS_NAMES) < set(registry.FAMILY_ORDER)


def test_an_unknown_loss_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss name 'hinge'; valid names: ce, ce_dice"):
        registry.spec("hinge")
    with pytest.raises(ValueError, match="unknown loss name"):
        build_loss("hinge")
