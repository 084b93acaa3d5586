"""The notebooks are tests: hygiene, their parameter contract, and papermill runs of each.

Every notebook runs with its **default** parameters, as a learner opens it, with training
forbidden (``MLS_TUTORIAL_NO_TRAIN=1``): the runs it reads come from the package's shipped runs
(``mls-tutorial shipped``), so a default that needs an unshipped run fails here, naming it.
Exercises that train new runs run on FAST parameters (``mls_tutorial/notebook_parameters.py``) with
training allowed. Each run must write a ``metrics.json`` with finite numbers and the figures it
lists; executed notebooks and their outputs are kept in ``test-artifacts/notebooks/`` so that a
failing CI run can be read.
"""

from __future__ import annotations

import ast
import json
import math
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
STEMS = [p.stem for p in NOTEBOOKS]
KERNEL = "python3"
EXPECTED = {
    "01_constrained_optimization_view",
    "02_training_with_margin",
    "03_calibration_evaluation",
    "04_your_own_data",
    "05_class_adaptive_constraints",
    "06_when_does_the_margin_help",
    "07_mbls_in_nnunet",
}
# every notebook's parameters include these, plus at least one size/length knob
COMMON_PARAMETERS = {"device", "output_dir", "seed"}
SIZE_KNOBS = {"iterations", "toy_steps", "batch_size", "train_subjects", "n_patients"}
# loose floors: fast runs are tiny, these only catch a broken pipeline (chance level is ~0)
DICE_FLOOR = {
    "01_constrained_optimization_view": 0.15,
    "02_training_with_margin": 0.15,
    "03_calibration_evaluation": 0.15,
    "04_your_own_data": 0.05,
    "05_class_adaptive_constraints": 0.15,
    "06_when_does_the_margin_help": 0.15,
    "07_mbls_in_nnunet": 0.15,
}


# Each notebook's exercises, done as written: the fast run sets these parameters (the hidden
# solution path) and its check asserts the answer where a fast run can show it.
EXERCISE_PARAMETERS = {
    # 01 exercise 1: below m* = log((1-a+a/K)/(a/K)) CE + margin stops where CE + linear does
    # (no training: the default run takes it)
    "01_constrained_optimization_view": {"slider_margin": 2.0, "slider_alpha": 0.1},
    # 02 exercise 1: train a new margin with the explorer's button
    "02_training_with_margin": {"button_margins": [20.0]},
    # 03 exercise 1: a second MbLS weight in the sweep; exercise 4: TS on MbLS too
    "03_calibration_evaluation": {"sweep_alphas": [0.1, 0.3], "temperature_scaled": ["ce", "mbls"]},
    # 05 exercise 4: every chosen config trained on the notebook's seed
    "05_class_adaptive_constraints": {"full_table": True},
    # 06 exercise 2: another report seed's histograms (the default loss, MbLS, is followed)
    "06_when_does_the_margin_help": {"seed": 6},
    # 07 exercise 1: the course's validated margin on the deep-supervision outputs
    "07_mbls_in_nnunet": {"margin": 5.0},
}


def _parameters_cells(nb) -> list:
    return [
        c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])
    ]


def test_expected_notebooks_exist():
    assert EXPECTED <= set(STEMS), f"missing notebooks: {sorted(EXPECTED - set(STEMS))}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_hygiene(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, "kernelspec python3 missing"
    assert "widgets" not in nb.metadata, "saved widget state: strip the notebook"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: strip the notebook"
            assert cell.execution_count is None, f"cell {i} has an execution count"
            assert "input(" not in cell.source and "interact_manual" not in cell.source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    cells = _parameters_cells(nb)
    assert len(cells) == 1, f"{len(cells)} cells tagged `parameters`, want exactly one"
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.dump(node)
        assert isinstance(node.targets[0], ast.Name), "parameters must be plain names"
        ast.literal_eval(node.value)  # a literal: papermill overrides it, nothing derived


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_parameter_contract(path: Path, notebook_fast_parameters, caplog):
    import papermill

    with caplog.at_level("WARNING", logger="papermill"):
        params = papermill.inspect_notebook(str(path))
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # every line parsed
    names = set(params)
    assert COMMON_PARAMETERS <= names, f"missing {COMMON_PARAMETERS - names}"
    assert names & SIZE_KNOBS, "no size or length knob among the parameters"
    assert params["device"]["default"].strip("'\"") == "auto"
    # the fast parameters only name parameters that exist (papermill just warns otherwise)
    unknown = (
        set(notebook_fast_parameters[path.stem]) | set(EXERCISE_PARAMETERS.get(path.stem, {}))
    ) - names
    assert not unknown, f"fast parameters not in the notebook: {unknown}"
    print(path.stem, {k: v["default"] for k, v in params.items()})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_exercises_name_real_parameters_and_stay_inside_the_repository(path: Path):
    """Each `name = value` an exercise asks for is a parameter of the notebook with a literal
    value (so the edit can be done as written, and papermill can run it); no text points the
    reader outside the repository."""
    import re

    import papermill

    nb = nbformat.read(path, as_version=4)
    params = papermill.inspect_notebook(str(path))
    (exercises,) = [
        c for c in nb.cells if c.cell_type == "markdown" and "**Exercises**" in c.source
    ]
    edits = re.findall(r"`(\w+) = ([^`]+)`", exercises.source.split("**Exercises**")[1])
    assert edits, "no parameter edit found in the exercises"
    for name, value in edits:
        assert name in params, f"exercise edits `{name}`, not a parameter of {path.stem}"
        ast.literal_eval(value)
    text = "\n".join(c.source for c in nb.cells).lower()
    for outside in ("design notes", "../shared", "shared/design"):
        assert outside not in text, f"{path.stem} points outside the repository: {outside!r}"


@pytest.fixture(scope="session")
def kernel_ready():
    """The python3 kernel must run this interpreter (``python -m ipykernel install --sys-prefix``)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail("no python3 kernelspec: run `python -m ipykernel install --sys-prefix`")
    exe = spec.argv[0]
    if exe in ("python", "python3", "{python}"):
        return KERNEL  # resolved on PATH at launch; the tests run inside the venv
    if Path(exe).absolute().parent != Path(sys.executable).absolute().parent:
        pytest.fail(f"python3 kernel runs {exe}, not {sys.executable}: reinstall the kernelspec")
    return KERNEL


def execute(
    stem: str, parameters: dict, kernel: str, tag: str = "fast", source: Path | None = None
) -> tuple[Path, dict]:
    """Run one notebook (``source``: an edited copy) with papermill; return its output_dir and
    its metrics.json."""

    out_root = ROOT / "test-artifacts" / "notebooks"
    output_dir = out_root / f"{stem}-{tag}"
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)
    parameters = {**parameters, "output_dir": str(output_dir)}
    # notebook_engine's sliced poll fixes the root cause of a client waiting forever for a reply
    # the idle kernel had already sent (see its docstring); its execute() retries a cell that
    # outlives its timeout once, only as a guard.
    from mls_tutorial.notebook_engine import execute as run_notebook

    run_notebook(
        source or NOTEBOOK_DIR / f"{stem}.ipynb",
        out_root / f"{stem}-{tag}.ipynb",
        parameters=parameters,
        kernel_name=kernel,
        cwd=str(NOTEBOOK_DIR),
        execution_timeout=600 if tag == "fast" else 1800,
        log_output=False,
        progress_bar=False,
    )
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return output_dir, metrics


def _numbers(obj, path=""):
    """Yield (path, value) for every number in a JSON tree."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, int | float):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


def check_common(output_dir: Path, metrics: dict, stem: str):
    bad = [p for p, v in _numbers(metrics) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in metrics.json: {bad[:10]}"
    figures = metrics["figures"]
    assert len(figures) >= 2, figures
    for name in figures:
        png = output_dir / name
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", f"figure {name} missing"
    assert metrics["dice"] > DICE_FLOOR[stem], metrics["dice"]
    assert 0.0 <= metrics["dice"] <= 1.0


def check_01(m: dict):
    # the library's LS loss equals the penalty form to float precision
    assert m["ls_identity_max_abs_error"] < 1e-4
    assert m["ecp_entropy_identity_max_abs_error"] < 1e-4
    assert m["focal_bound_violation"] <= 1e-6
    # the toy: alone, the equality penalty drives d to 0 and the margin stops it at m
    toy = m["toy"]
    assert toy["penalty_only"]["linear"] < 0.05 * toy["start_distance"]
    margin = toy["margin"]
    assert abs(toy["penalty_only"]["margin"] - margin) < 0.05 * margin
    # with CE, the equality penalty settles far below the margin, CE alone keeps growing
    assert toy["with_ce"]["ce+linear"] < toy["with_ce"]["ce+margin"] < toy["with_ce"]["ce"]
    # with CE, LS and CE + linear settle at the formula; ECP near 1/beta (exactly: beta d s_win = 1)
    assert abs(toy["with_ce"]["ls"] - toy["ls_equilibrium_predicted"]) < 0.01
    assert abs(toy["with_ce"]["ce+linear"] - toy["ls_equilibrium_predicted"]) < 0.01
    ecp = toy["ecp_equilibrium_predicted"]
    assert abs(ecp - 1 / toy["alpha"]) < 0.05 / toy["alpha"]
    assert abs(toy["with_ce"]["ecp"] - ecp) < 0.05 * ecp
    # CE + margin ends at or below m (it starts above it)
    assert toy["with_ce"]["ce+margin"] <= margin + 1e-3
    # the final cell moved the sliders in code and the callback ran
    slider = toy["slider"]
    assert slider["margin"] == toy["slider_set"]["margin"]
    assert abs(slider["penalty_only_margin"] - slider["margin"]) < 0.05 * max(1.0, slider["margin"])
    # exercise 1's answer: below m* the margin does not bind, CE + margin lands where CE + linear
    # does (the LS formula); above m* it lands at m
    m_star = toy["slider_ls_equilibrium_predicted"]
    if slider["margin"] < m_star:
        assert abs(slider["ce_margin"] - m_star) < 0.02, (slider, m_star)
        assert abs(slider["ce_linear"] - m_star) < 0.02
    else:
        assert slider["ce_margin"] <= slider["margin"] + 1e-3
    # per-class Dice and the reference row of the true probabilities
    names = set(m["ce_per_class_dice"])
    assert len(names) == 3 and set(m["q_reference"]["per_class_dice"]) == names
    assert m["q_reference"]["dice"] > m["ce"]["dice"]
    assert m["q_reference"]["ece"] < 0.05


def check_02(m: dict):
    assert {"ce", "mbls"} <= {r["loss"] for r in m["runs"]}
    assert m["widget"]["updates"] >= 1 and m["widget"]["errors"] == 0
    ce = next(r for r in m["runs"] if r["loss"] == "ce")
    names = set(ce["per_class_dice"])
    assert len(names) == 3 and set(m["q_reference"]["per_class_dice"]) == names
    assert m["q_reference"]["dice"] > ce["dice"] and m["q_reference"]["ece"] < 0.05
    for r in m["runs"]:
        assert set(r["per_class_dice"]) == names == set(r["per_class_hd95"])
        if r["loss"] == "mbls":  # the legend's share, measured at the run's own margin
            assert 0.0 <= r["share_above_own_margin"] <= 1.0
    # exercise 1: the button trained every requested margin and the slider offers it
    w = m["widget"]
    assert w["trained_with_button"] == w["button_margins"]
    assert set(w["button_margins"]) <= set(w["slider_margins"])


def check_03(m: dict):
    losses = {r["name"] for r in m["table"]}
    assert {"ce", "mbls"} <= {r["loss"] for r in m["table"]}, losses
    for row in m["table"]:
        for key in ("dice", "ece", "cece", "ece_all", "gap"):
            assert row[key] is not None and math.isfinite(row[key]), (row["name"], key)
    assert m["temperature"] > 0
    assert len(m["sweep"]) >= 2
    # the count-weighted mean of per-volume ECE is never below the pooled ECE
    assert m["ece_weighted_mean_over_volumes"] >= m["ece_pooled"] - 1e-9
    # per-class Dice in every row, and the reference row of the true probabilities
    names = set(m["q_reference"]["per_class_dice"])
    assert len(names) == 3
    for row in m["table"]:
        assert set(row["per_class_dice"]) == names == set(row["per_class_hd95"]), row["name"]
    ce = next(r for r in m["table"] if r["name"] == "CE")
    assert m["q_reference"]["dice"] > ce["dice"] and m["q_reference"]["ece"] < 0.05
    # every sweep row says its weight; TS rows exist for each temperature-scaled loss
    assert all(r["alpha"] > 0 for r in m["sweep"])
    assert all(t > 0 for t in m["temperatures"].values())
    ts_rows = {r["loss"] for r in m["table"] if r["temperature_scaling"]}
    assert {"ce"} <= ts_rows and len(ts_rows) == len(m["temperatures"])


def check_03_exercises(m: dict):
    """Exercises 1 and 4 done as written: a second weight swept, TS fitted on MbLS too."""
    alphas = {r["alpha"] for r in m["sweep"]}
    assert alphas == {0.1, 0.3}, alphas
    for a in alphas:  # each weight has its own curve of at least two margins
        assert len({r["margin"] for r in m["sweep"] if r["alpha"] == a}) >= 2
    assert {r["loss"] for r in m["table"] if r["temperature_scaling"]} == {"ce", "mbls"}


def check_04(m: dict):
    from mls_tutorial.score import OUTPUT_FILES

    for key in ("acdc", "decathlon"):
        assert m[key]["n_volumes"] >= 1
        assert math.isfinite(m[key]["hd95"])
    assert m["spacing_checked"]  # evaluate's HD95 == MONAI's, called here with the spacing
    assert m["hd95_monai_mm"] == pytest.approx(m["hd95_library_mm"], rel=1e-5)
    assert m["hd95_monai_mm"] != pytest.approx(m["hd95_ignoring_spacing"], rel=1e-3)
    assert len(m["acdc_per_class"]) == 3
    # "Score your own model": score on the nnU-Net-style files reproduces evaluate's numbers
    s = m["score"]
    assert s["files"] == sorted(OUTPUT_FILES)
    assert s["reported_cases"] and s["val_cases"] and s["n_cases"] == len(s["reported_cases"])
    assert not set(s["reported_cases"]) & set(s["val_cases"])  # T never sees a reported case
    assert math.isfinite(s["temperature"]) and s["temperature"] > 0
    assert s["ece"] == pytest.approx(s["evaluate"]["ece"], abs=1e-6)
    assert s["gap"] == pytest.approx(s["evaluate"]["gap"], abs=1e-6)
    assert s["dice"] == pytest.approx(s["evaluate"]["dice"], abs=1e-6)  # MONAI's is float32
    assert s["hd95"] == pytest.approx(s["evaluate"]["hd95"], rel=1e-6)
    assert s["in_memory_ece"] == pytest.approx(s["ece"], abs=1e-9)
    shares = [s["share_above"][k] for k in ("2", "5", "10")]
    assert all(0.0 <= v <= 1.0 for v in shares) and shares == sorted(shares, reverse=True)
    assert all(math.isfinite(s[k]) for k in ("ece_ts", "gap_ts", "nll_ts"))


def check_05(m: dict):
    # the toy: CE alone runs off; the small weight holds the common classes at the margin but
    # not the rare one (its pull beats alpha / K); the large weight and CALS hold every class
    toy, margin = m["toy"], m["toy"]["margin"]
    final = toy["final_distance"]
    mbls = [d for name, d in final.items() if name.startswith("MbLS")]
    small, strong = sorted(mbls, key=lambda d: -d[-1])  # the small weight's rare class runs off
    assert min(final["CE"]) > 2 * margin
    assert small[-1] > 2 * margin and max(small[:-1]) < margin + 0.5
    assert max(strong) < margin + 0.5 and max(final["CALS"]) < margin + 1.0
    lam = toy["final_lambda"]  # the multiplier grows for the rare class only
    assert lam[-1] > 5 * max(lam[:-1]), lam
    # CALS on the data: one multiplier update per validation pass, K multipliers in range
    cals = m["cals"]
    assert cals["validations"] >= 1 and len(cals["lambda"]) == len(cals["rho"]) == 4
    assert all(1e-6 <= v <= 1e6 for v in cals["lambda"]) and all(1 <= v <= 10 for v in cals["rho"])
    names = set(m["runs"][0]["per_class_dice"])
    assert len(names) == 3 and len(m["runs"]) == 4
    for row in m["runs"]:
        assert set(row["per_class_ece"]) >= names
    for shares in m["share_above_margin"].values():
        assert all(0.0 <= v <= 1.0 for v in shares.values())
    # the evidence table names every family, the sequel losses included
    assert {"CE", "CE + TS"} <= set(m["chosen"]) and len(m["chosen"]) >= 10


def check_06(m: dict):
    # the regime study, read back: reported seeds never chose anything, one CSV line per run,
    # and the paired numbers the notebook shows agree with regime.csv (recomputed there)
    assert set(m["choose_seeds"]).isdisjoint(m["report_seeds"])
    assert m["n_records"] == m["n_runs"] and len(m["cells"]) >= 2
    assert m["csv_json_max_difference"] < 1e-12
    assert m["paired"] and all(
        e["method"].split()[0] in {"ECP", "LS", "MbLS", "CALS"} for e in m["paired"]
    )
    for e in m["paired"]:
        assert set(e["seeds"]) <= set(m["report_seeds"])
        assert len(e["seeds"]) == len(e["diffs"]) == len(e["ce"])
        assert e["n_better"] == sum(d < 0 for d in e["diffs"])
        assert e["mean"] == pytest.approx(sum(e["diffs"]) / len(e["diffs"]))
    # the finding quotes CE's numbers as the JSON holds them, with seed counts; every
    # ranking (re-chosen and default knobs) ranks CE, holes left out
    short, long = m["ce"]["short"], m["ce"]["long"]
    assert f"{short['ece']:.3f} -> {long['ece']:.3f}" in m["finding"]
    assert "grew on" in m["finding"] and "of 3 seeds" in m["finding"]
    assert set(m["ranking"]) == {"chosen", "default"}
    assert all("ce" in order for w in m["ranking"].values() for order in w.values())
    assert set(m["relative_default"]) == {"1000", "4000"}
    for e in m["after_ts"]:  # section 5: each loss + TS against CE + TS, paired per seed
        d = e["vs_ref_ts"]
        assert d is None or (d["n_better"] == sum(x < 0 for x in d["diffs"]) and d["n"] >= 1)


def check_07(m: dict):
    """The trainer's loss on deep-supervision outputs: nnU-Net's weights, the float64 formula,
    the ignore label inert, the comparison's seed counts from table.json."""
    from mls_tutorial.nnunet.penalties import deep_supervision_weights

    w = m["weights"]
    assert w == deep_supervision_weights(len(w)) and w[-1] == 0.0
    assert m["total"] == pytest.approx(
        sum(wi * (r["ce"] + r["penalty"]) for wi, r in zip(w, m["rows"], strict=True)), rel=1e-5
    )
    assert m["float64_max_error"] < 1e-6
    assert all(r["penalty"] > 0 and 0 < r["share_above_margin"] < 1 for r in m["rows"])
    assert m["ignored_change"] == 0.0 and m["ignored_grad_max"] == 0.0
    assert m["bf16_penalty"] == pytest.approx(m["rows"][0]["penalty"], rel=0.05)
    table = json.loads((ROOT / "docs" / "evidence" / "nnunet" / "table.json").read_text())
    for p, got in zip(table["pairs"], m["pairs"], strict=True):
        assert got["n"] == len(p["seeds"])
        assert got["ece_lower"] == sum(x < 0 for x in p["diffs"]["fg ECE"])
        assert got["dice_higher"] == sum(x > 0 for x in p["diffs"]["Dice"])
        assert f"lower on {got['ece_lower']} of {got['n']}" in m["sentences"][m["pairs"].index(got)]


CHECKS = {
    "01_constrained_optimization_view": check_01,
    "02_training_with_margin": check_02,
    "03_calibration_evaluation": check_03,
    "04_your_own_data": check_04,
    "05_class_adaptive_constraints": check_05,
    "06_when_does_the_margin_help": check_06,
    "07_mbls_in_nnunet": check_07,
}


#: exercises that train new runs: these run on fast parameters, training allowed
TRAINING_EXERCISES = {
    "02_training_with_margin",
    "03_calibration_evaluation",
    "05_class_adaptive_constraints",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=STEMS)
def test_notebook_runs_with_its_defaults_from_shipped_runs(
    path: Path, kernel_ready, tmp_path_factory, monkeypatch
):
    """What a learner sees: default parameters, an empty runs folder, training forbidden."""
    from mls_tutorial.runs import NO_TRAIN_ENV

    monkeypatch.setenv(NO_TRAIN_ENV, "1")  # the kernel inherits it: load_or_train may not train
    params = {} if path.stem in TRAINING_EXERCISES else dict(EXERCISE_PARAMETERS.get(path.stem, {}))
    # 04 trains its own loop and keeps no runs; 06 and 07 read tables of the docs, no runs
    if path.stem not in ("04_your_own_data", "06_when_does_the_margin_help", "07_mbls_in_nnunet"):
        params["runs_dir"] = str(tmp_path_factory.mktemp("runs"))
    output_dir, metrics = execute(path.stem, params, kernel_ready, "default")
    check_common(output_dir, metrics, path.stem)
    CHECKS[path.stem](metrics)
    if path.stem == "03_calibration_evaluation":
        check_03_claim(metrics)
        check_03_prose(metrics)
    if path.stem == "04_your_own_data":
        check_04_prose(metrics)


@pytest.mark.parametrize("stem", sorted(TRAINING_EXERCISES))
def test_notebook_exercises_train_on_fast_parameters(
    stem: str, notebook_fast_parameters, kernel_ready, tmp_path_factory
):
    params = {
        **notebook_fast_parameters[stem],
        **EXERCISE_PARAMETERS[stem],
        "runs_dir": str(tmp_path_factory.mktemp("runs")),
    }
    output_dir, metrics = execute(stem, params, kernel_ready)
    check_common(output_dir, metrics, stem)
    CHECKS[stem](metrics)
    if stem == "03_calibration_evaluation":
        check_03_exercises(metrics)
    if stem == "05_class_adaptive_constraints":  # exercise 4: one row per chosen config
        assert sorted(r["method"] for r in metrics["full_table"]) == sorted(metrics["chosen"])


def _markdown(stem: str) -> str:
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return " ".join(text.split())


def check_03_prose(m: dict):
    """The numbers notebook 03's prose quotes for its defaults are the ones it printed."""
    text = _markdown("03_calibration_evaluation")
    w = {r["method"]: r for r in m["weight_sweep"]}
    linear = ", ".join(f"{w[k]['gap']:+.2f}" for k in ("MbLS m=0", "MbLS m=0 a=0.3"))
    assert linear == "+0.02, -0.11" and f"-{abs(w['MbLS m=0 a=1']['gap']):.2f} at 1" in text
    assert f"LS reaches {w['LS a=0.3']['gap']:+.2f} at 0.3".replace("+", "") in text
    assert f"(DSC about {w['LS a=1']['dice']:.2f})" in text
    margin = ", ".join(
        f"{w[k]['gap']:+.2f}" for k in ("MbLS m=5", "MbLS m=5 a=0.3", "MbLS m=5 a=1")
    )
    assert f"under-confidence** ({margin})" in text
    drop = w["MbLS m=5"]["dice"] - max(w["MbLS m=5 a=0.3"]["dice"], w["MbLS m=5 a=1"]["dice"])
    assert round(100 * drop) == 6 and "Dice falls about 6 points" in text
    smallest = min(r["gap"] for r in m["sweep"])
    assert smallest > 0 and f"the smallest near {smallest:+.2f}" in text
    rows = {r["name"]: r for r in m["table"]}
    ce, ecp, mbls = rows["CE"], rows["ECP"], rows["MbLS m=5"]
    assert round(3 * ce["ece_all"] / ce["ece"]) == 1  # "about a third"
    spread = max(m[k] for k in ("ece_mean_over_volumes", "ece_weighted_mean_over_volumes",
                                "ece_pooled")) - m["ece_pooled"]  # fmt: skip
    assert spread < 0.001 and "agree to within 0.001" in text
    assert f"by only {round(100 * (1 - ecp['ece'] / ce['ece']))}% here" in text
    assert f"{round(100 * (1 - mbls['ece'] / ce['ece']))}% on this notebook's single seed" in text


def check_03_claim(m: dict):
    """Notebook 03 on its defaults is in the paper's regime: CE over-confident on the
    foreground (positive confidence-minus-accuracy gap), and MbLS's foreground ECE lower."""
    rows = {r["name"]: r for r in m["table"]}
    ce = rows["CE"]
    mbls = [r for r in m["table"] if r["loss"] == "mbls" and not r["temperature_scaling"]]
    assert ce["gap"] > 0, f"CE is not over-confident: gap {ce['gap']}"
    assert min(r["ece"] for r in mbls) < ce["ece"], (ce["ece"], [r["ece"] for r in mbls])


LOOP_LOSS_LINE = "loss_fn = MarginLoss(margin=margin, alpha=alpha)  # the one line that changes"


def test_notebook_04_exercise_1_runs_as_written(notebook_fast_parameters, kernel_ready):
    """Exercise 1 of notebook 04, done as written: build_loss("ce") in the plain MONAI loop."""
    stem = "04_your_own_data"
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and LOOP_LOSS_LINE in c.source]
    cell.source = cell.source.replace(LOOP_LOSS_LINE, 'loss_fn = build_loss("ce")')
    source = ROOT / "test-artifacts" / "notebooks" / f"{stem}-exercise1-source.ipynb"
    source.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, source)  # outside notebooks/: the other tests never see it
    _, m = execute(stem, notebook_fast_parameters[stem], kernel_ready, "exercise1", source)
    assert math.isfinite(m["acdc"]["ece"]) and math.isfinite(m["acdc"]["gap"])
    assert 0.0 <= m["acdc"]["dice"] <= 1.0


def test_notebook_05_defaults_are_the_configs_chosen_on_validation():
    """Notebook 05 trains CALS and MbLS at the knobs the evidence chose on validation
    (docs/evidence/chosen.json, written by `mls-tutorial report --choose-on val`)."""
    import papermill

    params = papermill.inspect_notebook(str(NOTEBOOK_DIR / "05_class_adaptive_constraints.ipynb"))
    default = {k: ast.literal_eval(v["default"]) for k, v in params.items()}
    chosen = json.loads((ROOT / "docs" / "evidence" / "chosen.json").read_text())
    config = {f["family"]: f["config"] for f in chosen["families"]}
    assert config["cals"]["loss_kwargs"]["margin"] == default["cals_margin"]
    assert config["mbls"]["loss_kwargs"]["margin"] == default["margin"]
    assert config["mbls"]["loss_kwargs"]["alpha"] == default["alpha"]
    # the evidence folder the notebook reads by default is the repository's
    assert (NOTEBOOK_DIR / default["evidence_dir"]).resolve() == (ROOT / "docs" / "evidence")


def check_04_prose(m: dict):
    """The numbers notebook 04's prose quotes for its defaults are the ones it printed."""
    text = _markdown("04_your_own_data")
    acdc = m["acdc"]
    assert acdc["gap"] < 0 and "*under*-confident" in text
    assert f"is about {acdc['gap']:.2f}, and the foreground ECE about {acdc['ece']:.2f}" in text
