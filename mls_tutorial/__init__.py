"""mls_tutorial: margin-based label smoothing (MbLS) for calibrated medical image segmentation.

Kept light on purpose: importing the package does not import MONAI or matplotlib, so that
``mls-tutorial --version`` is instant. Import the submodules you need::

    from mls_tutorial.losses import MarginLoss, logit_distances
    from mls_tutorial.metrics import CalibrationMeter
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mls-tutorial")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
