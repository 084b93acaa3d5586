"""The comparison table of docs/nnunet.md from ``run.sh``'s score folders.

    python docs/evidence/nnunet/table.py WORK      # writes table.md and table.json beside itself

One row per trainer run (test subjects, temperature fitted on the validation subjects), then
the paired differences (same seed: same initial weights and batches) of each penalty against
its baseline: nnUNetTrainerMbLS - nnUNetTrainer and nnUNetTrainerCEMbLS - nnUNetTrainerCELoss,
with their mean and sample sd over seeds and the count of seeds where the penalty is lower.
``table.json`` holds the same numbers for notebook 07 (``{"columns", "runs", "pairs"}``).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIRS = (("nnUNetTrainerMbLS", "nnUNetTrainer"), ("nnUNetTrainerCEMbLS", "nnUNetTrainerCELoss"))
COLS = (
    ("Dice", lambda m: m["dice"]),
    ("fg ECE", lambda m: m["ece"]),
    ("gap", lambda m: m["gap"]),
    ("fg ECE, TS", lambda m: m["temperature_scaled"]["ece"]),
    ("gap, TS", lambda m: m["temperature_scaled"]["gap"]),
    ("T", lambda m: m["temperature_scaled"]["temperature"]),
    ("d > 2", lambda m: m["score"]["distance_share_above"]["2"]),
    ("d > 5", lambda m: m["score"]["distance_share_above"]["5"]),
    ("d > 10", lambda m: m["score"]["distance_share_above"]["10"]),
)
NAME = re.compile(r"^(nnUNetTrainer[A-Za-z]*?)_(\d+epochs_\d+iters)_seed(\d+)(_noval)?$")


def runs(work: Path) -> list[dict]:
    """One dict per finished score folder: trainer, schedule, seed and the COLS values."""
    out = []
    for path in sorted((work / "score").glob("*/metrics.json")):
        m = NAME.match(path.parent.name)
        if m:
            metrics = json.loads(path.read_text())
            values = {c: f(metrics) for c, f in COLS}
            out.append({"trainer": m[1], "schedule": m[2], "seed": int(m[3]), **values})
    if not out:
        raise SystemExit(f"no finished runs under {work}/score")
    return sorted(out, key=lambda r: (r["trainer"], r["schedule"], r["seed"]))


def pairs(rows: list[dict]) -> list[dict]:
    """Per pair and schedule: the per-seed differences (penalty - baseline) of every column."""
    by = {(r["trainer"], r["schedule"], r["seed"]): r for r in rows}
    out = []
    for fam, base in PAIRS:
        for sched in sorted({r["schedule"] for r in rows}):
            seeds = sorted(
                s for (f, sc, s) in by if f == fam and sc == sched and (base, sched, s) in by
            )
            if seeds:
                diffs = {
                    c: [by[fam, sched, s][c] - by[base, sched, s][c] for s in seeds]
                    for c, _ in COLS
                }
                out.append(
                    {"pair": f"{fam} - {base}", "schedule": sched, "seeds": seeds, "diffs": diffs}
                )
    return out


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], paired: list[dict]) -> str:
    head = ["trainer", "schedule", "seed", *(c for c, _ in COLS)]
    lines = [_row(head), _row(["---"] * len(head))]
    lines += [
        _row([r["trainer"], r["schedule"], str(r["seed"]), *(f"{r[c]:.3f}" for c, _ in COLS)])
        for r in rows
    ]
    lines += ["", "Paired differences (penalty minus baseline, same seed):", ""]
    lines += [_row(["pair", "schedule", "seed", *(c for c, _ in COLS)]), _row(["---"] * len(head))]
    for p in paired:
        for i, s in enumerate(p["seeds"]):
            cells = (f"{p['diffs'][c][i]:+.4f}" for c, _ in COLS)
            lines.append(_row([p["pair"], p["schedule"], str(s), *cells]))
        n = len(p["seeds"])
        if n > 1:
            cells = (
                f"{statistics.mean(v):+.4f} ± {statistics.stdev(v):.4f}"
                for v in p["diffs"].values()
            )
            lines.append(_row([p["pair"], p["schedule"], f"mean ± sd of {n}", *cells]))
            lower = (f"{sum(x < 0 for x in v)}/{n}" for v in p["diffs"].values())
            lines.append(_row([p["pair"], p["schedule"], "seeds lower", *lower]))
    return "\n".join(lines) + "\n"


def main(work: Path, out: Path = HERE) -> None:
    rows = runs(work)
    paired = pairs(rows)
    (out / "table.md").write_text(markdown(rows, paired))
    data = {"columns": [c for c, _ in COLS], "runs": rows, "pairs": paired}
    (out / "table.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
