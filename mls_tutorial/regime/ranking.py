"""Rankings of the training losses in a cell, over the methods that ran on the report seeds at
the re-chosen or the default knobs; the families left out are holes."""

from __future__ import annotations

from collections.abc import Mapping

from mls_tutorial.regime.cells import cell_row
from mls_tutorial.regime.records import FAMILIES


def cell_ranking(cell: Mapping, which: str = "chosen") -> list[tuple[float, str, str]]:
    """The training-loss families of ``cell`` ranked by mean test ECE at their ``which`` knob
    (``chosen``: re-chosen in the cell; ``default``: the default regime's): ``[(ece, family,
    method)]``, lowest first. A family whose ``which`` knob has no report runs is a hole
    (``ranking_holes``), not ranked at another knob; CE + TS is not a training loss."""
    ranks = []
    for fam in FAMILIES[:-1]:
        row = cell_row(cell, fam, "reference" if fam == "ce" else which)
        if row is not None and row.get("ece") is not None:
            ranks.append((row["ece"], fam, row["method"]))
    return sorted(ranks)


def ranking_holes(cell: Mapping, which: str = "chosen") -> list[str]:
    """The training-loss families left out of ``cell_ranking(cell, which)``."""
    ranked = {f for _, f, _ in cell_ranking(cell, which)}
    return [f for f in FAMILIES[:-1] if f not in ranked]


def seeds_lower(cell: Mapping, a: str, b: str, which: str = "chosen") -> tuple[int, int]:
    """On how many report seeds family ``a``'s ECE is below family ``b``'s (``which`` knobs;
    CE is its reference row): ``(k, n)`` over the seeds both have."""

    def by_seed(fam):
        row = cell_row(cell, fam, "reference" if fam == "ce" else which)
        return {} if row is None else dict(zip(row["seeds"], row["ece_values"], strict=True))

    ea, eb = by_seed(a), by_seed(b)
    seeds = [s for s in ea if s in eb and ea[s] is not None and eb[s] is not None]
    return sum(ea[s] < eb[s] for s in seeds), len(seeds)


def unreported_choices(cell: Mapping) -> list[str]:
    """Families whose knob re-chosen in ``cell`` has no run on the report seeds, or that were
    never re-chosen there (holes of the re-chosen ranking)."""
    return [f for f in ranking_holes(cell, "chosen") if f != "ce"]
