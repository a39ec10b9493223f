"""The question track's judge: ask the VLM judge each yes/no question of a sample's graph about each generated
image, store the answers, and score them.

The questions of an intended graph are `generate_questions` under the record bounds (`schemas.DEFAULT_LIMITS`,
which every benchmark graph meets), not under the judge's bounds, which bound the judge's own graphs. Each
question is one request of the ``question`` task (prompt
``pipelines/prompts/question.v1.md``), asked on its own as DSG and TIFA ask them, so an answer never depends on
the other questions. The answer's JSON schema allows only ``{"answer": "yes"}`` and ``{"answer": "no"}``
(`ANSWER_SCHEMA`); the hf engine's grammar holds the model to it. Answers are read with
`benchmark.questions.score.parse_yes_no`; one that cannot be read is stored as None with the reason and
counts as no.

Answers are stored under ``RUN_DIR/questions/`` as Parquet chunks (`ANSWERS_SCHEMA`), one row per image with
every question's id, answer, raw output and error, plus the template and prompt versions they were asked with;
a re-run asks only images without a row, and `score_answers` re-scores stored answers without a model (and
refuses answers asked with other templates or prompts). An image that cannot be decoded is never shown to the
judge: its row is ``failed`` with the reason and all its questions count as no, as the graph judge scores such
an image 0.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmark.chunks import read_stored
from benchmark.judge import GraphJudge, JudgeItem, JudgeSettings, judge_stored
from benchmark.questions.generate import QUESTION_TEMPLATE_VERSION, generate_questions
from benchmark.questions.score import ItemScore, parse_yes_no, score_item
from benchmark.sample_set import BenchmarkSample
from pipelines.answers import Parsed
from pipelines.prompting import load_prompt
from pipelines.tasks import Task
from schemas import SceneGraph

__all__ = [
    "ANSWERS_SCHEMA",
    "ANSWER_SCHEMA",
    "QuestionJudge",
    "answer_questions",
    "item_scores",
    "question_task",
    "question_versions",
    "read_answers",
]

ANSWER_SCHEMA: dict[str, Any] = {
    "title": "YesNoAnswer",
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}

_ANSWER_TYPE = pa.struct(
    [
        pa.field("id", pa.string()),
        pa.field("answer", pa.bool_()),
        pa.field("raw_output", pa.string()),
        pa.field("error", pa.string()),
    ]
)

ANSWERS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("template_version", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("answers", pa.list_(_ANSWER_TYPE)),
    ]
)


def _parse_answer(raw: str | None) -> Parsed:
    answer = parse_yes_no(raw)
    if answer is None:
        return Parsed(None, "failed", f"not a yes/no answer: {raw!r:.80}")
    return Parsed(answer, "ok", None)


def question_task(question: str) -> Task:
    """The ``question`` task asking `question` (text from `generate_questions`, safe to put in a prompt)."""
    return Task(
        name="question",
        prompt=load_prompt("question", "v1"),
        schema=ANSWER_SCHEMA,
        parser=_parse_answer,
        to_columns=lambda answer: {"answer": answer},
        output_columns={"answer": pa.bool_()},
        variables={"question": question},
        example_answer='{"answer": "yes"}',
    )


def question_versions() -> dict[str, str]:
    """The versions stored answers must have been asked with: question templates and the task's prompt."""
    return {"template_version": QUESTION_TEMPLATE_VERSION, "prompt_version": load_prompt("question", "v1").prompt_version}


class QuestionJudge(GraphJudge):
    """The judge VLM answering every question of each image's intended graph (a chunk worker, like `GraphJudge`,
    with the same model settings; answers are bounded by `max_new_tokens`)."""

    def __init__(self, settings: JudgeSettings, max_new_tokens: int, device: str | None = None) -> None:
        super().__init__(dataclasses.replace(settings, max_new_tokens=max_new_tokens), device)

    def __call__(self, items: Sequence[JudgeItem]) -> list[dict[str, Any]]:
        from pipelines.images import encode_jpeg, prepare_image

        versions = question_versions()
        rows: list[dict[str, Any]] = []
        pending = []  # (row, question id, request)
        for item in items:
            row = {"key": item.key, "image_index": item.image_index, "status": "ok", "error": None, **versions}
            rows.append(row)
            try:
                questions = generate_questions(SceneGraph.from_json(item.target_json, record=item.key))
            except ValueError as exc:  # a target graph outside the record bounds (`schemas.DEFAULT_LIMITS`)
                row |= {"status": "failed", "error": f"no questions: {exc}", "answers": []}
                continue
            prepared = prepare_image(item.png)
            if prepared.image is None:  # never ask about an image the judge cannot see
                error = f"undecodable image: {prepared.error or 'no image'}"
                row |= {"status": "failed", "error": error}
                row["answers"] = [{"id": q.id, "answer": None, "raw_output": None, "error": error} for q in questions]
                continue
            row["answers"] = []
            image = encode_jpeg(prepared.image)
            pending += [(row, q.id, question_task(q.text).request(image=image)) for q in questions]
        generations = self.generate([request for *_, request in pending])
        for (row, question_id, _), generation in zip(pending, generations, strict=True):
            parsed = _parse_answer(generation.text)
            error = generation.error or parsed.error
            row["answers"].append(
                {"id": question_id, "answer": parsed.value, "raw_output": generation.text, "error": error}
            )
        return rows


def read_answers(out_dir: str | Path) -> pa.Table:
    """Every stored answer row under `out_dir`, sorted by (key, image_index)."""
    return read_stored(out_dir, ANSWERS_SCHEMA)


def answer_questions(
    samples: Sequence[BenchmarkSample],
    images: Iterable[pa.Table],
    settings: JudgeSettings,
    out_dir: str | Path,
    *,
    max_new_tokens: int = 32,
    num_actors: int = 0,
    chunk_size: int = 8,
    device: str | None = None,
) -> pa.Table:
    """Ask every image (tables of key, image_index, png) without stored answers under `out_dir` its sample's
    questions; return all stored answers (one row per image, sorted by key and image index)."""
    return judge_stored(
        QuestionJudge,
        {"settings": settings, "max_new_tokens": max_new_tokens, "device": device},
        ANSWERS_SCHEMA,
        samples,
        images,
        out_dir,
        num_actors=num_actors,
        chunk_size=chunk_size,
    )


def item_scores(samples: Sequence[BenchmarkSample], answers: pa.Table) -> tuple[list[ItemScore], dict[str, Any]]:
    """The dependency-aware scores of every stored image (`score_item` against its sample's questions), and
    details: ``status`` (rows per status), ``failed`` (``"key:image_index"`` -> error of each failed row).

    Raises `ValueError` when a row was asked with other question templates or another prompt than today's
    (`question_versions`), or holds answers to questions its graph does not have."""
    versions = question_versions()
    targets = {s.key: s.scene_graph for s in samples}
    scores, statuses, failed = [], Counter(), {}
    for row in answers.to_pylist():
        where = f"{row['key']}:{row['image_index']}"
        asked = {name: row[name] for name in versions}
        if asked != versions:
            raise ValueError(f"answers of {where} were asked with {asked}, not {versions}: delete them to ask again")
        statuses[row["status"]] += 1
        if row["status"] == "failed":
            failed[where] = row["error"]
        unasked = row["status"] == "failed" and not row["answers"]  # a target graph without questions
        questions = () if unasked else generate_questions(targets[row["key"]])
        scores.append(score_item(questions, {a["id"]: a["answer"] for a in row["answers"]}))
    return scores, {"status": dict(statuses), "n_failed": len(failed), "failed": failed}
