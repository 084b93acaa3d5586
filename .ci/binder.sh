#!/usr/bin/env bash
# CI: build a second, fresh environment from binder/requirements.txt as Binder (repo2docker)
# would: pip install -r from the repository root, then binder/postBuild. Two differences, both
# because CI has no network but PyPI: the CPU wheel index line is dropped (torch==2.13.0, a
# CPU build, comes from local disk) and torch is pinned. papermill and ipykernel are added: on
# Binder, repo2docker's own environment provides the kernel, and papermill is how CI runs the
# notebook. Then notebook 01 runs in that environment on its default parameters with training
# forbidden (so the non-editable install must carry the shipped runs as package data) and must
# write its metrics.json; the executed copy goes to test-artifacts/binder/.
set -euo pipefail
cd "$(dirname "$0")/.."
env_dir=.venv-binder
out=test-artifacts/binder
rm -rf "$env_dir" "$out"
mkdir -p "$out"
python3 -m venv "$env_dir"
grep -v -- '--extra-index-url' binder/requirements.txt > "$out/requirements-ci.txt"
"$env_dir/bin/pip" install -q -r "$out/requirements-ci.txt" "torch==2.13.0" ipykernel papermill
NB_PYTHON_PREFIX="$PWD/$env_dir" bash binder/postBuild
test -f "$env_dir/share/jupyter/lab/settings/overrides.json"

# the installed package (not the source tree: -I keeps the cwd off sys.path) carries the runs
"$env_dir/bin/python" -I -c 'import mls_tutorial
from mls_tutorial.runs import shipped
assert "site-packages" in mls_tutorial.__file__, mls_tutorial.__file__
n = len(shipped.manifest()["runs"])
assert n, "the installed package carries no shipped runs"
print(f"installed package carries {n} shipped runs")'

# the python3 kernel must be this environment's interpreter (no user-level kernelspec)
export JUPYTER_DATA_DIR="$PWD/$out/jupyter-data"
"$env_dir/bin/python" -m ipykernel install --sys-prefix >/dev/null
MLS_TUTORIAL_NO_TRAIN=1 timeout 900 "$env_dir/bin/python" - "$out" <<'PY'
import json
import sys
from pathlib import Path

import papermill
from jupyter_client.kernelspec import KernelSpecManager
from mls_tutorial.notebook_engine import register

out = Path(sys.argv[1]).resolve()
kernel_python = Path(KernelSpecManager().get_kernel_spec("python3").argv[0])
assert kernel_python.parent == Path(sys.executable).parent, (kernel_python, sys.executable)
stem = "01_constrained_optimization_view"
params = {"output_dir": str(out / stem), "runs_dir": str(out / "runs")}  # defaults otherwise
papermill.execute_notebook(
    f"notebooks/{stem}.ipynb", str(out / f"{stem}.ipynb"), parameters=params,
    kernel_name="python3", engine_name=register(), cwd="notebooks",
    execution_timeout=600, progress_bar=False,
)
metrics = json.loads((out / stem / "metrics.json").read_text())
print(f"Binder environment ran {stem}: dice {metrics['dice']:.3f}, figures {metrics['figures']}")
PY
