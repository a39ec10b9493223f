"""Engine output -> annotation columns: parse with the task, validate or repair, record how it went.

Every row leaves with an `annotation` struct (`schemas.annotation_record`) whose status is ok, repaired or
failed; a failed row names its reason (the image decode error, the engine error, or the parse error), a repaired
row lists the repairs. Rows that never reached the model (``skip_reason``) fail with that reason. No image bytes
enter or leave this stage.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.answers import Parsed
from pipelines.engines.base import PASSTHROUGH_FIELDS
from pipelines.tasks import Task
from schemas import ANNOTATION_TYPE, annotation_record

__all__ = [
    "KEEP_COLUMNS",
    "MAX_ERROR_CHARS",
    "MAX_RAW_OUTPUT_CHARS",
    "annotate_row",
    "bound_text",
    "postprocess_batch",
    "postprocess_schema",
]

# What a row stores of the model's answer and of its error text, at most: a runaway or hostile answer
# (megabytes of text, ten thousand objects) must not blow up a shard. The row's error says when it was cut.
MAX_RAW_OUTPUT_CHARS = 32_768
MAX_ERROR_CHARS = 2_000

# Engine output columns kept for writing the shard files: the row bookkeeping, without the skip reason
# (which becomes the annotation's error).
KEEP_COLUMNS: tuple[pa.Field, ...] = tuple(f for f in PASSTHROUGH_FIELDS if f.name != "skip_reason")


def postprocess_schema(task: Task) -> pa.Schema:
    """The columns `postprocess_batch` returns for `task`."""
    fields = [*KEEP_COLUMNS, pa.field("annotation", ANNOTATION_TYPE)]
    fields += [pa.field(name, dtype) for name, dtype in task.output_columns.items()]
    return pa.schema(fields)


def annotate_row(task: Task, row: dict[str, Any]) -> Parsed:
    """The parsed value, status and error of one engine output row."""
    if row["skip_reason"] is not None:
        return Parsed(None, "failed", row["skip_reason"])
    if row["engine_error"] is not None:
        return Parsed(None, "failed", row["engine_error"])
    parsed = task.parse(row["raw_output"])
    if parsed.status == "failed" and row["truncated"]:
        return Parsed(None, "failed", f"truncated output: the answer hit the token limit; {parsed.error}")
    return parsed


def bound_text(text: str | None, limit: int) -> tuple[str | None, bool]:
    """`text` cut to `limit` characters, and whether it was cut."""
    if text is None or len(text) <= limit:
        return text, False
    return text[:limit], True


def postprocess_batch(batch: pa.Table, task: Task, model: str, engine: str) -> pa.Table:
    """Engine output rows (`pipelines.engines.base.ENGINE_OUTPUT_SCHEMA`) -> `postprocess_schema(task)` rows."""
    schema = postprocess_schema(task)
    columns: dict[str, list[Any]] = {f.name: batch.column(f.name).to_pylist() for f in KEEP_COLUMNS}
    columns["annotation"] = []
    for name in task.output_columns:
        columns[name] = []
    for row in batch.to_pylist():
        parsed = annotate_row(task, row)
        raw_output, raw_cut = bound_text(row["raw_output"], MAX_RAW_OUTPUT_CHARS)
        error = parsed.error
        if error is not None and len(error) > MAX_ERROR_CHARS:
            error = f"{error[:MAX_ERROR_CHARS]}… (error text cut from {len(error)} characters)"
        if raw_cut:
            note = f"raw_output stored cut to {MAX_RAW_OUTPUT_CHARS} of {len(row['raw_output'])} characters"
            error = note if error is None else f"{error}; {note}"
        columns["annotation"].append(
            annotation_record(
                model=model,
                engine=engine,
                task=task.name,
                prompt_version=task.prompt_version,
                status=parsed.status,
                raw_output=raw_output,
                error=error,
                seconds=row["seconds"],
            )
        )
        for name, value in task.columns(parsed.value).items():
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=schema)
