"""What the ``ray.data.llm`` engines (``openai``, ``vllm``) share: request rows in, one generation per row out.

Before the processor, one ``map`` turns each prepared row into the processor's request columns and drops the image
bytes (they travel only inside the request, as a data URL). Rows that must not reach the model (``skip_reason``
set) carry a non-empty ``__inference_error__``, which every ``ray.data.llm`` stage passes through untouched. After
the processor, one ``map_batches`` brings every row (answered, skipped, or failed in the engine, e.g. a prompt
longer than the context) back to `ENGINE_OUTPUT_SCHEMA`; an engine failure becomes the row's ``engine_error``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.engines.base import (
    ENGINE_OUTPUT_SCHEMA,
    OUTPUT_FIELDS,
    PASSTHROUGH_COLUMNS,
    Engine,
    Generation,
)
from pipelines.prompting import ChatRequest

if TYPE_CHECKING:
    import ray.data
    from ray.data.llm import ProcessorConfig

__all__ = ["ERROR_COLUMN", "ProcessorEngine", "normalise_processor_output"]

# ray.data.llm's per-row error column: a non-empty value makes every stage skip the row.
ERROR_COLUMN = "__inference_error__"
_SKIPPED = "skipped: not sent to the model"


def normalise_processor_output(batch: pa.Table) -> pa.Table:
    """Processor output (successful, skipped and failed rows) -> `ENGINE_OUTPUT_SCHEMA`."""
    n = batch.num_rows

    def column(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if name in batch.column_names else [None] * n

    inference_errors = column(ERROR_COLUMN)
    skipped = column("skip_reason")
    engine_errors = column("engine_error")
    for i, error in enumerate(inference_errors):
        if error and skipped[i] is None:
            engine_errors[i] = f"engine error: {error}"
    values = {name: column(name) for name in PASSTHROUGH_COLUMNS}
    values |= {f.name: column(f.name) for f in OUTPUT_FIELDS}
    values["engine_error"] = engine_errors
    return pa.Table.from_pydict(values, schema=ENGINE_OUTPUT_SCHEMA)


class ProcessorEngine(Engine):
    """An engine made of a ``ray.data.llm`` processor; subclasses say how to configure it, ask and read."""

    @abstractmethod
    def processor_config(self) -> ProcessorConfig:
        """The ``ray.data.llm`` processor configuration."""

    @abstractmethod
    def request_columns(self, request: ChatRequest) -> dict[str, Any]:
        """The processor's input columns for one request."""

    @abstractmethod
    def generation(self, row: dict[str, Any]) -> Generation:
        """The generation in one successful processor output row."""

    def request_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A prepared row -> passthrough columns + request columns (or the skip marker)."""
        out = {name: row[name] for name in PASSTHROUGH_COLUMNS}
        if row["skip_reason"] is not None:
            out[ERROR_COLUMN] = _SKIPPED
            return out
        out |= self.request_columns(self.task.request(row["caption"], row["prepared_image"]))
        out[ERROR_COLUMN] = ""
        return out

    def postprocess_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A successful processor row -> passthrough columns + the generation (no request, no image)."""
        try:
            generation = self.generation(row)
        except Exception as exc:  # noqa: BLE001 - an answer we cannot read is that row's error, not the job's
            generation = Generation(None, error=f"engine error: unreadable answer: {type(exc).__name__}")
        return {name: row[name] for name in PASSTHROUGH_COLUMNS} | {
            "raw_output": generation.text,
            "engine_error": generation.error,
            "seconds": generation.seconds,
            "truncated": generation.truncated,
        }

    def run(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        from ray.data.llm import build_processor

        processor = build_processor(self.processor_config(), postprocess=self.postprocess_row)
        return processor(ds.map(self.request_row)).map_batches(
            normalise_processor_output, batch_format="pyarrow"
        )
