"""Result tables, the choose-on-validation rule and paired differences, on hand-made runs."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from mls_tutorial.results import (
    choose_on_validation,
    chosen_markdown,
    format_csv,
    grid_markdown,
    paired_difference,
    results_table,
)
from mls_tutorial.runs import Run, normalize_config, run_name

DATA = {"n_train": 4, "size": 16, "slices": 2, "n_val": 1, "n_test": 1, "seed": 0}


def make_run(loss, seed, val_dice, val_ece, test_ece=0.1, test_dice=0.5, **kwargs) -> Run:
    cfg = normalize_config(
        {
            "data": "synthetic",
            "data_params": DATA,
            "loss": loss,
            "loss_kwargs": kwargs,
            "seed": seed,
        }
    )
    metrics = {
        "dice": test_dice,
        "ece": test_ece,
        "gap": 0.0,
        "val": {"dice": val_dice, "ece": val_ece, "gap": 0.0},
        "per_class": {"class1": {"dice": test_dice, "hd95": 1.0}},
    }
    return Run(path=Path("/nowhere") / run_name(cfg), config=cfg, history={}, metrics=metrics)


def table(runs):
    return results_table(runs)


def by_family(chosen):
    return {c["family"]: c for c in chosen}


CE_VAL_DICE = {1: 0.50, 2: 0.52, 3: 0.54}  # mean 0.52


def ce_runs():
    return [make_run("ce", s, CE_VAL_DICE[s], 0.20, test_ece=0.12) for s in (1, 2, 3)]


def test_rule_picks_lowest_val_ece_within_one_dice_point_and_ignores_test():
    runs = ce_runs()
    for s in (1, 2, 3):
        # alpha 0.3: best validation ECE, but validation Dice 2 points below CE: not eligible,
        # although its TEST numbers are the best of all (they must not matter)
        runs.append(make_run("ls", s, CE_VAL_DICE[s] - 0.02, 0.01, test_ece=0.001, alpha=0.3))
        # alpha 0.1: exactly 1 point below CE (the boundary is eligible), val ECE 0.05
        runs.append(make_run("ls", s, CE_VAL_DICE[s] - 0.01, 0.05, test_ece=0.3, alpha=0.1))
        # alpha 0.03: Dice above CE, higher val ECE
        runs.append(make_run("ls", s, CE_VAL_DICE[s] + 0.01, 0.08, test_ece=0.2, alpha=0.03))
    chosen = by_family(choose_on_validation(table(runs)))
    ls = chosen["ls"]
    assert ls["chosen"]["loss_kwargs"]["alpha"] == 0.1 and ls["eligible"]
    assert ls["reference_dice"] == pytest.approx(0.52)
    flags = {c["method"]: c["eligible"] for c in ls["candidates"]}
    assert flags == {"LS a=0.3": False, "LS": True, "LS a=0.03": True}
    assert chosen["ce"]["chosen"]["method"] == "CE"


def test_rule_with_no_eligible_config_takes_the_best_val_dice_and_flags_it():
    runs = ce_runs()
    for s in (1, 2, 3):
        runs.append(make_run("focal", s, 0.40, 0.01, gamma=3.0))
        runs.append(make_run("focal", s, 0.45, 0.09, gamma=1.0))
    focal = by_family(choose_on_validation(table(runs)))["focal"]
    assert focal["chosen"]["loss_kwargs"]["gamma"] == 1.0 and not focal["eligible"]
    assert "none within 1 pt" in chosen_markdown(choose_on_validation(table(runs)))


def test_rule_uses_only_the_seeds_shared_with_ce_and_the_family():
    runs = ce_runs()
    # margin 3: excellent on seed 4 only, which CE lacks: it must not count
    runs += [make_run("mbls", s, 0.6, 0.10, margin=3.0) for s in (1, 2, 3)]
    runs.append(make_run("mbls", 4, 0.9, 0.0, margin=3.0))
    runs += [make_run("mbls", s, 0.6, 0.05, margin=5.0) for s in (1, 2, 3)]
    runs.append(make_run("ce", 5, 0.5, 0.2))  # CE and m=5 alone gain seed 5 ...
    runs.append(make_run("mbls", 5, 0.0, 1.0, margin=5.0))  # ... which must not sway the choice
    mbls = by_family(choose_on_validation(table(runs)))["mbls"]
    assert mbls["seeds"] == [1, 2, 3] and mbls["report_seeds"] == [1, 2, 3, 5]
    assert mbls["chosen"]["margin"] == 5.0
    m3 = next(c for c in mbls["candidates"] if c["method"] == "MbLS m=3")
    assert m3["val_ece"] == pytest.approx(0.10)


def test_margin_zero_is_its_own_family():
    runs = ce_runs() + [make_run("mbls", s, 0.6, 0.05, margin=0.0) for s in (1, 2, 3)]
    assert set(by_family(choose_on_validation(table(runs)))) == {"ce", "linear"}


def test_rule_errors_name_the_problem():
    runs = [make_run("ls", s, 0.5, 0.1) for s in (1, 2)]
    with pytest.raises(ValueError, match="exactly one 'ce'"):
        choose_on_validation(table(runs))
    with pytest.raises(ValueError, match="dice_tolerance"):
        choose_on_validation(table(ce_runs()), dice_tolerance=-0.1)
    bare = make_run("ls", 1, 0.5, 0.1)
    bare.metrics.pop("val")
    with pytest.raises(ValueError, match="no validation metrics"):
        choose_on_validation(table(ce_runs() + [bare]))
    with pytest.raises(ValueError, match="shares no seed"):
        choose_on_validation(table(ce_runs() + [make_run("ls", 9, 0.5, 0.1)]))


def test_paired_difference_seed_by_seed():
    ce = [make_run("ce", s, 0.5, 0.2, test_ece=e) for s, e in ((1, 0.10), (2, 0.12), (3, 0.14))]
    ls = [make_run("ls", s, 0.5, 0.1, test_ece=e) for s, e in ((1, 0.05), (2, 0.13), (3, 0.04))]
    ls.append(make_run("ls", 4, 0.5, 0.1, test_ece=0.0))  # no CE partner: left out
    rows = {r["family"]: r for r in table(ce + ls)}
    d = paired_difference(rows["ls"], rows["ce"], "ece")
    diffs = [0.05 - 0.10, 0.13 - 0.12, 0.04 - 0.14]
    assert d["seeds"] == [1, 2, 3] and d["n"] == 3 and d["n_better"] == 2
    assert d["diffs"] == pytest.approx(diffs, abs=1e-15)
    assert d["mean"] == pytest.approx(np.mean(diffs), abs=1e-15)
    assert d["std"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-15)
    dice = paired_difference(rows["ls"], rows["ce"], "dice")  # equal Dice: better on no seed
    assert dice["n_better"] == 0 and dice["mean"] == 0.0


def test_chosen_and_grid_markdown_show_the_paired_column():
    runs = ce_runs() + [make_run("ls", s, 0.52, 0.05, test_ece=0.05) for s in (1, 2, 3)]
    rows = table(runs)
    chosen = choose_on_validation(rows)
    md = chosen_markdown(chosen, extra_rows=[{"family": "reference", "method": "q", "dice": 0.675}])
    ls_line = next(line for line in md.splitlines() if line.startswith("| ls"))
    assert "-0.070 ± 0.000 (3/3)" in ls_line  # test ECE 0.05 vs CE 0.12 on each seed
    assert md.splitlines()[-1].startswith("| reference | q | - | 0.675")
    grid = grid_markdown(rows, chosen)
    assert "LS **(chosen)**" in grid and "| 0.520 ± 0.000 |" not in grid.splitlines()[0]


def test_csv_has_one_line_per_run_with_its_values():
    runs = ce_runs()
    parsed = list(csv.DictReader(io.StringIO(format_csv(table(runs)))))
    assert [int(p["seed"]) for p in parsed] == [1, 2, 3]
    assert [float(p["val_dice"]) for p in parsed] == [0.50, 0.52, 0.54]
    assert all(math.isclose(float(p["ece"]), 0.12) for p in parsed)
    # per-class Dice of each run (the seed-by-seed view of a class that comes and goes)
    runs[1].metrics["per_class"]["class1"]["dice"] = 0.05
    parsed = list(csv.DictReader(io.StringIO(format_csv(table(runs)))))
    assert [float(p["dice class1"]) for p in parsed] == [0.5, 0.05, 0.5]


def test_per_class_rows_name_each_class_ece_and_print_a_row_per_run():
    from mls_tutorial.results import per_class_markdown, per_class_rows

    run = make_run("ce", 1, 0.5, 0.2, test_dice=0.4)
    run.metrics["data"] = {"class_names": ["background", "class1"]}
    run.metrics["calibration"] = {"foreground": {"ece_per_class": [0.01, 0.25]}}
    (row,) = per_class_rows([run])
    assert row["per_class_ece"] == {"background": 0.01, "class1": 0.25}
    assert row["per_class_dice"] == {"class1": 0.4}
    md = per_class_markdown([row])
    assert "| DSC class1 | classwise ECE class1 |" in md
    assert md.splitlines()[2] == "| CE | 0.400 | 0.100 | +0.000 | 0.400 | 0.250 |"
    run.metrics["data"] = {}  # no class names: say so
    with pytest.raises(ValueError, match="lacks class names"):
        per_class_rows([run])
    with pytest.raises(ValueError, match="no rows"):
        per_class_markdown([])


def test_rows_come_in_course_order_with_the_sequel_losses_after_mbls():
    runs = [
        make_run("sl1ace", 1, 0.5, 0.2),
        make_run("acls", 1, 0.5, 0.2),
        make_run("cals", 1, 0.5, 0.2, margin=5.0),
        make_run("mbls", 1, 0.5, 0.2),
        make_run("cals", 1, 0.5, 0.2, margin=10.0),
        make_run("ce", 1, 0.5, 0.2),
    ]
    fams = [r["family"] for r in table(runs)]
    assert fams == ["ce", "mbls", "cals", "cals", "acls", "sl1ace"]
