"""The annotation job itself: checks before start, the resume guard (``OUT/run.json``), the run over every pending
shard, and the command line (`main`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.annotate.card import dataset_card_yaml
from pipelines.annotate.settings import AnnotateSettings, ConfigError, load_config
from pipelines.annotate.stages import build_dataset
from pipelines.annotate.summary import Progress, RunSummary
from pipelines.annotate.writing import (
    SHARDS_DIR,
    SUPERSEDED_DIR,
    ShardError,
    ShardResult,
    read_shard_records,
    write_shard_task,
)
from pipelines.engines import Engine, build_engine
from pipelines.engines.fixed import answers_from
from pipelines.ingest import (
    IMAGE_COLUMNS,
    METADATA_ONLY_FORMATS,
    Shard,
    detect_format,
    list_shards,
    plan_dedupe,
)
from pipelines.ingest.planning import limit_rows
from pipelines.tasks import Task, get_task
from schemas.layout import DATA_DIR, SUMMARY_FILE
from schemas.runs import (
    TMP_MARK,
    TMP_PREFIX,
    RunIdentityError,
    check_run_identity,
    init_ray,
    log_progress,
)

__all__ = ["check_before_start", "init_ray", "main", "run"]

logger = logging.getLogger(__name__)

# Shards written at once, each by a Ray task (`write_shard_task`) that holds that shard's rows, image bytes
# included, in memory; the tasks reserve no CPU (the annotation stages hold the cluster's CPUs), so this bounds them.
WRITES_IN_FLIGHT = 2


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
    probe = output / f"{TMP_PREFIX}write-test-{uuid.uuid4().hex}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--output {output} is not writable: {exc.strerror or exc}") from None


def check_before_start(config: AnnotateSettings, task: Task, input_format: str, engine_name: str | None) -> None:
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
    if engine_name == "fixed":
        try:
            answers_from(model, task)
        except ValueError as exc:
            raise ConfigError(f"--model {exc}") from None
    if engine_name == "openai":
        env = config.engine_options.api_key_env
        if env and not os.environ.get(env):
            raise ConfigError(
                f"--engine-options.api-key-env {env}: the environment variable {env} is not set; export it, "
                "or pass --engine-options.api-key-env '' for an endpoint that needs no key"
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


def _is_done(shard: Shard, record: ShardResult | None) -> bool:
    """Whether `record` is the output of `shard` as planned now; for a shard capped by ``--limit``, an output of
    the whole shard (an earlier run without the cap) holds its rows too and is kept."""
    if record is None:
        return False
    return record.fingerprint in {shard.fingerprint, replace(shard, row_limit=None).fingerprint}


def run(config: AnnotateSettings, engine: Engine | None = None) -> RunSummary:
    """Annotate every pending shard of `config.input` and return the run summary (also in ``summary.json``).

    `engine` overrides the configured one (tests and benchmarks pass a `FixedAnswerEngine`); its task is used.
    """
    start = time.perf_counter()
    try:
        input_format = config.input_format or detect_format(config.input)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    task = engine.task if engine is not None else get_task(config.task, config.limits)
    check_before_start(config, task, input_format, None if engine is not None else config.engine)
    output = Path(config.output)
    manifest = config.manifest(task, input_format)
    try:
        check_run_identity(output, manifest)
    except RunIdentityError as exc:
        raise ConfigError(str(exc)) from None
    filters = config.filters
    planning_started, ray_start_seconds = time.perf_counter(), 0.0
    try:
        # Every shard's name (for `_set_aside_superseded`), then the shards of this run: those holding the first
        # `--limit` input rows, the last one capped (`limit_rows`); de-duplication is planned for these only.
        listed = list_shards(
            config.input,
            input_format,
            config.files_per_shard,
            config.rows_per_shard,
            replace(filters, dedupe_urls=False),
        )
        shards = listed if config.limit is None else limit_rows(listed, input_format, config.limit)
        if filters.dedupe_urls:
            if len(shards) > 1:  # the de-duplication pre-pass runs as Ray tasks (`plan_dedupe`)
                ray_started = time.perf_counter()
                init_ray(config.num_cpus, config.dashboard)
                ray_start_seconds = time.perf_counter() - ray_started
            shards = plan_dedupe(shards, input_format, filters)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    planning_seconds = round(time.perf_counter() - planning_started - ray_start_seconds, 3)
    if engine is None:
        engine = build_engine(config.engine, task, config.model, config.engine_options)
    for directory in (DATA_DIR, SHARDS_DIR):
        (output / directory).mkdir(parents=True, exist_ok=True)
        for stale in (output / directory).glob(f"{TMP_PREFIX}*{TMP_MARK}*"):
            stale.unlink()
    records = read_shard_records(output)
    superseded = _set_aside_superseded(output, {s.name for s in listed}, records)
    pending = [s for s in shards if not _is_done(s, records.get(s.name))]
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
        planning_seconds=planning_seconds,
        images=task.needs_image,
    )
    if pending:
        init_ray(config.num_cpus, config.dashboard)
        _annotate(pending, input_format, config, engine, output, summary, start, manifest)
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



def _annotate(
    shards: list[Shard],
    input_format: str,
    config: AnnotateSettings,
    engine: Engine,
    output: Path,
    summary: RunSummary,
    start: float,
    manifest: dict[str, Any],
) -> None:
    """Run the pipeline; as soon as every row of a shard is annotated, a Ray task writes it (on any node, so the
    driver never reads image bytes), at most `WRITES_IN_FLIGHT` at once. The driver keeps only each pending
    shard's annotations (no images) and the write results, which go into `summary` in shard order."""
    import ray

    write = ray.remote(num_cpus=0)(write_shard_task)  # looked up at run time: tests wrap `write_shard_task`
    by_name = {shard.name: shard for shard in shards}
    parts: dict[str, list[pa.Table]] = defaultdict(list)
    in_flight: dict[ray.ObjectRef, str] = {}
    results: dict[str, ShardResult | ShardError] = {}
    unit = "images" if engine.task.needs_image else "rows"

    def submit(name: str) -> None:
        while len(in_flight) >= WRITES_IN_FLIGHT:
            _record_finished_writes(in_flight, results, block=True)
        shard_parts = parts.pop(name, [])
        in_flight[write.remote(by_name[name], shard_parts, input_format, config, engine.task, output, manifest)] = name

    with Progress(shards, unit, config.progress_seconds, start=start) as progress:
        dataset = build_dataset(shards, input_format, config, engine)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            if summary.startup_seconds is None:
                summary.startup_seconds = round(time.perf_counter() - start, 3)
            complete = progress.add(batch)
            for name in pc.unique(batch.column("_shard")).to_pylist():
                parts[name].append(batch.filter(pc.equal(batch.column("_shard"), name)))
            for name in complete:  # every row of the shard has arrived
                submit(name)
            if in_flight:
                _record_finished_writes(in_flight, results, block=False)
        for name in sorted(by_name.keys() - results.keys() - set(in_flight.values())):
            submit(name)  # shards with no rows (all filtered, or unreadable) and any incomplete ones
        while in_flight:
            _record_finished_writes(in_flight, results, block=True)
    for name, result in sorted(results.items()):
        if isinstance(result, ShardError):
            summary.shards_failed[name] = str(result)
        else:
            summary.add(result)


def _record_finished_writes(
    in_flight: dict[Any, str], results: dict[str, ShardResult | ShardError], block: bool
) -> list[str]:
    """Move the finished write tasks of `in_flight` (object ref -> shard name) into `results` by shard name,
    waiting for one when `block`; returns their shard names. A failed shard is logged as it is found."""
    import ray

    wanted = 1 if block else len(in_flight)
    ready, _ = ray.wait(list(in_flight), num_returns=wanted, timeout=None if block else 0)
    names = [in_flight.pop(ref) for ref in ready]
    for name, ref in zip(names, ready, strict=True):
        results[name] = ray.get(ref)
        if isinstance(results[name], ShardError):
            logger.error("%s", results[name])
    return names


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 when every shard was written, 1 when some failed, 2 on a configuration error."""
    log_progress()
    try:
        config = load_config(argv)
        summary = run(config)
    except ConfigError as exc:
        print(f"annotate: {exc}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"summary: {Path(config.output) / SUMMARY_FILE}")
    return 1 if summary.shards_failed else 0
