"""The ``mls-tutorial`` command line (also ``python -m mls_tutorial`` and ``torchrun -m mls_tutorial``).

Subcommands:

- ``demo``: the README's main command. Trains CE and MbLS (m=5) on the bundled MNI brain data
  (a few minutes on a 2-core CPU; ``--fast`` for a one-minute smoke run), prints the results
  table and writes reliability diagrams and logit-distance histograms to the run folders.
- ``train``: one run (a loss, its parameters, a seed) into a cached run folder.
- ``evaluate``: re-evaluate run folders (test or validation split, optional temperature scaling).
- ``sweep``: several losses x margins x seeds in one call -> one table (Markdown, CSV, JSON).
- ``report``: figures and a Markdown table from existing run folders.
- ``shipped``: the course's runs shipped with the package: list, ``--verify N``, ``--rebuild``.
- ``score``: calibration of any model's saved probability maps (nnU-Net, NIfTI, NumPy folders).

Runs are keyed by their config: a finished run is reused (the output says ``[cached]``), and a
run the package ships with exactly that config is copied in (``[shipped]``; ``--no-shipped``
trains instead).
Under ``torchrun --nproc_per_node N`` training uses DDP and only rank 0 writes or prints.
Importing this module stays light (no torch/MONAI until a subcommand runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mls_tutorial import __version__
from mls_tutorial.grid import DEMO_MARGIN, FlagError
from mls_tutorial.registry import LOSS_NAMES, knobs_with

#: every loss (``mls_tutorial.registry``: importing it loads no torch)
LOSSES = LOSS_NAMES
PRESETS = ("tiny", "small", "paper")
SELECT_METRICS = (
    "last",
    "val_fg_dice",
    "val_fg_ece",
    "val_fg_cece",
    "val_fg_nll",
    "val_fg_brier",
    "val_ece_all",
)
#: the demo: the over-confident regime of the bundled data (see docs/results.md)
DEMO_DEFAULTS = dict(iterations=1000, batch_size=16, val_every=100, preset="tiny", lr=1e-3)
#: --fast: a CI smoke run (about a minute on 2 CPU cores)
FAST_DEFAULTS = dict(iterations=60, batch_size=8, val_every=30, preset="tiny", lr=1e-3)
FAST_DATA = {"n_train_subjects": 1, "n_val_subjects": 1, "n_test_subjects": 1}


class CLIError(ValueError):
    """A bad option value found after parsing: ``mls-tutorial CMD: error: ...``, exit code 2."""


class CommandError(RuntimeError):
    """What a command met, not a flag (no scheduler, a worker without the run root): exit 1."""


# ------------------------------------------------------------------------------ arg types


def _int_at_least(lo: int):
    what = "a positive integer" if lo == 1 else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _float_at_least(lo: float, strict: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or value < lo
            or (strict and value == lo)
        ):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {lo:g}, got {text!r}"
            )
        return value

    return parse


_positive_float = _float_at_least(0.0, strict=True)
_nonneg_float = _float_at_least(0.0, strict=False)


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is parsed as JSON when it can be (numbers, lists, true/null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Python-name KEY, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


# ------------------------------------------------------------------------------ the parser


def _add_training_options(p: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Training options; their defaults are filled in by ``_resolve`` (so --fast can change the
    unset ones while explicit values win)."""
    g = p.add_argument_group("training")
    g.add_argument(
        "--data", default="mni", help="dataset: mni (bundled, default), synthetic, acdc, decathlon"
    )
    g.add_argument(
        "--data-param",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="dataset parameter (repeatable), e.g. labels=hard, n_train_subjects=8, root=~/ACDC",
    )
    g.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help=f"U-Net size (default: {defaults['preset']})",
    )
    g.add_argument(
        "--iterations",
        type=_positive_int,
        default=None,
        help=f"training iterations (default: {defaults['iterations']})",
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"images per iteration, per process under torchrun (default: {defaults['batch_size']})",
    )
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"Adam learning rate (default: {defaults['lr']:g})",
    )
    g.add_argument(
        "--lr-step",
        type=_positive_int,
        default=None,
        help="StepLR period in iterations (lr x0.1 each period; default: constant lr)",
    )
    g.add_argument(
        "--val-every",
        type=_nonneg_int,
        default=None,
        help=f"validate every N iterations, 0 = never (default: {defaults['val_every']})",
    )
    g.add_argument(
        "--select-metric",
        choices=SELECT_METRICS,
        default="last",
        help="which weights are kept: 'last' (default: the end of training, where CE is "
        "over-confident) or the best of a validation metric (val_fg_dice: the paper's protocol)",
    )
    g.add_argument(
        "--no-amp", action="store_true", help="disable mixed precision (used on CUDA only)"
    )
    _add_runtime_options(p)


def _resolve(args, defaults: dict[str, Any]) -> None:
    """Fill training options left unset with ``defaults``."""
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _add_runtime_options(p: argparse.ArgumentParser, out_default: str = "runs") -> None:
    g = p.add_argument_group("runtime")
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps (default: %(default)s)",
    )
    g.add_argument(
        "--out", default=out_default, help="root folder of the run folders (default: %(default)s)"
    )
    g.add_argument("--force", action="store_true", help="retrain even if a cached run exists")
    g.add_argument(
        "--no-shipped",
        action="store_true",
        help="never copy a run shipped with the package: train it here (mls-tutorial shipped)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_loss_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument(
        "--alpha",
        type=_nonneg_float,
        default=None,
        help=f"weight of the penalty, a knob of {'/'.join(knobs_with('alpha'))} (each loss's "
        "default when omitted; an error for a loss without it)",
    )
    g.add_argument(
        "--loss-param",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="any other loss parameter (repeatable), e.g. gamma=2 (focal), beta=0.2 (ecp); "
        "it applies to the losses that have it (an error when none has)",
    )
    g.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="also fit a temperature on the validation set (post-hoc, for ce)",
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help text already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)


def _demo_parser(sub, fmt) -> None:
    """``demo``: CE and MbLS (and any --losses) on the bundled data, compared."""
    p = sub.add_parser(
        "demo",
        help="train CE and MbLS on the bundled data and compare them",
        description="Train CE and MbLS (and any --losses) on the bundled MNI brain "
        "data, print DSC/HD95/ECE/CECE/gap, write reliability diagrams and "
        "logit-distance histograms. A few minutes on a 2-core CPU (under 10); --fast: under a minute.",
    )
    p.add_argument(
        "--losses",
        nargs="+",
        choices=LOSSES,
        default=["ce", "mbls"],
        help="losses to compare (default: ce mbls)",
    )
    p.add_argument(
        "--margin",
        type=_nonneg_float,
        default=None,
        help=f"MbLS margin m (default: {DEMO_MARGIN:g}, not train's 10: on the bundled data CE's "
        "logit distances peak near 10, where a margin of 10 barely binds; see docs/results.md)",
    )
    p.add_argument("--seed", type=_nonneg_int, default=1, help="random seed (default: 1)")
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"CI smoke run: {FAST_DEFAULTS['iterations']} iterations on 1 subject per split",
    )
    _add_loss_options(p)
    _add_training_options(p, DEMO_DEFAULTS)
    p.set_defaults(out="runs/demo")


def _train_parser(sub, fmt) -> None:
    """``train``: one run, cached by its config."""
    p = sub.add_parser("train", help="train one run (cached by config)", formatter_class=fmt)
    p.add_argument("--loss", choices=LOSSES, default="mbls", help="training loss")
    p.add_argument(
        "--margin",
        type=_nonneg_float,
        default=None,
        help=f"the margin m of {'/'.join(knobs_with('margin'))} (an error for another loss; "
        "default: the loss's, 10 for MbLS as in the paper and the official code; demo uses 5, "
        "which binds on the bundled data)",
    )
    p.add_argument("--seed", type=_nonneg_int, default=1, help="random seed")
    _add_loss_options(p)
    _add_training_options(p, DEMO_DEFAULTS)


def _evaluate_parser(sub, fmt) -> None:
    """``evaluate``: run folders evaluated again (test or validation split)."""
    p = sub.add_parser("evaluate", help="re-evaluate run folders", formatter_class=fmt)
    p.add_argument("runs", nargs="+", help="run folders (holding config.json and checkpoint.pt)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="volumes to evaluate")
    p.add_argument(
        "--temperature-scaling",
        action="store_true",
        help="fit T on the validation volumes and evaluate with it",
    )
    p.add_argument("--output", default=None, help="write the results (a JSON list) to this file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")


def _sweep_parser(sub, fmt) -> None:
    """``sweep``: grids of losses and knobs x seeds, one results table."""
    p = sub.add_parser(
        "sweep",
        help="grids of losses and knobs x seeds -> one results table",
        formatter_class=fmt,
        description="Train every config of the grid for every seed (cached runs are reused), "
        "in parallel with --workers, then write one results table. Give either --losses and "
        "--margins, or one --grid per loss family (repeatable), e.g. --grid ce "
        "--grid ls:alpha=0.03,0.1,0.3 --grid mbls:margin=3,5,10. Choose each family's knob "
        "afterwards with `mls-tutorial report ROOT --choose-on val`.",
    )
    p.add_argument(
        "--losses",
        nargs="+",
        choices=LOSSES,
        default=None,
        help="losses to train with their default knobs (default: ce mbls)",
    )
    p.add_argument(
        "--margins",
        nargs="+",
        type=_nonneg_float,
        default=None,
        help=f"MbLS margins, one mbls run per margin (default: {DEMO_MARGIN:g})",
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="LOSS[:KEY=V1,V2,...]",
        help="one loss family's grid (repeatable; each KEY=values multiplies it), e.g. "
        "ls:alpha=0.03,0.1,0.3 or mbls:margin=3,5,10:alpha=0.1,0.3 or ce",
    )
    p.add_argument("--seeds", nargs="+", type=_nonneg_int, default=[1], help="random seeds")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="runs trained at once, in separate processes of cores/workers threads each",
    )
    _scheduler_arguments(
        p,
        "train on the Dask cluster of this scheduler (tcp://host:port) instead of local "
        "processes, one task per run; --out must be a folder every worker sees",
    )
    p.add_argument(
        "--threads-per-run",
        type=_positive_int,
        default=None,
        help="torch threads of each run (default: the machine's cores / the runs it trains at once)",
    )
    p.add_argument(
        "--name", default="results", help="file stem of the table (<out>/<name>.md/.csv/.json)"
    )
    _add_loss_options(p)
    _add_training_options(p, DEMO_DEFAULTS)


def _report_parser(sub, fmt) -> None:
    """``report``: tables and figures from run folders (``--choose-on val``)."""
    p = sub.add_parser(
        "report", help="figures and a Markdown table from run folders", formatter_class=fmt
    )
    p.add_argument("root", help="folder searched (recursively) for finished runs")
    p.add_argument(
        "--out", default=None, help="where the table and comparison figures go (default: ROOT)"
    )
    p.add_argument("--name", default="report", help="file stem of the table")
    p.add_argument(
        "--choose-on",
        choices=("val",),
        default=None,
        help="also choose each family's config on VALIDATION numbers only and write "
        "chosen.md (test numbers of the chosen configs, paired differences to CE) and grid.md. "
        "Rule: among a family's configs whose mean validation foreground DSC is within "
        "--dice-tolerance of CE's, the lowest mean validation foreground ECE (means over the "
        "seeds CE and the family share). Families: the loss, MbLS m=0 apart as 'linear'",
    )
    p.add_argument(
        "--dice-tolerance",
        type=_nonneg_float,
        default=0.01,
        help="how far below CE's validation DSC a config may be and stay eligible (1 point)",
    )


def _shipped_parser(sub, fmt) -> None:
    """``shipped``: list, verify or rebuild the runs shipped with the package."""
    p = sub.add_parser(
        "shipped",
        help="the course's runs shipped with the package: list, verify, rebuild",
        formatter_class=fmt,
        description="List the runs the package ships (the notebooks, demo and docs read them "
        "instead of training). --verify N retrains N of them (random, or --name) in a "
        "temporary folder and compares; --rebuild trains every one from scratch and replaces "
        "the shipped set atomically.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--verify", type=_positive_int, metavar="N", help="retrain N shipped runs")
    g.add_argument("--rebuild", action="store_true", help="retrain and replace every shipped run")
    p.add_argument(
        "--name",
        nargs="+",
        default=None,
        help="with --verify: these shipped runs instead of N random ones",
    )
    p.add_argument(
        "--tolerance",
        type=_nonneg_float,
        default=0.02,
        help="largest absolute difference allowed by --verify (Dice, ECE, gap, ...)",
    )
    p.add_argument(
        "--seed", type=_nonneg_int, default=None, help="which random runs --verify takes"
    )
    p.add_argument("--workers", type=_positive_int, default=1, help="--rebuild: runs at once")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _scheduler_arguments(p, help_text: str) -> None:
    """``--scheduler ADDRESS`` | ``--scheduler-file PATH``: a Dask cluster (``cluster.py``)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", metavar="ADDRESS", default=None, help=help_text)
    g.add_argument(
        "--scheduler-file",
        metavar="PATH",
        default=None,
        help="as --scheduler, from the file `dask scheduler --scheduler-file PATH` writes",
    )


def _score_parser(sub, fmt) -> None:
    """`score`: any model's saved probability maps against label maps."""
    p = sub.add_parser(
        "score",
        help="calibration of any model's saved probability maps (nnU-Net, NIfTI, NumPy)",
        formatter_class=fmt,
        description="Score saved probability maps against label maps: Dice, HD95, foreground "
        "ECE, CECE, gap, NLL, Brier, reliability diagrams, the logit-distance histogram and a "
        "plain-language summary.md in OUT. PRED layouts (detected): nnU-Net v2 "
        "--save_probabilities (CASE.npz, (C, Z, Y, X)), NIfTI (X, Y, Z, C), NumPy CASE.npy "
        "(C, X, Y, Z). LABELS: CASE.nii.gz label maps (spacing from their headers). A "
        "region-based model (PRED/dataset.json labels that are lists, e.g. nnU-Net's BraTS "
        "regions; one sigmoid channel per region) is scored region by region, each a two-class "
        "problem with its own temperature (docs/nnunet.md).",
    )
    p.add_argument("pred", help="folder of per-case probability maps")
    p.add_argument("labels", help="folder of label maps CASE.nii.gz (e.g. nnU-Net's labelsTr)")
    p.add_argument("--out", required=True, help="output folder (new, empty or an earlier score's)")
    p.add_argument(
        "--val-cases",
        nargs="+",
        default=[],
        metavar="CASE",
        help="case ids (or files of ids) used ONLY to fit temperature scaling; the other cases "
        "are reported before and after it",
    )
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="class names in channel order (default: PRED/dataset.json, else class0..)",
    )
    p.add_argument(
        "--background", type=_nonneg_int, default=0, help="label of the background class"
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip predictions without a label map (default: an error listing them)",
    )
    p.add_argument(
        "--write-calibrated",
        default=None,
        metavar="DIR",
        help="with --val-cases: write the temperature-scaled probabilities of every reported "
        "case to DIR, in the input's layout (nnU-Net .npz + .pkl + argmax .nii.gz, NIfTI, NumPy)",
    )
    p.add_argument("--no-hd95", action="store_true", help="calibration and Dice only, no HD95")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the cases are scored: cpu, auto (cuda when present), cuda, cuda:N; with "
        "--workers N or --scheduler every worker uses this same device; on CUDA the numbers "
        "equal the CPU's within float tolerance; HD95 and the temperature fit run on the CPU "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="cases scored at once, in N processes (memory: N x one case's "
        "probabilities; the numbers are those of one worker)",
    )
    _scheduler_arguments(
        p,
        "score the cases on the Dask cluster of this scheduler (tcp://host:port), one task per "
        "case (memory: one case per worker thread); PRED and LABELS must be folders every "
        "worker sees; the numbers are those of one worker",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _nnunet_parser(sub, fmt) -> None:
    """`nnunet`: the trainer folder for nnUNet_extTrainer, the MNI task exported."""
    p = sub.add_parser(
        "nnunet",
        help="MbLS in nnU-Net v2: the trainer folder, the MNI task as an nnU-Net dataset",
        formatter_class=fmt,
        description="nnU-Net v2 trainers with MbLS, LS and ECP (docs/nnunet.md): `path` prints "
        "the folder for nnUNet_extTrainer, `export-mni OUT` writes the bundled task.",
    )
    from mls_tutorial.nnunet.command import add_arguments as _nnunet_arguments

    _nnunet_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mls-tutorial",
        description="Margin-based label smoothing (MbLS) for calibrated segmentation: "
        "train, evaluate and compare calibration losses on bundled brain MRI data.",
        epilog="Start with: mls-tutorial demo   (or mls-tutorial demo --fast for a 1-minute run)",
    )
    parser.add_argument("--version", action="version", version=f"mls-tutorial {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = _HelpFormatter
    for add in (_demo_parser, _train_parser, _evaluate_parser, _sweep_parser, _report_parser,
                _shipped_parser, _score_parser, _nnunet_parser):  # fmt: skip
        add(sub, fmt)
    return parser


# ------------------------------------------------------------------------------ configs


def _base(args) -> dict[str, Any]:
    """The config keys every run of this command shares (the training options)."""
    data_params = dict(args.data_param)
    if getattr(args, "fast", False):
        data_params = {**FAST_DATA, **data_params}
    return {
        "data": args.data,
        "data_params": data_params,
        "preset": args.preset,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_step": args.lr_step,
        "val_every": args.val_every,
        "select_metric": args.select_metric,
        "amp": not args.no_amp,
    }


def _device(args, pick=None):
    """``--device`` checked before anything is written (None for auto); ``pick``: the command's
    own check (default: ``device.pick_device``)."""
    from mls_tutorial.device import pick_device

    if args.device == "auto":
        return None
    try:
        (pick or pick_device)(args.device)
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"--device {args.device!r} is not usable here: {exc}") from None
    return args.device


def _train_all(args, configs: list[dict]):
    from mls_tutorial.runs import load_or_train, normalize_config

    device = _device(args)
    for cfg in configs:  # every config checked before the first run starts
        normalize_config(cfg)
    return [
        load_or_train(
            cfg,
            args.out,
            device=device,
            progress=not args.no_progress,
            force=args.force,
            use_shipped=not args.no_shipped,
        )
        for cfg in configs
    ]


# ------------------------------------------------------------------------------ commands


def _leave_process_group(runs) -> bool:
    """End DDP (if any) once every rank has its runs; True on the rank that reports (rank 0).

    Tables and figures are made afterwards by rank 0 alone: drawing a meter rebuilds it, and a
    rebuilt meter would otherwise all-reduce with ranks that are no longer listening. Per-run
    figures skipped during DDP training are drawn here too.
    """
    from mls_tutorial.runs import FIGURES, save_figures
    from mls_tutorial.train import distributed as dist_utils

    was_distributed, main_rank = dist_utils.is_distributed(), dist_utils.is_main()
    dist_utils.barrier()
    dist_utils.shutdown()
    if main_rank and was_distributed:
        for run in runs:
            if not all((run.path / f).is_file() for f in FIGURES):
                save_figures(run)
    return main_rank


def _echo(text: str) -> None:
    from mls_tutorial.train import distributed as dist_utils

    if dist_utils.is_main():
        print(text, flush=True)


def cmd_train(args) -> int:
    from mls_tutorial.grid import train_config
    from mls_tutorial.results import format_markdown, results_table

    _resolve(args, DEMO_DEFAULTS)
    _device(args)
    config = train_config(
        _base(args),
        args.loss,
        args.seed,
        margin=args.margin,
        alpha=args.alpha,
        params=args.loss_param,
        temperature_scaling=args.temperature_scaling,
    )
    runs = _train_all(args, [config])
    if not _leave_process_group(runs):
        return 0
    print(f"run folder: {runs[0].path}")
    print(format_markdown(results_table(runs)))
    return 0


def _sweep_configs(args) -> list[dict]:
    """The configs of ``sweep``: from ``--grid`` (one per family) or ``--losses/--margins``."""
    from mls_tutorial.grid import grid_text_configs, losses_configs

    _device(args)
    if not args.grid:
        return losses_configs(
            _base(args),
            args.losses or ["ce", "mbls"],
            args.seeds,
            margins=("--margins", args.margins),
            alpha=args.alpha,
            params=args.loss_param,
            ce_ts=args.temperature_scaling,
        )
    if args.losses or args.margins:
        raise CLIError("give either --grid or --losses/--margins, not both")
    if args.alpha is not None or args.loss_param:
        raise CLIError("with --grid, set knobs in the grid (e.g. mbls:margin=5:alpha=0.1)")
    return grid_text_configs(_base(args), args.grid, args.seeds, ce_ts=args.temperature_scaling)


def _demo_configs(args) -> list[dict]:
    from mls_tutorial.grid import losses_configs

    _device(args)
    return losses_configs(
        _base(args),
        args.losses,
        [args.seed],
        margins=("--margin", None if args.margin is None else [args.margin]),
        alpha=args.alpha,
        params=args.loss_param,
        ce_ts=args.temperature_scaling,
    )


def _scheduler_executor(args, work: str = "train the runs"):
    """The Dask executor of ``--scheduler``/``--scheduler-file``; None: the local pool."""
    import contextlib

    if args.scheduler is None and args.scheduler_file is None:
        return contextlib.nullcontext(None)
    if args.workers != 1:
        raise CLIError(f"--workers sizes the local pool; with a scheduler its workers {work}")
    from mls_tutorial.cluster import dask_executor

    return dask_executor(args.scheduler, args.scheduler_file)


def cmd_sweep(args) -> int:
    from mls_tutorial import report
    from mls_tutorial.cluster import SharedRootError
    from mls_tutorial.results import format_markdown, results_table, write_results
    from mls_tutorial.sweep import train_configs

    _resolve(args, DEMO_DEFAULTS)
    configs = _sweep_configs(args)
    try:
        with _scheduler_executor(args) as executor:
            runs = train_configs(
                configs,
                args.out,
                executor=executor,
                workers=args.workers,
                threads_per_run=args.threads_per_run,
                device=_device(args),
                progress=not args.no_progress,
                force=args.force,
                use_shipped=not args.no_shipped,
            )
    except (ImportError, ConnectionError, SharedRootError) as exc:  # Dask, scheduler, root
        raise CommandError(str(exc)) from None
    if not _leave_process_group(runs):
        return 0
    rows = results_table(runs)
    paths = write_results(rows, args.out, args.name)
    figs = report.comparison_figures(runs, args.out)
    print(format_markdown(rows))
    print("figures: " + ", ".join(str(p) for p in figs))
    print("table: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_demo(args) -> int:
    from mls_tutorial import report
    from mls_tutorial.results import format_markdown, results_table, write_results

    _resolve(args, FAST_DEFAULTS if args.fast else DEMO_DEFAULTS)
    runs = _train_all(args, _demo_configs(args))
    if not _leave_process_group(runs):
        return 0
    rows = results_table(runs)
    out = Path(args.out)
    paths = write_results(rows, out, "results")
    figs = report.comparison_figures(runs, out)
    print("")
    print(runs[0].metrics["data"]["description"])
    print(format_markdown(rows))
    print(report.demo_summary(rows))
    print("figures: " + ", ".join(str(p) for p in figs))
    print("per-run folders: " + ", ".join(str(r.path) for r in runs))
    print("table: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_evaluate(args) -> int:
    from mls_tutorial.files import write_json
    from mls_tutorial.metrics.results import TABLE_COLUMNS
    from mls_tutorial.runs import get_data
    from mls_tutorial.train import evaluate, fit_temperature

    device = _device(args)
    results = []
    for folder in args.runs:
        run = _load_for_eval(folder)
        data = get_data(run.config)
        model = run.load_model(device)
        t = fit_temperature(model, data.val, device=device) if args.temperature_scaling else None
        volumes = data.test if args.split == "test" else data.val
        res = evaluate(
            model,
            volumes,
            data.num_classes,
            device=device,
            temperature=t,
            amp=run.config["amp"],
            class_names=data.class_names,
        )
        res["run"], res["split"] = str(run.path), args.split
        results.append(res)
        cells = " ".join(
            f"{k}={res[k]:.4f}" for k in TABLE_COLUMNS if isinstance(res.get(k), float)
        )
        _echo(f"{run.path} [{args.split}] {cells}")
    if args.output:
        write_json(results, args.output)
        _echo(f"results: {args.output}")
    return 0


def _load_for_eval(folder: str):
    """A run folder, finished or not (an unfinished one is evaluated from its checkpoint)."""
    from mls_tutorial.files import read_json
    from mls_tutorial.runs import CONFIG_FILE, METRICS_FILE, Run, load_run
    from mls_tutorial.train import CHECKPOINT_NAME

    path = Path(folder)
    for name in (CONFIG_FILE, CHECKPOINT_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: is {folder} a run folder?")
    if (path / METRICS_FILE).is_file():
        return load_run(path)
    return Run(path=path, config=read_json(path / CONFIG_FILE), history={}, metrics={})


def cmd_report(args) -> int:
    from mls_tutorial import report
    from mls_tutorial.results import format_markdown, results_table, write_results
    from mls_tutorial.runs import find_runs, run_key

    runs = find_runs(args.root)
    if not runs:
        raise CLIError(f"no finished runs (folders with metrics.json) under {args.root}")
    out = Path(args.out or args.root)
    report.ensure_run_figures(runs)
    rows = results_table(runs)
    paths = write_results(rows, out, args.name)
    print(format_markdown(rows))
    shown, figs = runs, []
    if args.choose_on:
        chosen = report.write_chosen(runs, rows, out, args.dice_tolerance)
        print("Chosen on validation (test numbers; paired differences to CE on the same seeds):")
        print(chosen.markdown)
        paths.update(chosen.paths)
        figs = chosen.figures
        shown = [r for r in runs if run_key({**r.config, "seed": 0}) in chosen.keys]
    figs = report.comparison_figures(shown, out) + figs  # with --choose-on: the chosen ones only
    print("figures: " + ", ".join(str(p) for p in figs))
    print("tables: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_score(args) -> int:
    from mls_tutorial.score import score_folder
    from mls_tutorial.score.case import score_device
    from mls_tutorial.score.layouts import parse_case_ids

    _device(args, pick=score_device)
    try:
        with _scheduler_executor(args, "score the cases") as executor:
            metrics = score_folder(
                args.pred,
                args.labels,
                args.out,
                val_cases=parse_case_ids(args.val_cases),
                class_names=args.classes,
                background=args.background,
                allow_missing=args.allow_missing,
                progress=not args.no_progress,
                hd95=not args.no_hd95,
                workers=args.workers,
                write_calibrated=args.write_calibrated,
                executor=executor,
                device=args.device,
            )
    except (ImportError, ConnectionError) as exc:  # Dask missing, no scheduler there
        raise CommandError(str(exc)) from None
    except KeyboardInterrupt:
        print(f"score interrupted: {args.out} is left as it was", file=sys.stderr)
        return 130
    print(metrics["summary"])
    print(f"written to {args.out}: metrics.json, cases.csv, summary.md, figures")
    if args.write_calibrated:
        print(f"temperature-scaled probabilities written to {args.write_calibrated}")
    return 0


def cmd_shipped(args) -> int:
    from mls_tutorial import shipping
    from mls_tutorial.runs import shipped

    if args.name and not args.verify:
        raise CLIError(
            "--name chooses the runs --verify retrains: add --verify (e.g. --verify 1 --name "
            f"{args.name[0]}); `mls-tutorial shipped` lists the names"
        )
    if args.rebuild:
        shipping.rebuild(workers=args.workers, device=_device(args), progress=not args.no_progress)
    elif args.verify:
        results = shipping.verify(
            args.verify,
            names=args.name,
            seed=args.seed,
            device=_device(args),
            progress=not args.no_progress,
        )
        print(shipping.verification_table(results))
        worst = max(r["max_abs_diff"] for r in results)
        ok = worst <= args.tolerance
        print(f"largest absolute difference {worst:.3g} ({'within' if ok else 'ABOVE'} "
              f"the tolerance {args.tolerance:g})")  # fmt: skip
        return 0 if ok else 1
    print(shipped.listing())
    return 0


def cmd_nnunet(args) -> int:
    from mls_tutorial.nnunet.command import run

    return run(args)


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "shipped": cmd_shipped,
    "score": cmd_score,
    "nnunet": cmd_nnunet,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    import warnings

    from mls_tutorial.runs import TrainingForbidden
    from mls_tutorial.sweep import SweepError
    from mls_tutorial.train import distributed as dist_utils

    # MONAI 1.6 deprecation notices from inside its HD95 code are noise for a CLI user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
    try:
        dist_utils.init_from_env(getattr(args, "device", None))
        return COMMANDS[args.command](args)
    except (CLIError, FlagError) as exc:  # a flag that does not apply, or its value
        print(f"mls-tutorial {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (
        CommandError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
        SweepError,
        TrainingForbidden,
    ) as exc:
        print(f"mls-tutorial {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: finished runs and the last checkpoint are kept; rerun to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        dist_utils.shutdown()
