"""Stress reproduction of the papermill hang: the fast notebook suite N times in a row.

    python benchmarks/stress_notebooks.py --reps 10                  # the fixed engine
    python benchmarks/stress_notebooks.py --reps 3 --engine stock    # papermill's own engine
    python benchmarks/stress_notebooks.py --summary /tmp/mls-stress-...  # re-read a work dir

Each repetition runs ``python -m pytest tests/test_notebooks.py -m "not slow"`` (the fast
papermill runs of every notebook, notebook 04's exercise run and the hygiene/contract checks) in
a fresh copy of the working tree (``git ls-files -co --exclude-standard``, so a new untracked
notebook is included) under ``--work``: the tests write ``test-artifacts/`` next to their own
``tests/`` folder, so a copy keeps these runs from clashing with anyone else's test run; pytest's
``--basetemp`` holds the runs cache. The notebooks' kernels still import ``mls_tutorial`` from
the installed (editable) package. The machine is loaded by whatever else is running: this script
adds no load of its own; it records the load average before and after each repetition.

This file is also a pytest plugin (``-p stress_notebooks``, loaded into each repetition) that
counts from the outside, without editing the tests:

* every call of ``notebook_engine.execute`` and every retry it makes (its ``on_retry`` hook; the
  tests pass none, the plugin adds one): a retry means a cell outlived its 600 s timeout;
* every 1-second slice of the sliced poll that came back empty while its socket already held a
  message (``ZMQ_EVENTS & POLLIN`` read right after the empty slice): the condition the fix is
  for, a wake-up the poll missed (an upper bound: a message arriving in the microseconds between
  the slice's timeout and the read is counted too);
* ``--engine stock`` makes ``notebook_engine.register`` return papermill's stock ``nbclient``
  engine (no sliced poll; the retry guard stays).

Output in ``--work``: ``results.jsonl`` (one line per repetition), ``rep-NN/`` (pytest log, junit
xml, the plugin's events), and a summary printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
TEST = "tests/test_notebooks.py"


# ---------------------------------------------------------------- the pytest plugin


def _record(event: str, **fields) -> None:
    path = os.environ.get("STRESS_EVENTS")
    if not path:
        return
    line = json.dumps({"t": time.time(), "event": event, **fields})
    with open(path, "a") as f:
        f.write(line + "\n")


def pytest_configure(config) -> None:
    """Instrument ``mls_tutorial/notebook_engine.py`` before any test imports it."""
    if not os.environ.get("STRESS_TESTS"):
        return
    import zmq

    from mls_tutorial import notebook_engine as ne  # the module object the tests import too

    original_execute, original_sliced = ne.execute, ne._sliced

    def execute(input_path, output_path, *, on_retry=None, **kwargs):
        stem = Path(str(output_path)).stem
        start = time.monotonic()
        _record("execute", stem=stem, engine=ne.register())

        def retried():
            _record("retry", stem=stem, after_s=round(time.monotonic() - start, 1))
            if on_retry is not None:
                on_retry()

        try:
            original_execute(input_path, output_path, on_retry=retried, **kwargs)
        except BaseException as err:
            _record("failed", stem=stem, error=type(err).__name__, s=time.monotonic() - start)
            raise
        _record("done", stem=stem, s=round(time.monotonic() - start, 1))

    def sliced(get_msg, slice_s=ne.SLICE_S):
        channel = getattr(get_msg, "__self__", None)
        socket = getattr(channel, "socket", None)
        name = type(channel).__name__ if channel is not None else "?"

        async def watched(timeout=None, **kwargs):
            try:
                return await get_msg(timeout=timeout, **kwargs)
            except ne.Empty:
                try:
                    pending = socket is not None and socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
                except Exception:  # a closed socket at shutdown
                    pending = False
                if pending:
                    _record("stranded", channel=name, slice_s=timeout)
                raise

        return original_sliced(watched, slice_s)

    ne.execute, ne._sliced = execute, sliced
    if os.environ.get("STRESS_ENGINE") == "stock":
        ne.register = lambda: "nbclient"  # papermill's stock engine: no sliced poll


# ---------------------------------------------------------------- the driver


def copy_tree(dest: Path, ref: str | None = None) -> list[str]:
    """Tracked and untracked-not-ignored files of the working tree (or the commit ``ref``),
    copied to ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)
    if ref is not None:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return sorted(p.name for p in (dest / "notebooks").glob("*.ipynb"))
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return sorted(p.name for p in (dest / "notebooks").glob("*.ipynb"))


def junit(path: Path) -> dict:
    if not path.exists():
        return {"tests": 0, "failed": [], "notebook_runs": {}}
    root = ET.parse(path).getroot()
    failed, runs, n = [], {}, 0
    for case in root.iter("testcase"):
        n += 1
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        if name.startswith("test_notebook_runs_fast[") or "exercise_1_runs" in name:
            runs[name] = round(float(case.get("time", 0)), 1)
    return {"tests": n, "failed": failed, "notebook_runs": runs}


def events(path: Path) -> dict:
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    kinds = [e["event"] for e in lines]
    return {
        "notebook_executions": kinds.count("execute"),
        "retries": [e["stem"] for e in lines if e["event"] == "retry"],
        "stranded": kinds.count("stranded"),
        "failed_executions": [e["stem"] for e in lines if e["event"] == "failed"],
        "engine": next((e["engine"] for e in lines if e["event"] == "execute"), None),
    }


def repetition(
    i: int, work: Path, engine: str, threads: str | None, timeout: int, ref: str | None
) -> dict:
    rep = work / f"rep-{i:02d}"
    rep.mkdir(parents=True)
    tree = work / "tree"
    notebooks = copy_tree(tree, ref)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        "STRESS_EVENTS": str(rep / "events.jsonl"),
        "STRESS_TESTS": str(tree / "tests"),
        "STRESS_ENGINE": engine,
    }
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    cmd = [
        sys.executable, "-m", "pytest", TEST, "-m", "not slow", "-p", "stress_notebooks",
        "-p", "no:cacheprovider", "--basetemp", str(rep / "tmp"),
        "--junitxml", str(rep / "junit.xml"), "-q", "-o", "addopts=-ra --durations=0",
    ]  # fmt: skip
    load_before = os.getloadavg()
    start = time.monotonic()
    with open(rep / "pytest.log", "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.monotonic() - start
    load_after = os.getloadavg()
    shutil.rmtree(rep / "tmp", ignore_errors=True)  # the runs cache: large, not needed after
    result = {
        "rep": i,
        "engine": engine,
        "omp_num_threads": threads,
        "tree": ref or "working tree",
        "head": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "notebooks": notebooks,
        "passed": rc == 0,
        "returncode": rc,
        "wall_s": round(wall, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        **junit(rep / "junit.xml"),
        **events(rep / "events.jsonl"),
    }
    with open(work / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def summary(work: Path) -> str:
    rows = [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]
    walls = [r["wall_s"] for r in rows]
    load1 = [r["load_before"][0] for r in rows] + [r["load_after"][0] for r in rows]
    out = [
        f"{sum(r['passed'] for r in rows)} of {len(rows)} repetitions passed "
        f"(engine {rows[0]['engine']}, tree {rows[0].get('tree')}, OMP_NUM_THREADS={rows[0]['omp_num_threads']})",
        f"wall time per repetition: median {statistics.median(walls):.0f} s, "
        f"min {min(walls):.0f} s, max {max(walls):.0f} s",
        f"1-min load average before/after repetitions: {min(load1):.2f} to {max(load1):.2f} "
        f"(median {statistics.median(load1):.2f})",
        f"retries of a timed-out cell: {sum(len(r['retries']) for r in rows)} "
        f"{[s for r in rows for s in r['retries']]}",
        f"empty poll slices with a message already waiting: {sum(r['stranded'] for r in rows)}",
        f"notebook executions: {sum(r['notebook_executions'] for r in rows)}",
    ]
    for r in rows:
        out.append(
            f"  rep {r['rep']:2d}: {'pass' if r['passed'] else 'FAIL'} {r['wall_s']:6.0f} s, "
            f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}, "
            f"{r['tests']} tests, notebooks {','.join(n[:2] for n in r['notebooks'])}, "
            f"retries {r['retries'] or 0}, stranded {r['stranded']}"
            + (f", failed {r['failed']}" if r["failed"] else "")
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--first", type=int, default=1,
                        help="number of the first repetition (to add repetitions to a work dir)")  # fmt: skip
    parser.add_argument("--engine", choices=["sliced", "stock"], default="sliced")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (default /tmp/mls-stress-<engine>-<time>)")  # fmt: skip
    parser.add_argument("--threads", default="1",
                        help="OMP_NUM_THREADS for pytest and its kernels ('' to inherit)")  # fmt: skip
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per repetition")
    parser.add_argument("--ref", default=None,
                        help="run the tests of this commit (git archive) instead of a copy of the "
                        "working tree, e.g. HEAD: files others are editing stay out")  # fmt: skip
    parser.add_argument("--summary", type=Path, default=None, help="only summarise a work dir")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    work = args.work or Path(f"/tmp/mls-stress-{args.engine}-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", flush=True)
    for i in range(args.first, args.first + args.reps):
        r = repetition(i, work, args.engine, args.threads or None, args.timeout, args.ref)
        print(
            f"rep {i}: {'pass' if r['passed'] else 'FAIL'} in {r['wall_s']:.0f} s, load "
            f"{r['load_before']} -> {r['load_after']}, retries {r['retries']}, "
            f"stranded {r['stranded']}, notebooks {r['notebooks']}",
            flush=True,
        )
    print(summary(work), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
