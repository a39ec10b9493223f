"""Writing one shard's output: read the shard again, join its annotations by row position, write
``OUT/data/{shard}.parquet`` and then its completion record ``OUT/shards/{shard}.json``, each atomically.
The annotate job runs it as a Ray task (`write_shard_task`), so image bytes never pass through the driver."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.answers import failure_reason
from pipelines.engines.http_session import mask_secrets
from pipelines.ingest import FilterCounts, Shard, read_shard
from pipelines.tasks import Task
from schemas import IMAGE_TYPE, UPSTREAM_FIELDS, row_schema
from schemas.layout import DATA_DIR, IMAGE_ROWS_PER_ROW_GROUP, RUN_FILE, SUMMARY_FILE
from schemas.runs import TMP_PREFIX, pin_run_identity, write_atomically

if TYPE_CHECKING:
    from pipelines.annotate.settings import AnnotateSettings

__all__ = [
    "DATA_DIR",
    "RUN_FILE",
    "SHARDS_DIR",
    "SUMMARY_FILE",
    "SUPERSEDED_DIR",
    "ShardError",
    "ShardResult",
    "annotated_shard_table",
    "output_schema",
    "read_shard_records",
    "write_atomically",
    "write_shard",
    "write_shard_task",
]

# The output directory: data files (`DATA_DIR`), per-shard completion records, set-aside outputs, settings
# (`RUN_FILE`) and summary (`SUMMARY_FILE`).
SHARDS_DIR = "shards"
SUPERSEDED_DIR = "superseded"
# Bound of an error text that quotes an exception.
_SHARD_ERROR_CHARS = 2000


class ShardError(RuntimeError):
    """A shard could not be written (unreadable input, or its rows do not match the annotations)."""


@dataclass
class ShardResult:
    """What writing one shard produced; stored as ``OUT/shards/{name}.json``, the shard's completion record."""

    name: str
    rows: int
    status: Counter[str]
    failures: Counter[str]
    filters: FilterCounts
    fingerprint: str = ""

    def to_record(self) -> dict[str, Any]:
        return {
            "shard": self.name,
            "fingerprint": self.fingerprint,
            "file": f"{DATA_DIR}/{self.name}.parquet" if self.rows else None,
            "rows": self.rows,
            "status": dict(self.status),
            "failed_by_reason": dict(self.failures),
            "filters": self.filters.to_dict(),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ShardResult:
        return cls(
            record["shard"],
            record["rows"],
            Counter(record["status"]),
            Counter(record["failed_by_reason"]),
            FilterCounts(**record["filters"]),
            record["fingerprint"],
        )


def image_struct_column(source: pa.Table) -> pa.StructArray:
    """The `image` struct (original bytes, file name) of each row; null where the row has no image bytes."""
    data = source.column("image_bytes").combine_chunks()
    names = [None if s is None else PurePosixPath(s).name for s in source.column("source").to_pylist()]
    return pa.StructArray.from_arrays(
        [data, pa.array(names, pa.string())], fields=list(IMAGE_TYPE), mask=data.is_null()
    )


def output_schema(task: Task, images: bool) -> pa.Schema:
    """`schemas.row_schema` with the task's columns that are not in every row (e.g. ``spatial_caption``)."""
    base = row_schema().names
    extra = {name: dtype for name, dtype in task.output_columns.items() if name not in base}
    return row_schema(extra_columns=extra, with_image=images)


def annotated_shard_table(shard: Shard, source: pa.Table, annotations: pa.Table, task: Task, images: bool) -> pa.Table:
    """The output rows of a shard: the ingested columns joined with the annotations by row position."""
    annotations = annotations.sort_by("_index")
    positions = annotations.column("_index").to_pylist()
    if source.num_rows != annotations.num_rows or positions != list(range(source.num_rows)):
        raise ShardError(
            f"shard {shard.name}: read {source.num_rows} rows but {annotations.num_rows} came back annotated"
        )
    if source.column("key").to_pylist() != annotations.column("key").to_pylist():
        raise ShardError(f"shard {shard.name}: the rows read differ from the rows annotated (input changed?)")
    schema = output_schema(task, images)
    columns: dict[str, Any] = {
        name: source.column(name) for name in ("key", "url", "caption", "aesthetic_score")
    }
    # `original_*` as the metadata (or the header) gives them; `width`/`height` are the stored image's, as
    # decoded (null when it does not decode, or is not read by a text task).
    columns |= {f.name: source.column(f.name) for f in UPSTREAM_FIELDS}
    columns |= {name: annotations.column(name) for name in ("width", "height", "annotation")}
    columns |= {name: annotations.column(name) for name in task.output_columns}
    if images:
        columns["image"] = image_struct_column(source)
    arrays = [columns.get(f.name, pa.nulls(source.num_rows, f.type)) for f in schema]
    return pa.Table.from_arrays(
        [pa.chunked_array([a]) if isinstance(a, pa.Array) else a for a in arrays], schema=schema
    )


def write_shard(
    shard: Shard,
    parts: list[pa.Table],
    input_format: str,
    config: AnnotateSettings,
    task: Task,
    output: Path,
    manifest: Mapping[str, Any],
) -> ShardResult:
    """Read the shard again, join its annotations, write ``OUT/data/{shard.name}.parquet`` (only when the shard has
    rows: `datasets` cannot read a 0-row file), then its completion record ``OUT/shards/{shard.name}.json``.

    Both appear atomically, the record last: a shard without its record is pending, and a re-run rewrites its
    data file in place. Just before anything appears, the run's settings (`manifest`) are pinned to
    ``OUT/run.json`` (`pin_run_identity` is atomic and writes nothing once the file exists, so writers in parallel
    agree; a run that fails before its first shard pins nothing).
    """
    try:
        source, counts = read_shard(shard, input_format, config.filters)
    except Exception as exc:
        message = mask_secrets(f"{type(exc).__name__}: {exc}")[:_SHARD_ERROR_CHARS]
        raise ShardError(f"shard {shard.name} could not be read ({shard.path}): {message}") from exc
    if parts:
        annotations = pa.concat_tables(parts)
    else:
        annotations = pa.schema([pa.field("_index", pa.int64()), pa.field("key", pa.string())]).empty_table()
    if source.num_rows == 0 and annotations.num_rows == 0:
        table = output_schema(task, config.images).empty_table()
    else:
        table = annotated_shard_table(shard, source, annotations, task, config.images)
    pin_run_identity(output, manifest)
    data_file = output / DATA_DIR / f"{shard.name}.parquet"
    if table.num_rows:
        write_atomically(data_file, lambda tmp: pq.write_table(table, tmp, row_group_size=IMAGE_ROWS_PER_ROW_GROUP))
    else:
        data_file.unlink(missing_ok=True)
    annotation = table.column("annotation").combine_chunks()
    statuses = annotation.field("status").to_pylist() if table.num_rows else []
    errors = annotation.field("error").to_pylist() if table.num_rows else []
    failures = Counter(failure_reason(e) for s, e in zip(statuses, errors, strict=True) if s == "failed")
    result = ShardResult(shard.name, table.num_rows, Counter(statuses), failures, counts, shard.fingerprint)
    record = json.dumps(result.to_record(), indent=1) + "\n"
    write_atomically(output / SHARDS_DIR / f"{shard.name}.json", lambda tmp: tmp.write_text(record))
    return result


def write_shard_task(*args: Any) -> ShardResult | ShardError:
    """`write_shard(*args)` as the annotate job runs it, in a Ray task: a `ShardError` comes back as a value, for
    the run summary."""
    try:
        return write_shard(*args)
    except ShardError as exc:
        return exc


def read_shard_records(output: Path) -> dict[str, ShardResult]:
    """The completion records under ``OUT/shards/`` by shard name."""
    records = {}
    for path in sorted((output / SHARDS_DIR).glob("*.json")):
        if not path.name.startswith(TMP_PREFIX):
            result = ShardResult.from_record(json.loads(path.read_text()))
            records[result.name] = result
    return records
