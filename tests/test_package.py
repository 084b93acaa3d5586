"""The package foundation: version, CLI entry points, the device helper."""

import subprocess
import sys

import pytest
import torch

import mls_tutorial
from mls_tutorial.device import amp_dtype, autocast, pick_device


def test_version_matches_metadata():
    from importlib.metadata import version

    assert mls_tutorial.__version__ == version("mls-tutorial")


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_console_script_flags(flag):
    out = subprocess.run(
        [sys.executable, "-m", "mls_tutorial", flag], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if flag == "--version":
        assert text.strip() == f"mls-tutorial {mls_tutorial.__version__}"
    else:
        assert "usage: mls-tutorial" in text


def test_import_is_light():
    code = "import sys, mls_tutorial; print('monai' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


def test_pick_device_cpu_and_errors():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device() == pick_device("auto")
    if not torch.cuda.is_available():
        assert pick_device().type in {"cpu", "mps"}
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


def test_autocast_is_noop_on_cpu():
    dev = torch.device("cpu")
    assert amp_dtype(dev) is None
    with autocast(dev):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
