"""`FixedAnswerEngine`: answers every row with a given text, without any model.

For parser and pipeline tests (malformed answers, awkward images) and for measuring the pipeline's own overhead
(`bench/annotate_overhead.py`). It is not offered by the CLI: a dataset annotated by it says nothing about images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.engines.base import Engine, EngineOptions, Generation, output_table, pending_requests
from pipelines.tasks import Task

if TYPE_CHECKING:
    import ray.data

__all__ = ["FixedAnswerEngine"]


def _answer_batch(batch: pa.Table, task: Task, answers: Sequence[str]) -> pa.Table:
    indices = batch.column("_index").to_pylist()
    generations = {
        i: Generation(answers[indices[i] % len(answers)], seconds=0.0, truncated=False)
        for i, _ in pending_requests(task, batch)
    }
    return output_table(batch, generations)


class FixedAnswerEngine(Engine):
    """Answers row ``_index = i`` of every shard with ``answers[i % len(answers)]`` (prompts are still rendered)."""

    name = "fixed"

    def __init__(self, task: Task, answers: Sequence[str], options: EngineOptions | None = None):
        if not answers:
            raise ValueError("FixedAnswerEngine needs at least one answer")
        super().__init__(task, "fixed-answers", options)
        self.answers = list(answers)

    def run(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        # Whole blocks (no batch size): the answer is instant, so this fuses into the read stage.
        return ds.map_batches(
            _answer_batch, fn_kwargs={"task": self.task, "answers": self.answers}, batch_format="pyarrow"
        )
