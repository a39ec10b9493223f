"""The Ray Data side of ingest: an input as a Ray Dataset (`read_dataset`, one read task per shard) and the
small actor that gathers each shard's `FilterCounts` (`FilterCountsCollector`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipelines.ingest.filters import _DEFAULT_FILTERS, FilterCounts, IngestFilters
from pipelines.ingest.formats import detect_format
from pipelines.ingest.planning import list_shards
from pipelines.ingest.readers import read_shard

if TYPE_CHECKING:
    import ray.data


class _FilterCountsStore:
    """The state of a `FilterCountsCollector`, held by its actor: the latest `FilterCounts` per shard name."""

    def __init__(self) -> None:
        self.by_shard: dict[str, FilterCounts] = {}

    def add(self, shard_name: str, counts: FilterCounts) -> None:
        self.by_shard[shard_name] = counts

    def total(self) -> FilterCounts:
        return sum(self.by_shard.values(), FilterCounts())


class FilterCountsCollector:
    """Gathers the `FilterCounts` of the shards read by `read_dataset` (a small Ray actor).

    Counts are stored per shard name, so a retried read task does not count twice. Read `counts()` after the
    dataset has been consumed.
    """

    def __init__(self) -> None:
        import ray

        self._store = ray.remote(num_cpus=0)(_FilterCountsStore).remote()

    def add(self, shard_name: str, counts: FilterCounts) -> None:
        import ray

        ray.get(self._store.add.remote(shard_name, counts))

    def counts(self) -> FilterCounts:
        import ray

        return ray.get(self._store.total.remote())


def read_dataset(
    path: str | Path,
    input_format: str | None = None,
    filters: IngestFilters = _DEFAULT_FILTERS,
    *,
    files_per_shard: int = 256,
    rows_per_shard: int = 10_000,
    collector: FilterCountsCollector | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of the input's rows (`INGEST_SCHEMA`), one read task per shard.

    The shard list and the de-duplication pre-pass run here, on the driver; `collector` (optional) receives
    each shard's `FilterCounts`.
    """
    import ray

    input_format = input_format or detect_format(path)
    shards = list_shards(path, input_format, files_per_shard, rows_per_shard, filters)

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for index in batch["shard"]:
            shard = shards[int(index)]
            table, counts = read_shard(shard, input_format, filters)
            if collector is not None:
                collector.add(shard.name, counts)
            tables.append(table)
        return pa.concat_tables(tables)

    items = [{"shard": i} for i in range(len(shards))]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(read, batch_size=1)
