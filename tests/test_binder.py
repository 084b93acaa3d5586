"""The Binder (repo2docker) recipe cannot rot: it installs this package on CPU torch and every
module the notebooks import is reachable from what it installs.

CI also builds a fresh environment from ``binder/requirements.txt`` (``.ci/binder.sh``: index line
dropped, torch pinned, ``binder/postBuild`` run) and executes notebook 01 in it; these tests check
the recipe's shape without a network, and that Binder opens notebook 01 with no news pop-up.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from _imports import absolute_imports
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
# repo2docker reads these; any of them would take precedence over or add to requirements.txt.
OTHER_CONFIGS = {
    "environment.yml",
    "Pipfile",
    "Pipfile.lock",
    "setup.py",
    "Project.toml",
    "REQUIRE",
    "install.R",
    "apt.txt",
    "DESCRIPTION",
    "Dockerfile",
    "default.nix",
}


def _requirement_lines() -> list[str]:
    text = (BINDER / "requirements.txt").read_text()
    lines = [line.split(" #")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _requirements() -> list[Requirement]:
    return [Requirement(x) for x in _requirement_lines() if not x.startswith(("-", "."))]


def test_requirements_install_the_package_on_the_cpu_torch_index():
    lines = _requirement_lines()
    assert CPU_INDEX in lines, "binder/requirements.txt must use the CPU torch wheel index"
    assert "." in lines or "-e ." in lines, "binder/requirements.txt must install the package (.)"
    # every other line parses as a requirement (pip would fail on the whole file otherwise)
    others = [x for x in lines if x not in (CPU_INDEX, ".", "-e .")]
    assert len(_requirements()) == len(others), f"unparsable lines in {others}"


def test_torch_is_pinned_or_bounded_and_admits_the_tested_version():
    (torch_req,) = [r for r in _requirements() if canonicalize_name(r.name) == "torch"]
    spec: SpecifierSet = torch_req.specifier
    ops = {s.operator for s in spec}
    assert "==" in ops or ("<" in ops or "<=" in ops), f"torch must be pinned or bounded: {spec}"
    tested = metadata.version("torch").split("+")[0]
    assert spec.contains(tested), f"torch {tested} (what the tests run on) is outside {spec}"
    # and the package's own lower bound is respected
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pkg_torch,) = [Requirement(d) for d in project["dependencies"] if d.startswith("torch")]
    for low in [s.version for s in pkg_torch.specifier if s.operator in (">=", ">")]:
        assert not SpecifierSet(f"<{low}").contains(tested)


def test_runtime_is_a_valid_python_spec():
    text = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3)\.(\d+)", text)
    assert match, f"runtime.txt must read python-3.X, not {text!r}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains(f"3.{match.group(2)}")


def test_no_competing_repo2docker_config():
    present = {p.name for p in BINDER.iterdir()} & OTHER_CONFIGS
    assert not present, f"binder/ holds {present}: repo2docker would not use requirements.txt alone"


def _closure(names: set[str]) -> set[str]:
    """Installed distributions reachable from ``names`` through their (unconditional) requires."""
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for raw in reqs:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def _notebook_imports() -> set[str]:
    mods = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            src = "".join(cell["source"])
            src = "\n".join(x for x in src.splitlines() if not x.lstrip().startswith(("%", "!")))
            mods |= {m.split(".")[0] for m in absolute_imports(src)}
    return mods


def test_every_notebook_import_is_installed_by_the_recipe():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {Requirement(d).name for d in project["dependencies"]}
    direct |= {r.name for r in _requirements()}
    # repo2docker's own environment provides the notebook server and kernel
    direct |= {"ipykernel", "jupyterlab"}
    reachable = _closure(direct)
    providers = metadata.packages_distributions()
    missing = []
    for mod in sorted(_notebook_imports() - {"mls_tutorial"}):
        if mod in sys.stdlib_module_names:
            continue
        dists = {canonicalize_name(d) for d in providers.get(mod, [])}
        if not dists & reachable:
            missing.append(f"{mod} (from {sorted(dists) or 'nothing installed'})")
    assert not missing, f"notebooks import modules Binder would not install: {missing}"


def test_postbuild_installs_the_news_off_settings(tmp_path):
    """postBuild puts binder/overrides.json where JupyterLab reads default settings, and those
    settings are the ones the JupyterLab browser test runs with (no news pop-up there)."""
    from test_browser import NEWS_OFF

    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK), "binder/postBuild must be executable"
    env = {**os.environ, "NB_PYTHON_PREFIX": str(tmp_path)}
    subprocess.run(["bash", str(post_build)], env=env, check=True, cwd=tmp_path)
    installed = tmp_path / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    settings = json.loads(installed.read_text())
    assert settings == json.loads((BINDER / "overrides.json").read_text())
    assert settings == NEWS_OFF


def test_overrides_match_jupyterlab_schema():
    """Every override names a real setting with a valid value (JupyterLab ignores others)."""
    jsonschema = pytest.importorskip("jsonschema")
    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    if not schemas.is_dir():
        pytest.skip(f"no JupyterLab schemas in {schemas}: pip install jupyterlab")
    for plugin, values in json.loads((BINDER / "overrides.json").read_text()).items():
        package, name = plugin.split(":")
        schema = json.loads((schemas / package / f"{name}.json").read_text())
        jsonschema.validate(values, schema)
        assert set(values) <= set(schema["properties"]), plugin


def test_the_badge_opens_notebook_01_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    (url,) = re.findall(r"\(https://mybinder\.org/v2/gh/[^)]+\)", readme)
    match = re.search(r"urlpath=lab/tree/(notebooks/[^)&]+\.ipynb)", url)
    assert match, f"the Binder badge does not open a notebook in JupyterLab: {url}"
    assert match.group(1).startswith("notebooks/01_") and (ROOT / match.group(1)).is_file()


def test_the_binder_ci_script_imports_only_what_its_environment_installs():
    """The Python that ``.ci/binder.sh`` runs in Binder's environment imports installed modules
    only: nothing from ``tests/`` (that environment has no test suite on its path), and every
    module it names exists (a module moved into the package must be imported from there)."""
    import importlib.util

    script = (ROOT / ".ci" / "binder.sh").read_text()
    assert "PYTHONPATH=tests" not in script
    bodies = re.findall(r"<<'PY'\n(.*?)\nPY\n", script, flags=re.S)
    assert bodies, "no embedded Python found in .ci/binder.sh"
    ours = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tests"}
    for body in bodies:
        for name in absolute_imports(body):
            assert name.split(".")[0] not in ours, f"imports from tests/: {name}"
            assert importlib.util.find_spec(name) is not None, f"no module: {name}"
