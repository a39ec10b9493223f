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
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
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
from pipelines.images import MAX_PIXELS, MAX_SIDE, prepare_batch
from pipelines.ingest import (
    INPUT_FORMATS,
    FilterCounts,
    IngestFilters,
    Shard,
    detect_format,
    list_shards,
    read_shard,
)
from pipelines.postprocess import postprocess_batch
from pipelines.tasks import Task, failure_reason, get_task, task_names
from schemas import DEFAULT_LIMITS, IMAGE_TYPE, Limits, row_schema

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
# Rows per block out of the read-and-prepare stage.
BLOCK_ROWS = 64
_TMP_PREFIX = "."
_TMP_MARK = ".parquet.tmp-"
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
        return AnnotateConfig(
            **{k: v for k, v in values.items() if k in _TOP_LEVEL},
            filters=IngestFilters(**(values.get("filters") or {})),
            limits=Limits(**(values.get("limits") or {})),
            engine_options=EngineOptions(**{k: v for k, v in values.items() if k in _ENGINE_KEYS}),
        )
    except TypeError as exc:  # an unknown key inside `filters` or `limits`
        raise ConfigError(str(exc)) from None


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
    add("--limit", type=int, help="annotate only the first N input shards (smoke tests)")
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
    add("--api-key-env", help="openai: environment variable holding the API key (default OPENAI_API_KEY)")
    add("--num-cpus", type=int, help="CPUs of the in-process Ray instance (local runs only)")
    add("--dashboard", action="store_const", const=True, help="start Ray's dashboard (local runs only)")
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
    """What writing one shard produced."""

    name: str
    rows: int
    status: Counter[str]
    failures: Counter[str]
    filters: FilterCounts


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
    columns |= {name: annotations.column(name) for name in ("width", "height", "annotation")}
    columns |= {name: annotations.column(name) for name in task.output_columns}
    if images:
        columns["image"] = _image_column(source)
    arrays = [columns.get(f.name, pa.nulls(source.num_rows, f.type)) for f in schema]
    return pa.Table.from_arrays(
        [pa.chunked_array([a]) if isinstance(a, pa.Array) else a for a in arrays], schema=schema
    )


def write_shard(
    shard: Shard, parts: list[pa.Table], input_format: str, config: AnnotateConfig, task: Task, data_dir: Path
) -> ShardResult:
    """Read the shard again, join its annotations, and write ``data_dir/{shard.name}.parquet`` atomically."""
    try:
        source, counts = read_shard(shard, input_format, config.filters)
    except Exception as exc:
        raise ShardError(f"shard {shard.name} could not be read: {type(exc).__name__}: {exc}") from exc
    if parts:
        annotations = pa.concat_tables(parts)
    else:
        annotations = pa.schema([pa.field("_index", pa.int64()), pa.field("key", pa.string())]).empty_table()
    if source.num_rows == 0 and annotations.num_rows == 0:
        table = output_schema(task, config.images).empty_table()
    else:
        table = output_table(shard, source, annotations, task, config.images)
    tmp = data_dir / f"{_TMP_PREFIX}{shard.name}{_TMP_MARK}{uuid.uuid4().hex}"
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)
    os.replace(tmp, data_dir / f"{shard.name}.parquet")
    statuses = (
        table.column("annotation").combine_chunks().field("status").to_pylist() if table.num_rows else []
    )
    errors = table.column("annotation").combine_chunks().field("error").to_pylist() if table.num_rows else []
    failures = Counter(failure_reason(e) for s, e in zip(statuses, errors, strict=True) if s == "failed")
    return ShardResult(shard.name, table.num_rows, Counter(statuses), failures, counts)


# ---------------------------------------------------------------------------------------------------- summary


@dataclass
class RunSummary:
    """The run summary written to ``OUT/summary.json`` (no secrets: only the *name* of the API-key variable)."""

    task: str
    prompt_version: str
    model: str
    engine: str
    input: str
    input_format: str
    output: str
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_failed: dict[str, str] = field(default_factory=dict)
    rows_in: int = 0
    rows_filtered: dict[str, int] = field(default_factory=dict)
    rows_annotated: int = 0
    ok: int = 0
    repaired: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    startup_seconds: float | None = None
    images_per_second: float = 0.0

    def add(self, result: ShardResult) -> None:
        self.shards_done += 1
        self.rows_in += result.filters.rows_in
        self.rows_filtered = dict(Counter(self.rows_filtered) + Counter(result.filters.removed))
        self.rows_annotated += result.rows
        self.ok += result.status["ok"]
        self.repaired += result.status["repaired"]
        self.failed += result.status["failed"]
        self.failed_by_reason = dict(Counter(self.failed_by_reason) + result.failures)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        filtered = sum(self.rows_filtered.values())
        lines = [
            f"annotate: task={self.task} ({self.prompt_version}) engine={self.engine} model={self.model}",
            f"  shards: {self.shards_total} total, {self.shards_done} written, {self.shards_skipped} already done, "
            f"{len(self.shards_failed)} failed",
            f"  rows: {self.rows_in} in, {filtered} filtered {self.rows_filtered or ''}".rstrip(),
            f"  annotated: {self.rows_annotated} = {self.ok} ok + {self.repaired} repaired + {self.failed} failed",
        ]
        lines += [f"    failed: {reason}: {n}" for reason, n in sorted(self.failed_by_reason.items())]
        lines += [f"  shard failed: {name}: {reason}" for name, reason in sorted(self.shards_failed.items())]
        startup = (
            "" if self.startup_seconds is None else f" ({self.startup_seconds:.1f} s until the first result)"
        )
        lines.append(f"  {self.images_per_second:.2f} images/s, {self.wall_seconds:.1f} s wall{startup}")
        return "\n".join(lines)


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


def _check_manifest(output: Path, manifest: dict[str, Any]) -> None:
    path = output / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in manifest.keys() | previous.keys() if manifest.get(k) != previous.get(k))
        if changed:
            raise ConfigError(
                f"{output} holds the output of a run with different settings ({', '.join(changed)}); "
                "use a new --output directory, or the same settings to resume"
            )
    else:
        path.write_text(json.dumps(manifest, indent=2) + "\n")


def run(config: AnnotateConfig, engine: Engine | None = None) -> RunSummary:
    """Annotate every pending shard of `config.input` and return the run summary (also in ``summary.json``).

    `engine` overrides the configured one (tests and benchmarks pass a `FixedAnswerEngine`); its task is used.
    """
    start = time.perf_counter()
    try:
        input_format = config.input_format or detect_format(config.input)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if engine is None:
        task = get_task(config.task, config.limits)
        engine = build_engine(config.engine, task, config.model, config.engine_options)
    task = engine.task
    output = Path(config.output)
    data_dir = output / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(output, config.manifest(task, input_format))
    for stale in data_dir.glob(f"{_TMP_PREFIX}*{_TMP_MARK}*"):
        stale.unlink()

    shards = list_shards(
        config.input, input_format, config.files_per_shard, config.rows_per_shard, config.filters
    )
    if config.limit is not None:
        shards = shards[: config.limit]
    pending = [s for s in shards if not (data_dir / f"{s.name}.parquet").exists()]
    summary = RunSummary(
        task=task.name,
        prompt_version=task.prompt_version,
        model=engine.model,
        engine=engine.name,
        input=config.input,
        input_format=input_format,
        output=str(output),
        shards_total=len(shards),
        shards_skipped=len(shards) - len(pending),
    )
    if pending:
        init_ray(config.num_cpus, config.dashboard)
        _annotate(pending, input_format, config, engine, data_dir, summary, start)
    summary.wall_seconds = round(time.perf_counter() - start, 3)
    summary.images_per_second = (
        round(summary.rows_annotated / summary.wall_seconds, 3) if summary.wall_seconds else 0.0
    )
    (output / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _annotate(
    shards: list[Shard],
    input_format: str,
    config: AnnotateConfig,
    engine: Engine,
    data_dir: Path,
    summary: RunSummary,
    start: float,
) -> None:
    """Run the pipeline and write each shard as soon as all its rows are annotated."""
    by_name = {shard.name: shard for shard in shards}
    parts: dict[str, list[pa.Table]] = defaultdict(list)
    arrived: Counter[str] = Counter()
    futures: dict[str, Future[ShardResult]] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard-writer") as writers:

        def submit(name: str) -> None:
            futures[name] = writers.submit(
                write_shard, by_name[name], parts.pop(name, []), input_format, config, engine.task, data_dir
            )

        dataset = build_dataset(shards, input_format, config, engine)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            if summary.startup_seconds is None:
                summary.startup_seconds = round(time.perf_counter() - start, 3)
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
    print(f"summary: {Path(config.output) / 'summary.json'}")
    return 1 if summary.shards_failed else 0


if __name__ == "__main__":
    sys.exit(main())
