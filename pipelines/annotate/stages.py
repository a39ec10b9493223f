"""The Ray Data stages of the annotation job: read each shard and prepare its rows on CPU (one read task per
shard), the engine, then parse, validate or repair (`pipelines.postprocess`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.engines import Engine
from pipelines.engines.base import ROW_POSITION_FIELDS
from pipelines.images import prepare_batch
from pipelines.ingest import IngestFilters, Shard, read_shard
from pipelines.postprocess import postprocess_batch
from pipelines.tasks import Task

if TYPE_CHECKING:
    from pipelines.annotate.settings import AnnotateSettings

__all__ = ["BLOCK_ROWS", "ShardDatasource", "build_dataset"]

logger = logging.getLogger(__name__)

# Rows per block out of the read-and-prepare stage.
BLOCK_ROWS = 64
# Columns of the read stage: what the later stages need of a row (image bytes only until they are prepared).
_READ_FIELDS = (
    *ROW_POSITION_FIELDS,
    pa.field("key", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image_bytes", pa.binary()),
)


def _prepare_block(batch: pa.Table, task: Task, max_side: int, max_pixels: int) -> pa.Table:
    """Bounded JPEG of each image (image tasks only) and the reason a row cannot be sent, if any; drops the
    original image bytes."""
    if task.needs_image:
        batch = prepare_batch(batch, column="image_bytes", max_side=max_side, max_pixels=max_pixels)
        errors = batch.column("image_error").to_pylist()
        batch = batch.drop_columns(["image_error"])
    else:
        batch = batch.append_column("prepared_image", pa.nulls(batch.num_rows, pa.binary()))
        for name in ("width", "height"):  # no stored image is read: its size is unknown
            batch = batch.set_column(batch.column_names.index(name), name, pa.nulls(batch.num_rows, pa.int32()))
        errors = [None] * batch.num_rows
    captions = batch.column("caption").to_pylist()
    skip = [task.skip_reason(caption, error) for caption, error in zip(captions, errors, strict=True)]
    return batch.drop_columns(["image_bytes"]).append_column("skip_reason", pa.array(skip, pa.string()))


def _read_and_prepare(
    shard: Shard, input_format: str, filters: IngestFilters, task: Task, max_side: int, max_pixels: int
) -> Iterator[pa.Table]:
    """Read one shard and prepare its rows, in blocks of `BLOCK_ROWS`, with their shard name, position and size.

    A shard that cannot be read gives no rows here; the driver reads it again when it writes the shard and
    reports the error then (and a re-run retries it).
    """
    try:
        table, _ = read_shard(shard, input_format, filters)
    except Exception:  # noqa: BLE001 - reported by the writer
        logger.exception("shard %s could not be read", shard.name)
        return
    n = table.num_rows
    extra = {
        "_shard": pa.array([shard.name] * n, pa.string()),
        "_index": pa.array(range(n), pa.int64()),
        "_shard_rows": pa.array([n] * n, pa.int64()),
    }
    columns = [extra[f.name] if f.name in extra else table.column(f.name) for f in _READ_FIELDS]
    table = pa.Table.from_arrays(columns, schema=pa.schema(_READ_FIELDS))
    for start in range(0, n, BLOCK_ROWS):
        yield _prepare_block(table.slice(start, BLOCK_ROWS), task, max_side, max_pixels)


class ShardDatasource(Datasource):
    """One read task per shard: it reads the shard and decodes and bounds its images (the CPU stage).

    Shards are never bundled into one task, and decoding runs in as many parallel tasks as there are CPUs,
    apart from the model's actors.
    """

    def __init__(self, shards: list[Shard], input_format: str, config: AnnotateSettings, task: Task):
        self.shards = shards
        self.read_args = (input_format, config.filters, task, config.max_side, config.max_pixels)

    def get_name(self) -> str:
        return "AnnotationShards"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [
            ReadTask(
                functools.partial(_read_and_prepare, shard, *self.read_args),
                metadata,
                per_task_row_limit=per_task_row_limit,
            )
            for shard in self.shards
        ]


def build_dataset(
    shards: list[Shard], input_format: str, config: AnnotateSettings, engine: Engine
) -> ray.data.Dataset:
    """The streaming pipeline over `shards`: read and prepare -> engine -> postprocess."""
    source = ShardDatasource(shards, input_format, config, engine.task)
    ds = engine.run(ray.data.read_datasource(source, override_num_blocks=len(shards)))
    return ds.map_batches(
        postprocess_batch,
        fn_kwargs={"task": engine.task, "model": engine.model, "engine": engine.name},
        batch_format="pyarrow",
    )
