"""The input side of annotation: find the shards of an input, read each one into rows with a stable key, filter.

One module per responsibility, each importing only those listed before it:

- `columns`: which source column of any format feeds which ingest column (aliases in any letter case);
- `formats`: the five input formats, `INGEST_SCHEMA`, `detect_format`, listing an input's files;
- `filters`: `IngestFilters`, `FilterCounts` and applying the filters to a shard's rows;
- `shards`: `Shard`, the unit of reading (and of annotation output);
- `readers`: reading one shard per format into rows with a stable key, then filtering it (`read_shard`);
- `planning`: `list_shards` and the de-duplication pre-pass across shards (`plan_dedupe`);
- `dataset`: the Ray Data side, `read_dataset` and `FilterCountsCollector`.

`read_shard` returns a table with exactly `INGEST_SCHEMA`'s columns and a `FilterCounts`: every row a filter
removes is counted under its reason. The names below are the package's interface.
"""

from pipelines.ingest.dataset import FilterCountsCollector, read_dataset
from pipelines.ingest.filters import FilterCounts, IngestFilters
from pipelines.ingest.formats import (
    IMAGE_COLUMNS,
    INGEST_SCHEMA,
    INPUT_FORMATS,
    METADATA_ONLY_FORMATS,
    detect_format,
)
from pipelines.ingest.planning import list_shards, plan_dedupe
from pipelines.ingest.readers import read_shard
from pipelines.ingest.shards import Shard

__all__ = [
    "IMAGE_COLUMNS",
    "INGEST_SCHEMA",
    "INPUT_FORMATS",
    "METADATA_ONLY_FORMATS",
    "FilterCounts",
    "FilterCountsCollector",
    "IngestFilters",
    "Shard",
    "detect_format",
    "list_shards",
    "plan_dedupe",
    "read_dataset",
    "read_shard",
]
