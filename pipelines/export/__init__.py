"""Export annotated shards as a Hugging Face dataset: splits, Parquet files, dataset card, statistics, plots.

    python -m pipelines.export --input ANNOTATED_DIR --output DIR [--split-proportions 480005,10000,50000] [--seed 0]

One module per responsibility: `job` (reading, writing, the command line), `splits` (which split a row goes
to), `stats` (``stats.json``), `card` (``README.md``, from ``templates/dataset_card.md``) and `plots`
(``plots/*.png``). The names below are the package's interface.
"""

from pipelines.export.job import KEEP_STATUSES, ExportSettings, export, main
from pipelines.export.splits import DEFAULT_PROPORTIONS, SPLITS, assign_splits, balanced_splits
from pipelines.export.stats import ExportStats

__all__ = [
    "DEFAULT_PROPORTIONS",
    "KEEP_STATUSES",
    "SPLITS",
    "ExportSettings",
    "ExportStats",
    "assign_splits",
    "balanced_splits",
    "export",
    "main",
]
