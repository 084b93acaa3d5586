"""Lets PyPI's CUDA-built torchvision import beside a CPU torch (the nnU-Net venv of .ci/run).

nnU-Net 2.8.1 imports every trainer module of its package when it looks up a trainer other than
``nnUNetTrainer`` (``-tr``), and its Primus trainers import timm, which imports torchvision.
PyPI's Linux torchvision links CUDA torch libraries; beside a CPU torch its ``_C`` does not load
and ``torchvision/_meta_registrations.py`` then fails on ``register_fake("torchvision::nms")``
for an operator that was never defined. Users fix that with the CPU torchvision from PyTorch's
CPU index; CI cannot reach it, so a ``.pth`` imports this module, which defines the two operator
schemas (no kernels: torchvision's detection ops stay unusable, nnU-Net needs none) on the
first ``import torchvision``, and only when torch is a CPU build.
"""

import importlib.abc
import sys

_LIBS = []


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        if torch.version.cuda is None and not hasattr(torch.ops.torchvision, "nms"):
            lib = torch.library.Library("torchvision", "DEF")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBS.append(lib)
        return None


sys.meta_path.insert(0, _Finder())
