"""Peak memory of each notebook's kernel on its default parameters (Binder gives 2 GB).

    python benchmarks/bench_notebook_memory.py                         # every notebook, cold
    python benchmarks/bench_notebook_memory.py --notebooks 01 02 04    # some of them
    python benchmarks/bench_notebook_memory.py --notebooks 03 --runs-dir /tmp/cache-copy

Each ``notebooks/*.ipynb`` (a new one is picked up by itself) runs with papermill on the
project's engine (``mls_tutorial/notebook_engine.py``, as ``docs/build.py`` uses it) with its DEFAULT
parameters; only ``output_dir`` and ``runs_dir`` are set, both under ``--work``. A code cell
appended to a copy of the notebook reads the kernel's own ``/proc/self/status`` just before the
kernel shuts down: ``VmHWM`` is the kernel process's peak resident set size over its whole life;
``ru_maxrss`` of ``RUSAGE_CHILDREN`` is the largest child it waited for (data-loader workers,
if any). Wall time is the papermill call (kernel start to shutdown).

``--runs-dir`` (default: a fresh empty folder under ``--work``, i.e. a cold run that trains
every run the notebook needs): the notebooks write any missing run into it, so pass a folder you
may write into (for a read-only cache of symlinked runs, ``cp -a`` the folder first: the links
are kept and complete runs are only loaded). The run folders present before and after each
notebook are counted, and the ``[cached]`` and ``[shipped]`` lines of its output, to say what was
trained, loaded, or copied from the package's shipped runs. ``--no-train`` sets
``MLS_TUTORIAL_NO_TRAIN=1`` (a notebook that would train fails). Results: a table on stdout (with
the total wall time) and ``--work``/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
KERNEL = "python3"
PROBE = """\
# appended by benchmarks/bench_notebook_memory.py: this kernel's peak memory
import json as _json, resource as _resource
_status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
_kb = lambda key: int(_status[key].split()[0])
_json.dump({{"vm_hwm_kb": _kb("VmHWM"), "vm_rss_kb": _kb("VmRSS"),
            "children_maxrss_kb": _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss}},
           open({path!r}, "w"))
"""


def _engine():
    from mls_tutorial import notebook_engine

    return notebook_engine


def select(names: list[str] | None) -> list[Path]:
    found = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not names:
        return found
    picked = [p for p in found if any(p.stem.startswith(n) for n in names)]
    missing = [n for n in names if not any(p.stem.startswith(n) for p in found)]
    if missing:
        raise SystemExit(f"no notebook matches {missing}")
    return picked


def run_folders(runs_dir: Path) -> set[str]:
    if not runs_dir.is_dir():
        return set()
    return {p.name for p in runs_dir.iterdir() if not p.name.startswith(".")}


def measure(path: Path, work: Path, runs_dir: Path, timeout: int) -> dict:
    import nbformat
    import papermill

    probe_file = work / f"{path.stem}.memory.json"
    probe_file.unlink(missing_ok=True)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.format(path=str(probe_file))))
    source = work / "src" / path.name
    source.parent.mkdir(parents=True, exist_ok=True)
    (work / "executed").mkdir(exist_ok=True)
    nbformat.write(nb, source)
    declared = papermill.inspect_notebook(str(path))
    parameters = {"output_dir": str(work / "outputs" / path.stem), "runs_dir": str(runs_dir)}
    parameters = {k: v for k, v in parameters.items() if k in declared}
    before = run_folders(runs_dir)
    load_before = os.getloadavg()
    start = time.perf_counter()
    retries = []
    _engine().execute(
        source,
        work / "executed" / path.name,
        parameters=parameters,
        kernel_name=KERNEL,
        cwd=str(NOTEBOOK_DIR),
        execution_timeout=timeout,
        progress_bar=False,
        on_retry=lambda: retries.append(time.perf_counter() - start),
    )
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    probe = json.loads(probe_file.read_text())
    executed = nbformat.read(work / "executed" / path.name, as_version=4)
    text = "".join(
        o.get("text", "") for c in executed.cells for o in c.get("outputs", []) if "text" in o
    )
    return {
        "notebook": path.stem,
        "peak_rss_gb": round(probe["vm_hwm_kb"] / 2**20, 3),
        "final_rss_gb": round(probe["vm_rss_kb"] / 2**20, 3),
        "children_peak_rss_gb": round(probe["children_maxrss_kb"] / 2**20, 3),
        "wall_s": round(wall, 1),
        "runs_dir": str(runs_dir) if "runs_dir" in parameters else None,
        "runs_trained": sorted(  # new folders, less the shipped copies
            name
            for name in run_folders(runs_dir) - before
            if not (runs_dir / name / "shipped.json").is_file()
        )
        if "runs_dir" in parameters
        else [],
        "cached_lines": text.count("[cached]"),
        "shipped_lines": text.count("[shipped]"),
        "retries": len(retries),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def main(argv: list[str] | None = None) -> int:
    # as docs/build.py: a non-inline MPLBACKEND would keep plt.show() from drawing inline
    os.environ.pop("MPLBACKEND", None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", nargs="*", help="stems or prefixes (default: all)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="runs cache the notebooks read and write (default: empty, cold)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None, help="outputs (default: a tmp dir)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--no-train", action="store_true", help="MLS_TUTORIAL_NO_TRAIN=1")
    args = parser.parse_args(argv)
    if args.no_train:
        os.environ["MLS_TUTORIAL_NO_TRAIN"] = "1"  # the kernels inherit it
    work = args.work or Path(tempfile.mkdtemp(prefix="mls-nbmem-"))
    work.mkdir(parents=True, exist_ok=True)
    runs_dir = (args.runs_dir or work / "runs").absolute()
    print(f"work {work}, runs cache {runs_dir}", flush=True)
    results_file = work / "memory.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for path in select(args.notebooks):
        r = measure(path, work, runs_dir, args.timeout)
        results.append(r)
        results_file.write_text(json.dumps(results, indent=1))
        print(
            f"{r['notebook']}: peak kernel RSS {r['peak_rss_gb']:.2f} GB "
            f"(children {r['children_peak_rss_gb']:.2f} GB), {r['wall_s']:.0f} s, "
            f"trained {len(r['runs_trained'])} runs, {r['cached_lines']} [cached] and "
            f"{r['shipped_lines']} [shipped] lines, "
            f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}",
            flush=True,
        )
    print(
        "\n| notebook | peak kernel RSS (GB) | wall (s) | runs trained | [shipped] | load (1 min) |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['notebook']} | {r['peak_rss_gb']:.2f} | {r['wall_s']:.0f} | "
            f"{len(r['runs_trained'])} | {r.get('shipped_lines', 0)} | "
            f"{r['load_before'][0]:.1f}-{r['load_after'][0]:.1f} |"
        )
    print(f"total wall {sum(r['wall_s'] for r in results):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
