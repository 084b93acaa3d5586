"""The ``mls-tutorial`` command line.

Subcommands (train, evaluate, sweep, report, demo) are added by the training issue; ``--help``
and ``--version`` work now.
"""

from __future__ import annotations

import argparse
import sys

from mls_tutorial import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mls-tutorial",
        description="Margin-based label smoothing (MbLS) for calibrated segmentation: "
        "train, evaluate and compare calibration losses on bundled brain MRI data.",
    )
    parser.add_argument("--version", action="version", version=f"mls-tutorial {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0
