"""`FixedAnswerEngine`: answers every row with a given text, without any model.

For dry runs (``python -m pipelines.annotate --engine fixed --model ANSWERS.jsonl`` or ``--model builtin``): ingest,
filters, image decoding and the output are exercised on a full input before any GPU hour is spent; for parser and
pipeline tests (malformed answers, awkward images) and for measuring the pipeline's own overhead
(`bench/annotate_overhead.py`). Its rows carry engine ``fixed`` and a model naming the answers (``fixed:builtin``
or ``fixed:FILE@sha256:...``): a dataset annotated by it says nothing about its images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.engines.base import Engine, EngineOptions, Generation, output_table, pending_requests
from pipelines.tasks import Task

if TYPE_CHECKING:
    import ray.data

__all__ = ["BUILTIN_ANSWERS", "FixedAnswerEngine", "answers_from", "fixed_engine"]

BUILTIN_ANSWERS = "builtin"  # --model value: the task's own example answer


def _answer_batch(batch: pa.Table, task: Task, answers: Sequence[str]) -> pa.Table:
    indices = batch.column("_index").to_pylist()
    generations = {
        i: Generation(answers[indices[i] % len(answers)], seconds=0.0, truncated=False)
        for i, _ in pending_requests(task, batch)
    }
    return output_table(batch, generations)


class _Answerer:
    """The model stage of a fixed-answer dry run, as a Ray Data actor (the shape of `HFGenerator`'s pool)."""

    def __init__(self, task: Task, answers: Sequence[str]):
        self.task, self.answers = task, answers

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _answer_batch(batch, self.task, self.answers)


class FixedAnswerEngine(Engine):
    """Answers row ``_index = i`` of every shard with ``answers[i % len(answers)]`` (prompts are still rendered).

    With `actors` (what ``--engine fixed`` builds) the answers come from a pool of `options.num_actors` actors,
    as a model's do, so that a dry run has the real run's shape (an actor stage after the read tasks, which a
    failure test can kill); without, they fuse into the read stage (tests, overhead benchmarks).
    """

    name = "fixed"

    def __init__(
        self,
        task: Task,
        answers: Sequence[str],
        options: EngineOptions | None = None,
        model: str = "fixed-answers",
        actors: bool = False,
    ):
        if not answers:
            raise ValueError("FixedAnswerEngine needs at least one answer")
        super().__init__(task, model, options)
        self.answers = list(answers)
        self.actors = actors

    def run(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        if self.actors:
            import ray.data

            return ds.map_batches(
                _Answerer,
                fn_constructor_kwargs={"task": self.task, "answers": self.answers},
                compute=ray.data.ActorPoolStrategy(size=self.options.num_actors),
                batch_format="pyarrow",
                num_cpus=0,  # an instant answer: the actors never hold a CPU back from the read tasks
            )
        # Whole blocks (no batch size): the answer is instant, so this fuses into the read stage.
        return ds.map_batches(
            _answer_batch, fn_kwargs={"task": self.task, "answers": self.answers}, batch_format="pyarrow"
        )


def answers_from(source: str, task: Task) -> tuple[list[str], str]:
    """The answers named by `source` and the model label the rows carry.

    ``builtin`` is the task's example answer. Otherwise `source` is a JSON Lines file: a line holding a JSON string
    is that answer's text, any other JSON value is answered as its JSON text (so a file of graphs works); blank
    lines are skipped. Raises ValueError naming the file and line."""
    if source == BUILTIN_ANSWERS:
        if task.example_answer is None:
            raise ValueError(f"{source}: task {task.name} has no built-in example answer; give an answer file")
        return [task.example_answer], f"fixed:{BUILTIN_ANSWERS}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(f"{source}: no such answer file (JSON Lines, or {BUILTIN_ANSWERS!r})")
    data = path.read_bytes()
    answers = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}, line {number}: not JSON ({exc.msg})") from None
        answers.append(value if isinstance(value, str) else json.dumps(value))
    if not answers:
        raise ValueError(f"{source}: no answer in the file")
    return answers, f"fixed:{path.name}@sha256:{hashlib.sha256(data).hexdigest()[:16]}"


def fixed_engine(task: Task, model: str, options: EngineOptions | None = None) -> FixedAnswerEngine:
    """The engine ``--engine fixed`` builds: `model` names the answers (`answers_from`); an actor pool."""
    answers, label = answers_from(model, task)
    return FixedAnswerEngine(task, answers, options, model=label, actors=True)
