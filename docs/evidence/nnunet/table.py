"""The comparison table of docs/nnunet.md from ``run.sh``'s score folders.

    python docs/evidence/nnunet/table.py WORK > docs/evidence/nnunet/table.md

One row per trainer run (test subjects, temperature fitted on the validation subjects), then
the paired differences (same seed: same initial weights and batches) of each penalty against
its baseline: nnUNetTrainerMbLS - nnUNetTrainer and nnUNetTrainerCEMbLS - nnUNetTrainerCELoss.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

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


def _runs(work: Path) -> dict[tuple[str, str, int], dict]:
    runs = {}
    for path in sorted((work / "score").glob("*/metrics.json")):
        m = NAME.match(path.parent.name)
        if m:
            runs[(m.group(1), m.group(2), int(m.group(3)))] = json.loads(path.read_text())
    return runs


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def table(work: Path) -> str:
    runs = _runs(work)
    if not runs:
        raise SystemExit(f"no finished runs under {work}/score")
    head = ["trainer", "schedule", "seed", *(c for c, _ in COLS)]
    lines = [_row(head), _row(["---"] * len(head))]
    for (fam, sched, seed), m in sorted(runs.items()):
        lines.append(_row([fam, sched, str(seed), *(f"{f(m):.3f}" for _, f in COLS)]))
    lines += ["", "Paired differences (penalty minus baseline, same seed):", ""]
    lines += [_row(["pair", "schedule", "seed", *(c for c, _ in COLS)]), _row(["---"] * len(head))]
    for fam, base in PAIRS:
        diffs = []
        for (f, sched, seed), m in sorted(runs.items()):
            ref = runs.get((base, sched, seed))
            if f != fam or ref is None:
                continue
            d = [fn(m) - fn(ref) for _, fn in COLS]
            diffs.append(d)
            lines.append(_row([f"{fam} - {base}", sched, str(seed), *(f"{x:+.4f}" for x in d)]))
        if len(diffs) > 1:
            mean = [sum(col) / len(col) for col in zip(*diffs, strict=True)]
            cells = [f"{fam} - {base}", "", f"mean of {len(diffs)}", *(f"{x:+.4f}" for x in mean)]
            lines.append(_row(cells))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1])))
