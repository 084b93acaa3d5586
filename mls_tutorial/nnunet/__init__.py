"""MbLS and the other calibration penalties inside nnU-Net v2 (``pip install "mls-tutorial[nnunet]"``).

nnU-Net 2.8.1 finds trainer classes outside its package in the folders named by the environment
variable ``nnUNet_extTrainer`` (several joined with ``os.pathsep``): its
``recursive_find_trainer_class_by_name`` imports every module of such a folder as a top-level
module and takes the class of the requested name. :func:`trainer_folder` is that folder
(``trainers/``); ``mls-tutorial nnunet path`` prints it.

Modules: ``penalties`` (the penalties, torch only), ``trainers/`` (the trainer classes, nnU-Net
and torch only), ``export`` (the bundled MNI task as an nnU-Net raw dataset), ``command`` (the
``mls-tutorial nnunet`` subcommand). Importing this package imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "trainer_folder", "env_has_folder"]

#: the environment variable nnU-Net reads
ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer`` (absolute)."""
    return (Path(__file__).parent / "trainers").resolve()


def env_has_folder(environ: dict[str, str] | None = None) -> bool:
    """Whether ``nnUNet_extTrainer`` (split on ``os.pathsep``) names :func:`trainer_folder`."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    folder = trainer_folder()
    return any(p.strip() and Path(p.strip()).resolve() == folder for p in value.split(os.pathsep))
