"""The mls-tutorial command line: help, errors, train/sweep/evaluate/report, demo --fast (slow)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from _cli_args import SYNTHETIC_DATA

from mls_tutorial import __version__
from mls_tutorial.cli import build_parser, main

SMALL = [
    *SYNTHETIC_DATA,
    "--data-param",
    "n_val=1",
    "--data-param",
    "n_test=1",
    "--iterations",
    "3",
    "--batch-size",
    "4",
    "--val-every",
    "3",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    code = main(
        [
            "sweep",
            "--losses",
            "ce",
            "mbls",
            "--margins",
            "1",
            "2",
            "--seeds",
            "1",
            "--temperature-scaling",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert code == 0
    return out


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {
        "demo",
        "train",
        "evaluate",
        "sweep",
        "report",
        "score",
        "shipped",
        "nnunet",
    }
    todo = list(commands.items())  # nested subcommands (nnunet path, nnunet export-mni) too
    while todo:
        name, sub = todo.pop()
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]


def test_version_help_and_no_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0 and "--fast" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--iterations", "0"], "positive integer"),
        (["train", "--lr", "-1"], "finite number > 0"),
        (["train", "--margin", "nan"], "finite number"),
        (["train", "--loss", "hinge"], "invalid choice"),
        (["train", "--data-param", "labels"], "KEY=VALUE"),
        (["sweep", "--seeds", "x"], "integer"),
        (["sweep", "--threads-per-run", "0"], "positive integer"),
        (
            ["sweep", "--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", "s.json"],
            "not allowed",
        ),
    ],
)
def test_bad_option_values_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "nope", "--device", "cpu"], "nope"),
        (["train", *SMALL, "--data-param", "sizee=3"], "sizee"),
        (["evaluate", "/nonexistent/run"], "not found"),
        (["report", "/nonexistent/root"], "not found"),
        (["sweep", *SMALL, "--scheduler-file", "/nonexistent/s.json"], "scheduler file not found"),
    ],
)
def test_bad_values_found_later_exit_1_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error" in err and message in err


#: flags that do not apply, or values they cannot take: (argv, the one-line message's start)
FLAG_ERRORS = [
    (
        ["train", "--loss", "ce", "--margin", "3"],
        "--margin does not apply to --loss ce: ce has no knobs (margin is a knob of mbls, cals, "
        "acls)",
    ),
    (
        ["train", "--loss", "ce", "--alpha", "0.3"],
        "--alpha does not apply to --loss ce: ce has no knobs (alpha is a knob of ls, mbls, "
        "nacl, acls)",
    ),
    (
        ["train", "--loss", "focal", "--alpha", "0.3"],
        "--alpha does not apply to --loss focal: focal's knobs: gamma (default 3, [0, inf))",
    ),
    (["train", "--loss", "ls", "--alpha", "2"], "--alpha: ls alpha must be in [0, 1], got 2.0"),
    (
        ["train", "--loss", "focal", "--loss-param", "gama=2"],
        "--loss-param gama=2: --loss focal has no parameter 'gama'; focal's knobs: gamma "
        "(default 3, [0, inf)); other parameters: ignore_index, validate",
    ),
    (
        ["sweep", "--losses", "focal", "--loss-param", "gama=2"],
        "--loss-param gama=2: --losses focal has no parameter 'gama'; focal's knobs: gamma",
    ),
    (
        ["sweep", "--losses", "ce", "ls", "--loss-param", "gamma=2"],
        "--loss-param gamma=2: --losses ce ls has no parameter 'gamma'; ce has no knobs; other "
        "parameters: ignore_index, validate; ls's knobs: alpha",
    ),
    (
        ["train", "--loss", "focal", "--loss-param", "gamma=2", "--loss-param", "gamma=3"],
        "--loss-param gamma=3: focal's gamma is given twice",
    ),
    (
        ["train", "--loss", "svls", "--loss-param", "kernel_size=4"],
        "--loss-param: kernel_size must be an odd int >= 3, got 4",
    ),
    (
        ["sweep", "--grid", "mbls:margn=2,5"],
        "--grid 'mbls:margn=2,5': mbls has no parameter 'margn'; mbls's knobs: margin (default "
        "10, [0, inf)), alpha (default 0.1, [0, inf)); other parameters: fused, ignore_index",
    ),
    (["sweep", "--grid", "ls:gamma=1"], "--grid 'ls:gamma=1': ls has no parameter 'gamma'"),
    (["sweep", "--grid", "mbls:margin="], "--grid 'mbls:margin=': expected KEY=V1,V2,..."),
    (["sweep", "--grid", "mbls:margin=,"], "--grid 'mbls:margin=,': expected KEY=V1,V2,..."),
    (["sweep", "--grid", "ls:alpha=0.1,"], "--grid 'ls:alpha=0.1,': '' is not a number"),
    (["sweep", "--grid", "mbls:margin=-1,5"], "--grid 'mbls:margin=-1,5': mbls margin must be"),
    (["sweep", "--grid", "ce", "--losses", "ls"], "give either --grid or --losses"),
    (["sweep", "--grid", "ls", "--alpha", "0.2"], "with --grid, set knobs in the grid"),
    (["sweep", "--losses", "ce", "ls", "--margins", "3"], "--margins sets MbLS's margin: add"),
    (["sweep", "--losses", "ce", "--alpha", "0.2"], "--alpha does not apply to --losses ce:"),
    (["demo", "--losses", "ce", "--margin", "3"], "--margin sets MbLS's margin: add mbls to"),
    (["sweep", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "--workers sizes the"),
    (["train", "--device", "tpu"], "--device 'tpu' is not usable here"),
]
if not __import__("torch").cuda.is_available():
    FLAG_ERRORS.append((["train", "--device", "cuda"], "--device 'cuda' is not usable here"))


@pytest.mark.parametrize(("argv", "message"), FLAG_ERRORS)
def test_a_flag_that_does_not_apply_is_a_one_line_error_before_anything_is_written(
    argv, message, tmp_path, capsys
):
    out = tmp_path / "runs"
    assert main([*argv, *SMALL[:-3], "--no-progress", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    command = argv[0]
    assert captured.err.startswith(f"mls-tutorial {command}: error: {message}"), captured.err
    assert captured.err.count("\n") == 1 and not captured.out
    assert not out.exists()  # no run folder, no lock, nothing


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--iterations", "0"], "argument --iterations: expected a positive integer"),
        (["train", "--iterations", "-5"], "argument --iterations: expected a positive integer"),
        (["sweep", "--iterations", "-5"], "argument --iterations: expected a positive integer"),
        (["train", "--lr", "nan"], "argument --lr: expected a finite number > 0"),
        (["sweep", "--lr", "inf"], "argument --lr: expected a finite number > 0"),
        (["sweep", "--grid"], "argument --grid: expected one argument"),
        (["sweep", "--losses"], "argument --losses: expected at least one argument"),
    ],
)
def test_bad_numbers_are_argparse_errors_naming_the_flag(argv, message, tmp_path, capsys):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(out)])
    assert exc.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_a_knob_flag_sets_the_knob_of_every_loss_that_has_it(tmp_path, capsys):
    """ACLS's alpha and margin are knobs: --alpha/--margin set them (they were ignored)."""
    from mls_tutorial.runs import find_runs, loss_defaults

    out = tmp_path / "runs"
    argv = ["train", "--loss", "acls", "--alpha", "0.3", "--margin", "6", "--out", str(out)]
    assert main([*argv, *SMALL]) == 0
    (run,) = find_runs(out)
    assert run.config["loss_kwargs"] == {**loss_defaults("acls"), "alpha": 0.3, "margin": 6.0}
    assert run.label == "ACLS a=0.3 m=6"
    argv = ["sweep", "--losses", "ls", "acls", "ce", "--alpha", "0.2", "--out", str(out)]
    assert main([*argv, "--loss-param", "ignore_index=-1", *SMALL, "--iterations", "1"]) == 0
    kwargs = {r.config["loss"]: r.config["loss_kwargs"] for r in find_runs(out, iterations=1)}
    assert kwargs["ls"]["alpha"] == kwargs["acls"]["alpha"] == 0.2  # where alpha is a knob
    assert all(kw["ignore_index"] == -1 for kw in kwargs.values())  # a parameter of all three
    assert kwargs["ce"] == {"ignore_index": -1, "validate": True}


def test_sweep_writes_one_table_and_figures(swept):
    rows = json.loads((swept / "results.json").read_text())
    assert [r["method"] for r in rows] == ["CE", "MbLS m=1", "MbLS m=2", "CE + TS"]
    assert rows[-1]["temperature"] > 0
    md = (swept / "results.md").read_text()
    assert md.count("\n") == 6 and "| CE + TS |" in md
    assert (swept / "results.csv").read_text().startswith("method,family,loss,loss_kwargs,seed")
    for fig in ("reliability_comparison.png", "logit_distances.png", "margin_sweep.png"):
        assert (swept / fig).stat().st_size > 1000, fig


def test_train_reuses_a_cached_run_and_says_so(swept, capsys):
    argv = ["train", "--loss", "mbls", "--margin", "2", "--out", str(swept), *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[cached]" in out and "MbLS m=2" in out
    (run,) = [p for p in swept.iterdir() if p.name.startswith("mbls-m2-")]
    assert f"run folder: {run}" in out


def test_evaluate_reproduces_the_stored_metrics(swept, tmp_path, capsys):
    (run,) = [p for p in swept.iterdir() if p.name.startswith("ce-mna-")]
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--output", str(out), "--device", "cpu"]) == 0
    (res,) = json.loads(out.read_text())
    stored = json.loads((run / "metrics.json").read_text())
    for key in ("dice", "ece", "cece", "gap"):
        assert res[key] == pytest.approx(stored[key], abs=1e-9), key
    assert (
        main(["evaluate", str(run), "--split", "val", "--temperature-scaling", "--device", "cpu"])
        == 0
    )
    assert "[val]" in capsys.readouterr().out


def test_report_rebuilds_table_and_figures(swept, tmp_path, capsys):
    assert main(["report", str(swept), "--out", str(tmp_path)]) == 0
    assert "| MbLS m=1 |" in capsys.readouterr().out
    assert (tmp_path / "report.md").is_file() and (tmp_path / "margin_sweep.png").is_file()


def test_cli_loss_names_are_the_library_s():
    from mls_tutorial.cli import LOSSES
    from mls_tutorial.losses import LOSS_NAMES

    assert LOSSES == LOSS_NAMES


@pytest.mark.slow  # a pool of 2 processes
def test_grid_sweep_with_workers_then_choose_on_validation(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["sweep", "--grid", "ce", "--grid", "ls:alpha=0.05,0.3", "--grid", "mbls:margin=0"]
    assert main([*argv, "--seeds", "1", "2", "--workers", "2", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--choose-on", "val", "--dice-tolerance", "1.0"]) == 0
    printed = capsys.readouterr().out
    assert "Chosen on validation" in printed
    chosen = json.loads((out / "chosen.json").read_text())
    fams = {f["family"]: f for f in chosen["families"]}
    assert set(fams) == {"ce", "ls", "linear"} and fams["ls"]["seeds"] == [1, 2]
    # the rule, re-applied by hand on the validation numbers: lowest val ECE (all eligible)
    ls = min(fams["ls"]["candidates"], key=lambda c: c["val_ece"])
    assert fams["ls"]["chosen"] == ls["method"]
    alpha = {"LS a=0.05": 0.05, "LS a=0.3": 0.3}[ls["method"]]  # its config, to train it again
    assert fams["ls"]["config"]["loss"] == "ls"
    assert fams["ls"]["config"]["loss_kwargs"]["alpha"] == alpha
    assert fams["linear"]["config"]["loss_kwargs"]["margin"] == 0.0
    assert chosen["reference"]["dice_bayes"] == pytest.approx(1.0)  # q scored against argmax q
    grid = (out / "grid.md").read_text()
    assert grid.count("**(chosen)**") == 3 and "LS a=0.05" in grid and "LS a=0.3" in grid
    assert (out / "alpha_sweep.png").stat().st_size > 1000


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "mls_tutorial", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.slow
def test_demo_fast_on_the_bundled_data(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| CE |" in out and "| MbLS m=5 |" in out
    for fig in ("reliability_comparison.png", "logit_distances.png"):
        assert (tmp_path / fig).is_file()
    runs = [
        p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")
    ]  # not .locks
    assert len(runs) == 2
    for run in runs:
        for name in (
            "config.json",
            "history.json",
            "metrics.json",
            "checkpoint.pt",
            "reliability.png",
            "logit_distances.png",
        ):
            assert (run / name).is_file(), (run, name)
    assert main(["demo", "--fast", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("[cached]") == 2
