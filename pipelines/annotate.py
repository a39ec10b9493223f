"""The annotation job: input shards -> VLM (hf | vllm | openai) -> validated scene graphs -> Parquet shards.

    python -m pipelines.annotate --input DIR --output OUT --task scene_graph --engine hf --model MODEL
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.annotate ...

Stages (Ray Data, streaming): read each pending shard (`pipelines.ingest.read_shard`) -> decode and bound every
image on CPU (`pipelines.images.prepare_batch`) -> the engine -> parse, validate or repair
(`pipelines.postprocess`). The driver collects the small per-row results and, as soon as every row of a shard has
arrived, writes ``OUT/data/{shard}.parquet``: it reads the shard again for the original columns and image bytes,
joins the annotations by row position, writes a hidden temporary file and renames it into place. Original image
bytes thus never go through the engine or the postprocess stage.

Resume: a shard whose output file exists is skipped, and a file only ever appears complete (atomic rename), so a
killed run loses at most the shards in flight and a re-run neither duplicates nor drops a row. This is more robust
here than Ray Data's job-level checkpointing (``DataContext.checkpoint_config``), which filters rows by id at
the read of a Ray datasource: it needs cluster-shared checkpoint storage separate from the output, and a row can
be written to the output without being checkpointed (or the reverse) when a run dies between the two. The
output directory also holds ``run.json``, the settings that decide what a row contains (input, sharding, filters,
task, prompt version, limits, model, images); a re-run with different settings is refused instead of mixing.

Every input row that passes the ingest filters comes out exactly once with a status (ok | repaired | failed and
why); filtered rows are counted by reason in ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.engines import ENGINES, Engine, EngineOptions, build_engine
from pipelines.engines.base import ROW_POSITION_FIELDS
from pipelines.engines.http_session import mask_secrets
from pipelines.images import MAX_PIXELS, MAX_SIDE, prepare_batch
from pipelines.ingest import (
    IMAGE_COLUMNS,
    INPUT_FORMATS,
    METADATA_ONLY_FORMATS,
    FilterCounts,
    IngestFilters,
    Shard,
    detect_format,
    list_shards,
    read_shard,
)
from pipelines.postprocess import postprocess_batch
from pipelines.tasks import Task, failure_reason, get_task, task_names
from schemas import DEFAULT_LIMITS, IMAGE_TYPE, UPSTREAM_FIELDS, Limits, row_schema

__all__ = [
    "AnnotateConfig",
    "ConfigError",
    "RunSummary",
    "ShardError",
    "ShardResult",
    "build_dataset",
    "config_from_mapping",
    "init_ray",
    "load_config",
    "main",
    "output_schema",
    "output_table",
    "run",
    "write_shard",
]

logger = logging.getLogger(__name__)

ROW_GROUP_SIZE = 256
# The output directory: data files, per-shard completion records, set-aside outputs, settings and summary.
DATA_DIR = "data"
SHARDS_DIR = "shards"
SUPERSEDED_DIR = "superseded"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
# Bound of an error text that quotes an exception.
_ERROR_CHARS = 2000
# Rows per block out of the read-and-prepare stage.
BLOCK_ROWS = 64
_TMP_PREFIX = "."
_TMP_MARK = ".tmp-"
# Columns of the read stage: what the later stages need of a row (image bytes only until they are prepared).
_READ_FIELDS = (
    *ROW_POSITION_FIELDS,
    pa.field("key", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image_bytes", pa.binary()),
)


# ---------------------------------------------------------------------------------------------------- config


class ConfigError(ValueError):
    """The settings are incomplete or inconsistent (unknown keys, missing input, a different earlier run)."""


@dataclass
class AnnotateConfig:
    """Everything a run needs. YAML configs use the same keys (engine options at the top level, `filters`,
    `limits` and `engine_kwargs` as mappings); command-line flags override them."""

    input: str
    output: str
    model: str
    task: str = "scene_graph"
    engine: str = "hf"
    input_format: str | None = None
    images: bool = True
    limit: int | None = None
    files_per_shard: int = 256
    rows_per_shard: int = 10_000
    max_side: int = MAX_SIDE
    max_pixels: int = MAX_PIXELS
    num_cpus: int | None = None
    dashboard: bool = False
    # seconds between progress lines (logged, so they show on a terminal and in a job's log alike); 0: none
    progress_seconds: float = 10.0
    filters: IngestFilters = field(default_factory=IngestFilters)
    limits: Limits = DEFAULT_LIMITS
    engine_options: EngineOptions = field(default_factory=EngineOptions)

    def manifest(self, task: Task, input_format: str) -> dict[str, Any]:
        """The settings that decide what an output row contains (compared on resume)."""
        return {
            "input": str(Path(self.input).resolve()),
            "input_format": input_format,
            "files_per_shard": self.files_per_shard,
            "rows_per_shard": self.rows_per_shard,
            "filters": asdict(self.filters),
            "task": task.name,
            "prompt_version": task.prompt_version,
            "limits": asdict(self.limits),
            "model": self.model,
            "images": self.images,
            "max_side": self.max_side,
            "max_pixels": self.max_pixels,
        }


_TOP_LEVEL = {f.name for f in fields(AnnotateConfig)} - {"filters", "limits", "engine_options"}
_LIMIT_FLAGS = ("max_objects", "max_relations", "max_attributes")
_ENGINE_KEYS = {f.name for f in fields(EngineOptions)}


def config_from_mapping(values: dict[str, Any]) -> AnnotateConfig:
    """An `AnnotateConfig` from a flat mapping (a YAML file merged with command-line flags)."""
    unknown = sorted(set(values) - _TOP_LEVEL - _ENGINE_KEYS - {"filters", "limits"})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    missing = sorted(k for k in ("input", "output", "model") if not values.get(k))
    if missing:
        raise ConfigError(f"missing required settings: {', '.join(missing)}")
    try:
        config = AnnotateConfig(
            **{k: v for k, v in values.items() if k in _TOP_LEVEL},
            filters=IngestFilters(**(values.get("filters") or {})),
            limits=Limits(**(values.get("limits") or {})),
            engine_options=EngineOptions(**{k: v for k, v in values.items() if k in _ENGINE_KEYS}),
        )
    except TypeError as exc:  # an unknown key inside `filters` or `limits`
        raise ConfigError(str(exc)) from None
    check_numbers(config)
    return config


# (section, setting, smallest allowed value or None, whether the value must be above it rather than at least it)
_NUMERIC_SETTINGS: tuple[tuple[str, str, float, bool], ...] = (
    ("", "limit", 1, False),
    ("", "files_per_shard", 1, False),
    ("", "rows_per_shard", 1, False),
    ("", "max_side", 1, False),
    ("", "max_pixels", 1, False),
    ("", "num_cpus", 1, False),
    ("", "progress_seconds", 0, False),
    ("engine_options", "batch_size", 1, False),
    ("engine_options", "num_actors", 1, False),
    ("engine_options", "max_new_tokens", 1, False),
    ("engine_options", "max_model_len", 1, False),
    ("engine_options", "cpus_per_actor", 0, True),
    ("engine_options", "gpus_per_actor", 0, False),
    ("engine_options", "max_retries", 0, False),
    ("engine_options", "retry_wait", 0, False),
    ("engine_options", "request_timeout", 0, True),
    ("engine_options", "qps", 0, True),
    ("limits", "max_objects", 1, False),
    ("limits", "max_relations", 0, False),
    ("limits", "max_attributes", 0, False),
)


def check_numbers(config: AnnotateConfig) -> None:
    """Raise `ConfigError` naming the flag of the first number setting out of its range (None means unset)."""
    for section, name, bound, strict in _NUMERIC_SETTINGS:
        value = getattr(getattr(config, section) if section else config, name)
        if value is None:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{flag} must be a number, got {value!r:.40}")
        if value < bound or (strict and value == bound):
            relation = ">" if strict else ">="
            raise ConfigError(f"{flag} must be {relation} {bound:g}, got {value:g}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.annotate",
        description="Annotate images with scene graphs (or another task) and write Parquet shards.",
    )
    add = parser.add_argument
    add("--config", help="YAML file with any of the settings below (flags override it)")
    add("--input", help="folder of images, webdataset tars, img2dataset or LAION Parquet")
    add("--output", help="output directory (data/*.parquet, summary.json, run.json)")
    add("--task", choices=task_names(), help="annotation task (default scene_graph)")
    add("--engine", choices=sorted(ENGINES), help="hf (transformers), vllm (ray.data.llm) or openai (HTTP)")
    add("--model", help="hub id or local directory (hf, vllm); model name sent to the endpoint (openai)")
    add("--input-format", choices=INPUT_FORMATS, help="default: detected from the input")
    add("--no-images", dest="images", action="store_const", const=False, help="leave the image bytes out")
    add("--limit", type=int, help="annotate only the first N input shards (smoke tests; N >= 1)")
    add("--files-per-shard", type=int, help="images per shard of a folder input (default 256)")
    add("--rows-per-shard", type=int, help="rows per shard of a Parquet input (default 10000)")
    add("--batch-size", type=int, help="rows per model call (hf) or per Ray Data batch")
    add("--num-actors", type=int, help="model replicas (hf actors, vLLM engines) or HTTP workers")
    add("--max-new-tokens", type=int, help="token bound of every answer")
    for name in _LIMIT_FLAGS:
        add(
            f"--{name.replace('_', '-')}",
            type=int,
            help=f"graph limit {name} (default {getattr(DEFAULT_LIMITS, name)})",
        )
    add("--cpus-per-actor", type=float)
    add("--gpus-per-actor", type=float)
    add("--device", help="hf: torch device (default cuda if available)")
    add("--dtype", help="hf/vllm: auto, float32, bfloat16, float16")
    add("--max-model-len", type=int, help="vllm: context length")
    add("--trust-remote-code", action="store_const", const=True, help="allow model code from the hub")
    add("--base-url", help="openai: endpoint base URL, e.g. http://host:8000/v1")
    add(
        "--api-key-env",
        help="openai: environment variable holding the API key (default OPENAI_API_KEY; '' sends no key)",
    )
    add("--max-retries", type=int, help="openai: further tries of a failed request (default 3)")
    add("--retry-wait", type=float, help="openai: first wait between tries in seconds, doubling (default 1)")
    add("--request-timeout", type=float, help="openai: seconds before a request is given up (default 120)")
    add("--qps", type=int, help="openai: requests per second per worker (default unbounded)")
    add("--num-cpus", type=int, help="CPUs of the in-process Ray instance (local runs only)")
    add("--dashboard", action="store_const", const=True, help="start Ray's dashboard (local runs only)")
    add(
        "--progress-seconds",
        type=float,
        help="seconds between progress lines on stderr: rows done, rate, ETA, failures (default 10; 0: none)",
    )
    return parser


def load_config(argv: list[str] | None = None) -> AnnotateConfig:
    """Parse the command line (and the YAML file it names) into an `AnnotateConfig`."""
    args = vars(_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if config_path := args.pop("config"):
        import yaml

        try:
            values = yaml.safe_load(Path(config_path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the config {config_path}: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{config_path}: expected a mapping of settings")
    limits = {name: args.pop(name) for name in _LIMIT_FLAGS if args.get(name) is not None}
    values |= {k: v for k, v in args.items() if v is not None}
    if limits:
        values["limits"] = {**(values.get("limits") or {}), **limits}
    return config_from_mapping(values)


# ---------------------------------------------------------------------------------------------------- stages


def _prepare(batch: pa.Table, task: Task, max_side: int, max_pixels: int) -> pa.Table:
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
        yield _prepare(table.slice(start, BLOCK_ROWS), task, max_side, max_pixels)


class ShardDatasource(Datasource):
    """One read task per shard: it reads the shard and decodes and bounds its images (the CPU stage).

    Shards are never bundled into one task, and decoding runs in as many parallel tasks as there are CPUs,
    apart from the model's actors.
    """

    def __init__(self, shards: list[Shard], input_format: str, config: AnnotateConfig, task: Task):
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
    shards: list[Shard], input_format: str, config: AnnotateConfig, engine: Engine
) -> ray.data.Dataset:
    """The streaming pipeline over `shards`: read and prepare -> engine -> postprocess."""
    source = ShardDatasource(shards, input_format, config, engine.task)
    ds = engine.run(ray.data.read_datasource(source, override_num_blocks=len(shards)))
    return ds.map_batches(
        postprocess_batch,
        fn_kwargs={"task": engine.task, "model": engine.model, "engine": engine.name},
        batch_format="pyarrow",
    )


# ---------------------------------------------------------------------------------------------------- writing


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


def _image_column(source: pa.Table) -> pa.StructArray:
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


def output_table(shard: Shard, source: pa.Table, annotations: pa.Table, task: Task, images: bool) -> pa.Table:
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
        columns["image"] = _image_column(source)
    arrays = [columns.get(f.name, pa.nulls(source.num_rows, f.type)) for f in schema]
    return pa.Table.from_arrays(
        [pa.chunked_array([a]) if isinstance(a, pa.Array) else a for a in arrays], schema=schema
    )


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a hidden temporary file beside `path`, then rename it into place: `path` only ever appears whole."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}{_TMP_MARK}{uuid.uuid4().hex}")
    write(tmp)
    os.replace(tmp, path)


def write_shard(
    shard: Shard,
    parts: list[pa.Table],
    input_format: str,
    config: AnnotateConfig,
    task: Task,
    output: Path,
    before_publish: Callable[[], None] | None = None,
) -> ShardResult:
    """Read the shard again, join its annotations, write ``OUT/data/{shard.name}.parquet`` (only when the shard has
    rows: `datasets` cannot read a 0-row file), then its completion record ``OUT/shards/{shard.name}.json``.

    Both appear atomically, the record last: a shard without its record is pending, and a re-run rewrites its
    data file in place. `before_publish` runs once before anything appears (it pins the run's settings).
    """
    try:
        source, counts = read_shard(shard, input_format, config.filters)
    except Exception as exc:
        message = mask_secrets(f"{type(exc).__name__}: {exc}")[:_ERROR_CHARS]
        raise ShardError(f"shard {shard.name} could not be read ({shard.path}): {message}") from exc
    if parts:
        annotations = pa.concat_tables(parts)
    else:
        annotations = pa.schema([pa.field("_index", pa.int64()), pa.field("key", pa.string())]).empty_table()
    if source.num_rows == 0 and annotations.num_rows == 0:
        table = output_schema(task, config.images).empty_table()
    else:
        table = output_table(shard, source, annotations, task, config.images)
    if before_publish is not None:
        before_publish()
    data_file = output / DATA_DIR / f"{shard.name}.parquet"
    if table.num_rows:
        _write_atomically(data_file, lambda tmp: pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE))
    else:
        data_file.unlink(missing_ok=True)
    annotation = table.column("annotation").combine_chunks()
    statuses = annotation.field("status").to_pylist() if table.num_rows else []
    errors = annotation.field("error").to_pylist() if table.num_rows else []
    failures = Counter(failure_reason(e) for s, e in zip(statuses, errors, strict=True) if s == "failed")
    result = ShardResult(shard.name, table.num_rows, Counter(statuses), failures, counts, shard.fingerprint)
    record = json.dumps(result.to_record(), indent=1) + "\n"
    _write_atomically(output / SHARDS_DIR / f"{shard.name}.json", lambda tmp: tmp.write_text(record))
    return result


def read_shard_records(output: Path) -> dict[str, ShardResult]:
    """The completion records under ``OUT/shards/`` by shard name."""
    records = {}
    for path in sorted((output / SHARDS_DIR).glob("*.json")):
        if not path.name.startswith(_TMP_PREFIX):
            result = ShardResult.from_record(json.loads(path.read_text()))
            records[result.name] = result
    return records


# ---------------------------------------------------------------------------------------------------- summary


@dataclass
class OutputTotals:
    """Counts over every finished shard of the output (all runs so far), not only this run's."""

    shards_done: int = 0
    rows_in: int = 0
    rows_filtered: dict[str, int] = field(default_factory=dict)
    rows_annotated: int = 0
    ok: int = 0
    repaired: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, result: ShardResult) -> None:
        self.shards_done += 1
        self.rows_in += result.filters.rows_in
        self.rows_filtered = dict(Counter(self.rows_filtered) + Counter(result.filters.removed))
        self.rows_annotated += result.rows
        self.ok += result.status["ok"]
        self.repaired += result.status["repaired"]
        self.failed += result.status["failed"]
        self.failed_by_reason = dict(Counter(self.failed_by_reason) + result.failures)

    def lines(self) -> list[str]:
        filtered = sum(self.rows_filtered.values())
        lines = [
            f"rows: {self.rows_in} in, {filtered} filtered {self.rows_filtered or ''}".rstrip(),
            f"annotated: {self.rows_annotated} = {self.ok} ok + {self.repaired} repaired + {self.failed} failed",
        ]
        return lines + [f"  failed: {reason}: {n}" for reason, n in sorted(self.failed_by_reason.items())]


@dataclass
class RunSummary(OutputTotals):
    """The run summary written to ``OUT/summary.json``: this run's own figures at the top level, and in `output`
    the totals over the whole output directory (what a re-run that had nothing left to do still reports).
    No secrets: not even the name of the API-key variable."""

    task: str = ""
    prompt_version: str = ""
    model: str = ""
    engine: str = ""
    input: str = ""
    input_format: str = ""
    output_dir: str = ""
    shards_total: int = 0
    shards_skipped: int = 0
    shards_superseded: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    startup_seconds: float | None = None
    rows_per_second: float = 0.0
    images: bool = True
    output: OutputTotals = field(default_factory=OutputTotals)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        unit = "images/s" if self.images else "rows/s"
        lines = [
            f"annotate: task={self.task} ({self.prompt_version}) engine={self.engine} model={self.model}",
            f"  shards: {self.shards_total} total, {self.shards_done} written, {self.shards_skipped} already done, "
            f"{len(self.shards_failed)} failed"
            + (f", {len(self.shards_superseded)} superseded" if self.shards_superseded else ""),
            *(f"  this run: {line}" for line in OutputTotals.lines(self)),
            *(f"  whole output: {line}" for line in self.output.lines()),
        ]
        lines += [f"  shard failed: {name}: {reason}" for name, reason in sorted(self.shards_failed.items())]
        startup = (
            "" if self.startup_seconds is None else f" ({self.startup_seconds:.1f} s until the first result)"
        )
        lines.append(f"  {self.rows_per_second:.2f} {unit}, {self.wall_seconds:.1f} s wall{startup}")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """The progress of a run, logged (``INFO`` on this module's logger, which `main` sends to stderr) every
    `interval` seconds by a background thread, so that it shows while the model loads and whether or not stdout
    is a terminal, and once more by `finish`. A line: rows done of the expected total, the rate, the ETA, the
    failed rows so far and the finished shards.

    The expected total is exact for the shards whose rows have started to arrive (every row carries its shard's
    row count); a shard not seen yet counts as its planned size (the files of a folder chunk, the row range of a
    Parquet slice), else as the mean of the shards seen. `unit` is ``images`` or ``rows`` (text-only tasks).
    """

    def __init__(
        self,
        shards: list[Shard],
        unit: str,
        interval: float,
        clock: Callable[[], float] = time.perf_counter,
        start: float | None = None,
    ):
        self.unit, self.interval, self.clock = unit, interval, clock
        self.start = clock() if start is None else start
        self.planned = {shard.name: self._planned_rows(shard) for shard in shards}
        self.shard_rows: dict[str, int] = {}
        self.arrived: Counter[str] = Counter()
        self.rows = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _planned_rows(shard: Shard) -> int | None:
        if shard.files:
            return len(shard.files)
        if shard.row_stop is not None:
            return shard.row_stop - shard.row_start
        return None

    def add(self, batch: pa.Table) -> None:
        """Count one batch of postprocessed rows (with ``_shard``, ``_shard_rows`` and ``annotation``)."""
        status = pc.struct_field(batch.column("annotation"), "status")
        failed = pc.sum(pc.equal(status, "failed")).as_py() or 0
        names = batch.column("_shard").to_pylist()
        sizes = batch.column("_shard_rows").to_pylist()
        with self._lock:
            self.rows += batch.num_rows
            self.failed += failed
            for name, size in zip(names, sizes, strict=True):
                self.arrived[name] += 1
                self.shard_rows[name] = size

    def expected_rows(self) -> int | None:
        """The expected number of rows of the run (None while nothing tells)."""
        with self._lock:
            known = dict(self.shard_rows)
        unseen = [self.planned[name] for name in self.planned if name not in known]
        guess = sum(known.values()) / len(known) if known else None
        if any(size is None for size in unseen) and guess is None:
            return None
        return sum(known.values()) + round(sum(guess if size is None else size for size in unseen))

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        expected = self.expected_rows()
        with self._lock:
            rows, failed = self.rows, self.failed
            done = sum(1 for name, n in self.arrived.items() if n >= self.shard_rows[name])
        rate = rows / elapsed
        if expected is None:
            of, eta = " rows", "?"
        else:
            expected = max(expected, rows)
            of = f" of ~{expected} rows ({100 * rows / expected if expected else 100:.0f}%)"
            eta = _duration((expected - rows) / rate) if rate else "?"
        return (
            f"progress: {rows}{of}, {rate:.2f} {self.unit}/s, ETA {eta}, {failed} failed so far, "
            f"{done} of {len(self.planned)} shards complete, {_duration(elapsed)} elapsed"
        )

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            logger.info("%s", self.line())

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._tick, name="annotate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.finish()

    def finish(self) -> None:
        logger.info("%s", self.line().replace("progress:", "progress (done):", 1))


# ---------------------------------------------------------------------------------------------------- run


def init_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Start or join Ray unless already initialised: join the cluster named by ``RAY_ADDRESS`` (``ray job submit``
    sets it), else start a private in-process instance (``address="local"``, never an unrelated local cluster),
    with the dashboard only if asked for (it doubles the start-up time of a small local run)."""
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard)


class _SettingsPin:
    """Writes ``OUT/run.json`` just before the first shard of a run appears (once, from any writer thread), so
    that a run that fails before writing anything (a wrong model path, say) never pins its settings."""

    def __init__(self, output: Path, manifest: dict[str, Any]):
        self.path = output / RUN_FILE
        self.manifest = manifest
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if not self.path.exists():
                text = json.dumps(self.manifest, indent=2) + "\n"
                _write_atomically(self.path, lambda tmp: tmp.write_text(text))


def _check_manifest(output: Path, manifest: dict[str, Any]) -> None:
    path = output / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in manifest.keys() | previous.keys() if manifest.get(k) != previous.get(k))
        if changed:
            raise ConfigError(
                f"{output} holds the output of a run with different settings ({', '.join(changed)}); "
                "use a new --output directory, or the same settings to resume"
            )


def _looks_like_local_path(model: str) -> bool:
    """A model string meant as a directory: absolute, ``./``/``../``/``~``, or a relative path whose first part
    exists here (a hub id is ``org/name``)."""
    if model.startswith(("/", "./", "../", "~", ".\\")) or model.count("/") > 1:
        return True
    first = model.split("/", 1)[0]
    return "/" in model and Path(first).is_dir()


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a directory")
    probe = output / f"{_TMP_PREFIX}write-test-{uuid.uuid4().hex}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--output {output} is not writable: {exc.strerror or exc}") from None


def check_before_start(config: AnnotateConfig, task: Task, input_format: str, engine_name: str | None) -> None:
    """What can be checked before Ray starts and a model loads; raises `ConfigError` naming the flag or path.

    `engine_name` is None when the caller brings its own engine.
    """
    _check_output(Path(config.output))
    if task.needs_image and input_format in METADATA_ONLY_FORMATS:
        raise ConfigError(
            f"task {task.name} needs images, but --input {config.input} is {input_format} "
            f"(metadata only: no image column {'/'.join(IMAGE_COLUMNS)}); download the images with img2dataset "
            "first (docs/img2dataset.md), or choose a text task such as text_to_graph"
        )
    model = config.model
    if engine_name in ("hf", "vllm") and _looks_like_local_path(model) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"--model {model}: no such directory (and not a hub id of the form org/name)")
    if engine_name == "openai":
        env = config.engine_options.api_key_env
        if env and not os.environ.get(env):
            raise ConfigError(
                f"--api-key-env {env}: the environment variable {env} is not set; export it, or pass "
                "--api-key-env '' for an endpoint that needs no key"
            )


def _set_aside_superseded(output: Path, planned: set[str], records: dict[str, ShardResult]) -> list[str]:
    """Move the outputs of shards the input no longer has (files removed, a folder re-chunked) to
    ``OUT/superseded/``, so that the output never holds a row twice; returns their names."""
    gone = sorted(set(records) - planned)
    if gone:
        target = output / SUPERSEDED_DIR / time.strftime("%Y%m%dT%H%M%S")
        target.mkdir(parents=True, exist_ok=True)
        for name in gone:
            for path in (output / DATA_DIR / f"{name}.parquet", output / SHARDS_DIR / f"{name}.json"):
                if path.exists():
                    os.replace(path, target / path.name)
        logger.warning("moved the outputs of %d shards no longer in the input to %s", len(gone), target)
    return gone


def run(config: AnnotateConfig, engine: Engine | None = None) -> RunSummary:
    """Annotate every pending shard of `config.input` and return the run summary (also in ``summary.json``).

    `engine` overrides the configured one (tests and benchmarks pass a `FixedAnswerEngine`); its task is used.
    """
    start = time.perf_counter()
    check_numbers(config)
    try:
        input_format = config.input_format or detect_format(config.input)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    task = engine.task if engine is not None else get_task(config.task, config.limits)
    check_before_start(config, task, input_format, None if engine is not None else config.engine)
    output = Path(config.output)
    manifest = config.manifest(task, input_format)
    _check_manifest(output, manifest)
    try:
        shards = list_shards(
            config.input, input_format, config.files_per_shard, config.rows_per_shard, config.filters
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if engine is None:
        engine = build_engine(config.engine, task, config.model, config.engine_options)
    for directory in (DATA_DIR, SHARDS_DIR):
        (output / directory).mkdir(parents=True, exist_ok=True)
        for stale in (output / directory).glob(f"{_TMP_PREFIX}*{_TMP_MARK}*"):
            stale.unlink()
    records = read_shard_records(output)
    superseded = _set_aside_superseded(output, {s.name for s in shards}, records)
    if config.limit is not None:
        shards = shards[: config.limit]
    pending = [s for s in shards if getattr(records.get(s.name), "fingerprint", None) != s.fingerprint]
    summary = RunSummary(
        task=task.name,
        prompt_version=task.prompt_version,
        model=engine.model,
        engine=engine.name,
        input=config.input,
        input_format=input_format,
        output_dir=str(output),
        shards_total=len(shards),
        shards_skipped=len(shards) - len(pending),
        shards_superseded=superseded,
        images=task.needs_image,
    )
    if pending:
        init_ray(config.num_cpus, config.dashboard)
        _annotate(pending, input_format, config, engine, output, summary, start, _SettingsPin(output, manifest))
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.rows_per_second = (
        round(summary.rows_annotated / summary.wall_seconds, 3) if summary.wall_seconds else 0.0
    )
    records = read_shard_records(output)
    for shard in shards:
        if shard.name in records:
            summary.output.add(records[shard.name])
    if summary.output.rows_annotated:
        (output / "README.md").write_text(dataset_card_yaml(task, list(records.values())))
    (output / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def dataset_card_yaml(task: Task, records: list[ShardResult]) -> str:
    """A minimal dataset card whose YAML points `datasets.load_dataset(OUT)` at ``data/*.parquet`` (and not at the
    JSON files beside it).

    The config name carries a digest of the finished shards: `datasets` keys its cache by the folder's name and
    the card's config, so two outputs both called ``out`` (or one output that grew) would otherwise share a
    stale cache entry.
    """
    digest = hashlib.sha1()
    for record in sorted(records, key=lambda r: r.name):
        digest.update(f"{record.name}:{record.fingerprint}:{record.rows};".encode())
    return (
        f"---\nconfigs:\n- config_name: annotations-{digest.hexdigest()[:12]}\n  default: true\n"
        f"  data_files:\n  - split: train\n    path: {DATA_DIR}/*.parquet\n---\n\n"
        f"# Annotation output ({task.name}, prompt {task.prompt_version})\n\n"
        f"Rows in `{DATA_DIR}/`, one file per input shard; `{SHARDS_DIR}/` holds each shard's completion record, "
        f"`{RUN_FILE}` the settings and `{SUMMARY_FILE}` the counts. `python -m pipelines.export` turns this into "
        "the dataset with splits and a full card.\n"
    )


def _annotate(
    shards: list[Shard],
    input_format: str,
    config: AnnotateConfig,
    engine: Engine,
    output: Path,
    summary: RunSummary,
    start: float,
    before_publish: Callable[[], None],
) -> None:
    """Run the pipeline and write each shard as soon as all its rows are annotated."""
    by_name = {shard.name: shard for shard in shards}
    parts: dict[str, list[pa.Table]] = defaultdict(list)
    arrived: Counter[str] = Counter()
    futures: dict[str, Future[ShardResult]] = {}
    unit = "images" if engine.task.needs_image else "rows"
    progress = Progress(shards, unit, config.progress_seconds, start=start)
    with progress, ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard-writer") as writers:

        def submit(name: str) -> None:
            futures[name] = writers.submit(
                write_shard,
                by_name[name],
                parts.pop(name, []),
                input_format,
                config,
                engine.task,
                output,
                before_publish,
            )

        dataset = build_dataset(shards, input_format, config, engine)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            if summary.startup_seconds is None:
                summary.startup_seconds = round(time.perf_counter() - start, 3)
            progress.add(batch)
            for name in pc.unique(batch.column("_shard")).to_pylist():
                part = batch.filter(pc.equal(batch.column("_shard"), name))
                parts[name].append(part)
                arrived[name] += part.num_rows
                if arrived[name] == part.column("_shard_rows")[0].as_py():
                    submit(name)
        for name in by_name.keys() - futures.keys():
            submit(name)  # shards with no rows (all filtered, or unreadable) and any incomplete ones
        for name, future in sorted(futures.items()):
            try:
                summary.add(future.result())
            except ShardError as exc:
                summary.shards_failed[name] = str(exc)
                logger.error("%s", exc)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 when every shard was written, 1 when some failed, 2 on a configuration error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(argv)
        summary = run(config)
    except ConfigError as exc:
        print(f"annotate: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"summary: {Path(config.output) / SUMMARY_FILE}")
    return 1 if summary.shards_failed else 0


if __name__ == "__main__":
    sys.exit(main())
