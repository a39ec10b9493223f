"""The question track's judge, storage and scores: the tiny random judge through the real hf engine path, answers
checked against the task's JSON schema, resuming, and scores of hand-made answers computed by hand."""

from __future__ import annotations

import io
import json
import random

import jsonschema
import pyarrow as pa
import pytest
from PIL import Image

from benchmark.judge import JudgeItem, JudgeSettings
from benchmark.metrics.question_score import QuestionScore
from benchmark.questions import average_scores, generate_questions
from benchmark.questions.answer import (
    ANSWER_SCHEMA,
    ANSWERS_SCHEMA,
    QuestionJudge,
    answer_questions,
    item_scores,
    question_task,
    question_versions,
)
from benchmark.questions.score import ItemScore
from benchmark.sample_set import BenchmarkSample
from schemas import Limits, SceneGraph

DOG = SceneGraph.from_json(
    {
        "objects": [
            {"id": 0, "name": "dog", "attributes": ["brown"]},
            {"id": 1, "name": "ball", "attributes": []},
        ],
        "relations": [{"subject": 0, "predicate": "chasing", "object": 1}],
    }
)
CAT = SceneGraph.from_json({"objects": [{"id": 0, "name": "cat", "attributes": ["white", "small"]}], "relations": []})


def png(color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def sample(key: str, graph: SceneGraph) -> BenchmarkSample:
    return BenchmarkSample(key, f"a {key}", graph, graph.to_text(), png((1, 2, 3)))


def test_question_task_asks_the_question_and_admits_only_yes_or_no():
    request = question_task("Is there a dog?").request(image=b"jpeg")
    assert "Question: Is there a dog?" in request.user and request.image == b"jpeg"
    assert request.schema == ANSWER_SCHEMA and request.schema_name == "question"
    jsonschema.validate({"answer": "yes"}, ANSWER_SCHEMA)
    jsonschema.validate({"answer": "no"}, ANSWER_SCHEMA)
    for bad in ({"answer": "maybe"}, {"answer": True}, {}, {"answer": "yes", "why": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, ANSWER_SCHEMA)
    task = question_task("q")
    assert task.parse('{"answer": "no"}') == (False, "ok", None)
    assert task.parse("nope").status == "failed" and task.parse("nope").value is None


@pytest.fixture(scope="module")
def judge_settings(tiny_models_dir) -> JudgeSettings:
    # bounds smaller than the graphs': they bound the judge's own graphs, never which questions are asked
    return JudgeSettings(model=str(tiny_models_dir / "qwen2_5_vl"), limits=Limits(max_objects=1, max_relations=0))


def test_tiny_judge_answers_every_question_within_the_schema(judge_settings, monkeypatch):
    judge = QuestionJudge(judge_settings, max_new_tokens=32)
    asked = []
    generate = judge.generator.generate
    monkeypatch.setattr(judge.generator, "generate", lambda requests: asked.append(len(requests)) or generate(requests))
    rows = judge(
        [
            JudgeItem("dog", 0, png((200, 10, 10)), DOG.to_json()),
            JudgeItem("dog", 1, b"not an image", DOG.to_json()),
            JudgeItem("cat", 0, png((10, 10, 200), (32, 64)), CAT.to_json()),
        ]
    )
    assert pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA).num_rows == 3
    ok, broken, cat = rows
    # one request per question of the decodable images (batch size 1), none for the broken image
    assert sum(asked) == len(generate_questions(DOG)) + len(generate_questions(CAT)) == 4 + 3
    for row, graph in ((ok, DOG), (cat, CAT)):
        assert row["status"] == "ok" and row["error"] is None
        assert row | question_versions() == row
        assert [a["id"] for a in row["answers"]] == [q.id for q in generate_questions(graph)]
        for answer in row["answers"]:
            jsonschema.validate(json.loads(answer["raw_output"]), ANSWER_SCHEMA)  # the grammar held the model
            assert answer["answer"] is (json.loads(answer["raw_output"])["answer"] == "yes")
    assert broken["status"] == "failed" and broken["error"].startswith("undecodable image")
    assert [a["answer"] for a in broken["answers"]] == [None] * 4
    assert all(a["raw_output"] is None and a["error"] == broken["error"] for a in broken["answers"])


def test_answers_are_stored_resumed_without_a_model_and_rescored(judge_settings, tmp_path, monkeypatch):
    samples = [sample("cat", CAT), sample("dog", DOG)]
    images = [
        pa.table({"key": ["dog", "cat"], "image_index": [0, 0], "png": [png((9, 9, 9)), png((250, 250, 0))]}),
        pa.table({"key": ["dog"], "image_index": [1], "png": [b"broken"]}),
    ]
    stored = answer_questions(samples, images, judge_settings, tmp_path, chunk_size=2)
    assert [(r["key"], r["image_index"]) for r in stored.to_pylist()] == [("cat", 0), ("dog", 0), ("dog", 1)]
    assert len(list(tmp_path.glob("part-*.parquet"))) == 2

    def no_model(*args, **kwargs):
        raise AssertionError("stored answers must not be asked again")

    monkeypatch.setattr("benchmark.questions.answer.QuestionJudge", no_model)
    assert answer_questions(samples, images, judge_settings, tmp_path, chunk_size=1) == stored

    scores, details = item_scores(samples, stored)
    assert details == {
        "status": {"ok": 2, "failed": 1},
        "n_failed": 1,
        "failed": {"dog:1": "undecodable image: cannot identify image file"},
    }
    assert scores[2] == ItemScore(0.0, 0.0, 0.0, 0.0, n_questions=4, n_yes=0, n_invalid=4, n_skipped=0)


def answer_row(key: str, index: int, answers: dict[str, bool | None], status: str = "ok") -> dict:
    return {
        "key": key,
        "image_index": index,
        "status": status,
        "error": None if status == "ok" else "undecodable image: x",
        **question_versions(),
        "answers": [{"id": i, "answer": a, "raw_output": None, "error": None} for i, a in answers.items()],
    }


def test_scores_of_hand_made_answers():
    samples = [sample("cat", CAT), sample("dog", DOG)]
    rows = [
        # cat: entity yes, white yes, small no -> entity 1, attribute 1/2, overall 2/3, no relation questions
        answer_row("cat", 0, {"e0": True, "e0.a0": True, "e0.a1": False}),
        # dog: dog yes, brown yes, ball NO, chasing yes -> skipped (ball is no): entity 1/2, attribute 1,
        # relation 0, overall 2/4
        answer_row("dog", 0, {"e0": True, "e0.a0": True, "e1": False, "r0": True}),
        # dog: the dog answer missing (counts as no): brown skipped, ball yes, chasing skipped -> overall 1/4
        answer_row("dog", 1, {"e0.a0": True, "e1": True, "r0": True}),
    ]
    scores, _ = item_scores(samples, pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA))
    assert [(s.entity, s.attribute, s.relation, s.overall) for s in scores] == [
        (1.0, 0.5, None, 2 / 3),
        (0.5, 1.0, 0.0, 0.5),
        (0.5, 0.0, 0.0, 0.25),
    ]
    assert [(s.n_skipped, s.n_invalid) for s in scores] == [(0, 0), (1, 0), (2, 1)]
    metric = QuestionScore()
    metric.update(scores)
    result = metric.compute()
    # each key is a mean over the images where it is defined: relation over the two dog images only
    assert result["question_score"] == pytest.approx((2 / 3 + 0.5 + 0.25) / 3)
    assert result["question_entity"] == pytest.approx(2 / 3)
    assert result["question_attribute"] == pytest.approx(0.5)
    assert result["question_relation"] == 0.0
    assert result["n_scored"] == {"entity": 3, "attribute": 3, "relation": 2, "overall": 3}
    assert (result["n_items"], result["n_questions"], result["n_invalid"], result["n_skipped"]) == (3, 11, 1, 3)


def test_answers_of_another_template_or_graph_are_refused():
    samples = [sample("cat", CAT)]
    old = answer_row("cat", 0, {"e0": True}) | {"template_version": "v0"}
    with pytest.raises(ValueError, match="cat:0 were asked with .*v0"):
        item_scores(samples, pa.Table.from_pylist([old], schema=ANSWERS_SCHEMA))
    other = answer_row("cat", 0, {"r3": True})
    with pytest.raises(ValueError, match="unknown question ids"):
        item_scores(samples, pa.Table.from_pylist([other], schema=ANSWERS_SCHEMA))


def random_items(rng: random.Random, n: int) -> list[ItemScore]:
    def share() -> float | None:
        return None if rng.random() < 0.3 else rng.randint(0, 4) / 4

    return [
        ItemScore(share(), share(), share(), rng.random(), rng.randint(1, 9), rng.randint(0, 9), rng.randint(0, 3), rng.randint(0, 3))
        for _ in range(n)
    ]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric QuestionScore was called before")
def test_metric_class_equals_the_functional_mean_in_one_go_in_halves_and_merged():
    items = random_items(random.Random(3), 41)
    means, details = average_scores(items)
    expected = {f"question_{'score' if k == 'overall' else k}": v for k, v in means.items()}
    whole, first, second = QuestionScore(), QuestionScore(), QuestionScore()
    whole.update(items)
    first.update(items[:20])
    first.update(items[20:30])
    second.update(items[30:])
    first.merge_state(second)
    for metric in (whole, first):
        result = metric.compute()
        for key, value in expected.items():
            assert result[key] == pytest.approx(value, rel=1e-12), key
        assert result["n_scored"] == details["n_scored"] and result["n_items"] == details["n_items"] == 41
        assert (result["n_questions"], result["n_invalid"], result["n_skipped"]) == (
            details["n_questions"], details["n_invalid"], details["n_skipped"]
        )  # fmt: skip
    undefined = QuestionScore()
    undefined.update([ItemScore(1.0, None, None, 1.0, 1, 1, 0, 0)])
    assert undefined.compute()["question_relation"] is None
    with pytest.raises(ValueError, match=r"^QuestionScore\.compute\(\) needs at least one item$"):
        QuestionScore().compute()
