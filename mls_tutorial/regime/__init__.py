"""The regime study: when does the margin help? Model capacity x training length.

A **cell** is one (U-Net preset, training iterations). In each cell every loss family is
trained on two disjoint sets of seeds:

- ``choose_seeds``: the family's knob is chosen on **validation** numbers of these seeds only,
  by the rule of ``mls-tutorial report --choose-on val`` (``results.choose_on_validation``);
- ``report_seeds``: the **test** numbers reported, for the knob chosen in the default regime
  (``default``) and the knob re-chosen in this cell (``chosen``), each with its paired
  difference to CE seed by seed and the number of seeds on which it beats CE.

Per run (``run_record``): the test metrics, the validation metrics the rule reads, how far the
run went into memorisation (``history_divergence``) and its logit distances at the end of
training (``measure_distances``: exact mean and share above the margin, on the test volumes and
on the training images, kept in the run folder's ``distances.json``).

Every cell is complete or has holes, never a substitute: a knob re-chosen in a cell but not
trained on the report seeds, or a family never re-chosen there, is listed by ``cell_holes``
and left out of ``cell_ranking`` (which ranks at the re-chosen or at the default knobs).

``regime_study(runs, ...)`` -> the dict written as ``regime.json`` (protocol, cells, findings,
CE's distance histograms); ``regime_markdown`` / ``records_csv`` its tables;
``finding_paragraph`` the finding in one paragraph, every number read from the dict and every
trend with the number of seeds that show it.

Modules, one idea each: ``records`` (one run), ``cells`` (choose, report, holes), ``findings``
(trends), ``ranking``, ``prose`` (the finding paragraph), ``tables`` (CSV, Markdown), ``study``.
"""

from mls_tutorial.regime.cells import (
    cell_holes,
    cell_row,
    choose_per_family,
    regime_cells,
)
from mls_tutorial.regime.findings import (
    paired_by_seed,
    regime_findings,
)
from mls_tutorial.regime.prose import (
    finding_paragraph,
)
from mls_tutorial.regime.ranking import (
    cell_ranking,
    ranking_holes,
    seeds_lower,
    unreported_choices,
)
from mls_tutorial.regime.records import (
    CELL_METRICS,
    DISTANCES_FILE,
    FAMILIES,
    LABELS,
    PAIRED,
    history_divergence,
    knob_text,
    measure_distances,
    read_distances,
    run_record,
)
from mls_tutorial.regime.study import (
    regime_study,
)
from mls_tutorial.regime.tables import (
    RECORD_COLUMNS,
    cell_markdown,
    choice_markdown,
    records_csv,
    regime_markdown,
    trend_markdown,
    write_study,
)

__all__ = [
    "CELL_METRICS",
    "DISTANCES_FILE",
    "FAMILIES",
    "LABELS",
    "PAIRED",
    "RECORD_COLUMNS",
    "cell_holes",
    "cell_markdown",
    "cell_ranking",
    "cell_row",
    "choice_markdown",
    "choose_per_family",
    "finding_paragraph",
    "history_divergence",
    "knob_text",
    "measure_distances",
    "paired_by_seed",
    "ranking_holes",
    "read_distances",
    "records_csv",
    "regime_cells",
    "regime_findings",
    "regime_markdown",
    "regime_study",
    "run_record",
    "seeds_lower",
    "trend_markdown",
    "unreported_choices",
    "write_study",
]
