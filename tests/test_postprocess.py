"""Engine output rows -> annotation columns, checked against hand-written expectations row by row."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from pipelines.engines.base import ENGINE_OUTPUT_SCHEMA
from pipelines.postprocess import (
    KEEP_COLUMNS,
    MAX_ERROR_CHARS,
    MAX_RAW_OUTPUT_CHARS,
    annotate_row,
    bound_text,
    postprocess_batch,
    postprocess_schema,
)
from pipelines.tasks import get_task
from schemas import ANNOTATION_TYPE

GRAPH = {
    "objects": [{"id": 0, "name": "dog", "attributes": ["brown"]}, {"id": 1, "name": "sofa", "attributes": []}],
    "relations": [{"subject": 0, "predicate": "on", "object": 1}],
}


def engine_row(index: int, **values: Any) -> dict[str, Any]:
    row = {
        "_shard": "s0",
        "_index": index,
        "_shard_rows": 9,
        "key": f"k{index}",
        "width": 10 + index,
        "height": 20 + index,
        "skip_reason": None,
        "raw_output": None,
        "engine_error": None,
        "seconds": 0.5 * index,
        "truncated": False,
    }
    return row | values


def test_schema_is_bookkeeping_annotation_then_task_columns() -> None:
    task = get_task("scene_graph")
    schema = postprocess_schema(task)
    assert schema.names == [
        "_shard", "_index", "_shard_rows", "key", "width", "height", "annotation", "scene_graph", "sg_text",
    ]  # fmt: skip
    assert "skip_reason" not in [f.name for f in KEEP_COLUMNS]
    assert schema.field("annotation").type == ANNOTATION_TYPE
    assert schema.field("_index").type == pa.int64() and schema.field("width").type == pa.int32()


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [(None, 3, (None, False)), ("abc", 3, ("abc", False)), ("abcd", 3, ("abc", True)), ("", 0, ("", False))],
)
def test_bound_text(text: str | None, limit: int, expected: tuple[str | None, bool]) -> None:
    assert bound_text(text, limit) == expected


def test_annotate_row_reasons_in_order_of_precedence() -> None:
    task = get_task("scene_graph")
    good = json.dumps(GRAPH)
    # the skip reason wins over an engine error and a good answer; the engine error over a good answer
    skipped = annotate_row(task, engine_row(0, skip_reason="cannot decode image", engine_error="e", raw_output=good))
    assert (skipped.value, skipped.status, skipped.error) == (None, "failed", "cannot decode image")
    errored = annotate_row(task, engine_row(1, engine_error="HTTP 500", raw_output=good))
    assert (errored.value, errored.status, errored.error) == (None, "failed", "HTTP 500")
    ok = annotate_row(task, engine_row(2, raw_output=good, truncated=True))  # a complete answer at the limit is fine
    assert ok.status == "ok" and ok.error is None and ok.value.to_text() == "brown dog on sofa"
    cut = annotate_row(task, engine_row(3, raw_output='{"objects": [{"id": 0, "na', truncated=True))
    plain = annotate_row(task, engine_row(3, raw_output='{"objects": [{"id": 0, "na'))
    assert plain.status == cut.status == "failed" and cut.value is None
    assert cut.error == f"truncated output: the answer hit the token limit; {plain.error}"
    assert not plain.error.startswith("truncated output")


def test_postprocess_batch_row_by_row() -> None:
    task = get_task("scene_graph")
    long_answer = json.dumps(GRAPH) + " " * (MAX_RAW_OUTPUT_CHARS + 5 - len(json.dumps(GRAPH)))
    exact_answer = json.dumps(GRAPH) + " " * (MAX_RAW_OUTPUT_CHARS - len(json.dumps(GRAPH)))
    long_error = "x" * (MAX_ERROR_CHARS + 1)
    exact_error = "y" * MAX_ERROR_CHARS
    rows = [
        engine_row(0, raw_output=json.dumps(GRAPH)),
        engine_row(1, skip_reason="image too large"),
        engine_row(2, engine_error=long_error),
        engine_row(3, engine_error=exact_error),
        engine_row(4, raw_output=long_answer),
        engine_row(5, raw_output=exact_answer),
        engine_row(6, raw_output="not json", engine_error=long_error, seconds=None),
        engine_row(7, raw_output="z" * (MAX_RAW_OUTPUT_CHARS + 1)),
    ]
    out = postprocess_batch(pa.Table.from_pylist(rows, schema=ENGINE_OUTPUT_SCHEMA), task, "m/qwen", "hf")
    assert out.schema == postprocess_schema(task)
    got = out.to_pylist()
    assert [r["key"] for r in got] == [f"k{i}" for i in range(8)]
    for row, src in zip(got, rows, strict=True):  # bookkeeping passes through unchanged
        assert {k: row[k] for k in ("_shard", "_index", "_shard_rows", "width", "height")} == {
            k: src[k] for k in ("_shard", "_index", "_shard_rows", "width", "height")
        }
        ann = row["annotation"]
        assert (ann["model"], ann["engine"], ann["task"]) == ("m/qwen", "hf", "scene_graph")
        assert ann["prompt_version"] == task.prompt_version and ann["seconds"] == src["seconds"]

    def ann(i: int) -> dict[str, Any]:
        return got[i]["annotation"]

    assert ann(0)["status"] == "ok" and ann(0)["error"] is None and ann(0)["raw_output"] == json.dumps(GRAPH)
    assert got[0]["sg_text"] == "brown dog on sofa"
    assert [o["name"] for o in got[0]["scene_graph"]["objects"]] == ["dog", "sofa"]
    assert (ann(1)["status"], ann(1)["error"], ann(1)["raw_output"]) == ("failed", "image too large", None)
    assert got[1]["scene_graph"] is None and got[1]["sg_text"] is None
    cut_note = f"{'x' * MAX_ERROR_CHARS}… (error text cut from {MAX_ERROR_CHARS + 1} characters)"
    assert ann(2)["error"] == cut_note
    assert ann(3)["error"] == exact_error  # exactly at the limit: kept whole
    raw_note = f"raw_output stored cut to {MAX_RAW_OUTPUT_CHARS} of {MAX_RAW_OUTPUT_CHARS + 5} characters"
    assert ann(4)["status"] == "ok" and ann(4)["error"] == raw_note  # the answer parsed whole; only storage is cut
    assert ann(4)["raw_output"] == long_answer[:MAX_RAW_OUTPUT_CHARS] and got[4]["sg_text"] == "brown dog on sofa"
    assert ann(5)["error"] is None and ann(5)["raw_output"] == exact_answer
    both = f"{cut_note}"  # the engine error wins; its raw output is short, so no storage note
    assert ann(6)["status"] == "failed" and ann(6)["error"] == both and ann(6)["raw_output"] == "not json"
    assert ann(6)["seconds"] is None
    assert ann(7)["status"] == "failed" and ann(7)["raw_output"] == "z" * MAX_RAW_OUTPUT_CHARS
    parse_error = annotate_row(task, rows[7]).error
    assert ann(7)["error"].startswith(parse_error[:50])
    assert ann(7)["error"].endswith(f"; raw_output stored cut to {MAX_RAW_OUTPUT_CHARS} of {MAX_RAW_OUTPUT_CHARS + 1} characters")


def test_other_tasks_fill_their_own_columns() -> None:
    task = get_task("spatial_caption")
    rows = [engine_row(0, raw_output='{"spatial_caption": "a dog left of a sofa"}'), engine_row(1, raw_output="")]
    out = postprocess_batch(pa.Table.from_pylist(rows, schema=ENGINE_OUTPUT_SCHEMA), task, "m", "openai")
    assert out.schema.names[-len(task.output_columns) :] == list(task.output_columns)
    got = out.to_pylist()
    assert [r["annotation"]["status"] for r in got] == ["ok", "failed"]
    assert got[0]["annotation"]["task"] == "spatial_caption"
    assert got[0]["spatial_caption"] == "a dog left of a sofa"
    assert all(got[1][name] is None for name in task.output_columns)
