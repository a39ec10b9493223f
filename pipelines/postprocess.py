"""Engine output -> annotation columns: parse with the task, validate or repair, record how it went.

Every row leaves with an `annotation` struct (`schemas.annotation_record`) whose status is ok, repaired or
failed; a failed row names its reason (the image decode error, the engine error, or the parse error), a repaired
row lists the repairs. Rows that never reached the model (``skip_reason``) fail with that reason. No image bytes
enter or leave this stage.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.engines.base import PASSTHROUGH_FIELDS
from pipelines.tasks import Parsed, Task
from schemas import ANNOTATION_TYPE, annotation_record

__all__ = ["KEEP_COLUMNS", "annotate_row", "postprocess_batch", "postprocess_schema"]

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


def postprocess_batch(batch: pa.Table, task: Task, model: str, engine: str) -> pa.Table:
    """Engine output rows (`pipelines.engines.base.ENGINE_OUTPUT_SCHEMA`) -> `postprocess_schema(task)` rows."""
    schema = postprocess_schema(task)
    columns: dict[str, list[Any]] = {f.name: batch.column(f.name).to_pylist() for f in KEEP_COLUMNS}
    columns["annotation"] = []
    for name in task.output_columns:
        columns[name] = []
    for row in batch.to_pylist():
        parsed = annotate_row(task, row)
        columns["annotation"].append(
            annotation_record(
                model=model,
                engine=engine,
                task=task.name,
                prompt_version=task.prompt_version,
                status=parsed.status,
                raw_output=row["raw_output"],
                error=parsed.error,
                seconds=row["seconds"],
            )
        )
        for name, value in task.columns(parsed.value).items():
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=schema)
