"""Tasks as data: published prompts, schemas, and parsers of raw model answers (no model, no Ray)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from pipelines import tasks
from pipelines.tasks import (
    PROMPTS_DIR,
    PromptTemplate,
    Task,
    extract_json,
    failure_reason,
    get_task,
    judge_task,
    load_prompt,
    parse_scene_graph,
    parse_spatial_caption,
    register_task,
    task_names,
)
from schemas import SCENE_GRAPH_TYPE, Limits, SceneGraph, Vocabulary

GRAPH = {
    "objects": [
        {"id": 0, "name": "person", "attributes": ["female", "young"]},
        {"id": 1, "name": "umbrella", "attributes": ["red"]},
    ],
    "relations": [{"subject": 0, "predicate": "holding", "object": 1}],
}
GOOD = json.dumps(GRAPH)

# (name, raw answer, expected status, expected reason category or a repair note that must appear)
MALFORMED: list[tuple[str, str | None, str, str]] = [
    ("invalid json", '{"objects": [{"id": 0 "name": "dog"}]}', "failed", "invalid JSON"),
    ("truncated json", GOOD[: len(GOOD) // 2], "failed", "truncated JSON"),
    ("empty answer", "", "failed", "empty output"),
    ("json list", "[1, 2, 3]", "failed", "not a JSON object"),
    ("code fence", f"```json\n{GOOD}\n```", "repaired", "code fence"),
    (
        "prose around json",
        f"Here is the scene graph: {GOOD} I hope this helps {{:)}}",
        "repaired",
        "text around",
    ),
    (
        "wrong types",
        '{"objects": [{"id": "zero", "name": 5, "attributes": []}], "relations": []}',
        "failed",
        "invalid scene graph",
    ),
    ("objects not a list", '{"objects": "dog", "relations": []}', "failed", "invalid scene graph"),
    (
        "dangling ids",
        json.dumps({**GRAPH, "relations": [{"subject": 0, "predicate": "holding", "object": 7}]}),
        "repaired",
        "object id not among the objects",
    ),
    (
        "duplicate ids",
        json.dumps(
            {**GRAPH, "objects": [*GRAPH["objects"], {"id": 1, "name": "hat", "attributes": ["blue"]}]}
        ),
        "repaired",
        "duplicate id 1",
    ),
    (
        "self-loop",
        json.dumps({**GRAPH, "relations": [{"subject": 1, "predicate": "touching", "object": 1}]}),
        "repaired",
        "self-loop",
    ),
    ("empty graph", '{"objects": [], "relations": []}', "failed", "empty scene graph"),
    (
        "oversize graph",
        json.dumps(
            {
                "objects": [{"id": i, "name": "tree", "attributes": ["tall"]} for i in range(70)],
                "relations": [],
            }
        ),
        "repaired",
        "over the limit of 64 objects",
    ),
    ("not normalised", GOOD.replace('"person"', '"  Person_Name "'), "repaired", "normalised"),
]


@pytest.mark.parametrize("name", task_names())
def test_registered_tasks_render_their_published_prompts(name: str) -> None:
    task = get_task(name)
    request = task.request(caption="a young woman holding a red umbrella", image=b"\xff\xd8jpeg")
    assert "${" not in request.system + request.user
    assert re.fullmatch(r"v\d+\+[0-9a-f]{8}", task.prompt_version)
    assert (PROMPTS_DIR / f"{name}.{task.prompt.version}.md").is_file()
    assert request.schema == task.schema and request.schema_name == name
    assert (request.image is not None) == task.needs_image
    assert set(task.columns(None)) == set(task.output_columns)


def test_scene_graph_prompt_states_the_laion_sg_rules() -> None:
    user = get_task("scene_graph").request().user.lower()
    for rule in (
        "as many objects",
        "unique integer id",
        "adjectives only",
        "at least one",
        '"person"',
        "gender",
        "age",
        "precise verb",
        "bare spatial word",
        "objective",
    ):
        assert rule in user, rule
    assert get_task("scene_graph").schema == SceneGraph.json_schema()


def test_limits_reach_prompt_and_schema() -> None:
    limits = Limits(max_objects=5, max_relations=4, max_attributes=2)
    task = get_task("scene_graph", limits)
    assert "At most 5 objects and 4 relations" in task.request().user
    assert task.schema["properties"]["objects"]["maxItems"] == 5


def test_text_to_graph_is_text_only_and_needs_a_caption() -> None:
    task = get_task("text_to_graph")
    request = task.request("two dogs chasing a ball", image=b"ignored")
    assert request.image is None and '"two dogs chasing a ball"' in request.user
    assert task.skip_reason(None, image_error="cannot identify image file").startswith("no caption")
    assert task.skip_reason("a cat", image_error="cannot identify image file") is None
    assert get_task("scene_graph").skip_reason(None, "truncated image: x") == "truncated image: x"


def test_judge_restricts_names_and_predicates() -> None:
    vocabulary = Vocabulary(names=("dog", "sofa"), predicates=("lying on",))
    task = judge_task(vocabulary)
    user = task.request().user
    assert "dog, sofa" in user and "lying on" in user
    assert task.schema == SceneGraph.json_schema(vocabulary=vocabulary)
    assert task.schema["properties"]["relations"]["items"]["properties"]["predicate"]["enum"] == ["lying on"]
    assert task.output_columns == {"scene_graph": SCENE_GRAPH_TYPE, "sg_text": pa.string()}


@pytest.mark.parametrize(("name", "raw", "status", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_answers_get_a_status_and_a_reason(name: str, raw: str, status: str, reason: str) -> None:
    parsed = parse_scene_graph(raw)
    assert parsed.status == status, parsed
    assert reason in parsed.error
    if status == "failed":
        assert parsed.value is None
        assert failure_reason(parsed.error) == reason or reason in failure_reason(parsed.error)
    else:
        assert parsed.value.is_valid() and parsed.error.startswith("repaired: ")


def test_valid_answer_is_ok_and_laion_raw_shape_is_accepted() -> None:
    parsed = parse_scene_graph(GOOD)
    assert parsed.status == "ok" and parsed.error is None
    assert parsed.value.to_text() == "female young person holding red umbrella"
    raw = {
        "items": ["person_0", "umbrella_1"],
        "attributes": [[0, "female"], [1, "red"]],
        "relations": [[0, "holding", 1]],
    }
    assert parse_scene_graph(json.dumps(raw)).value.to_text() == "female person holding red umbrella"


def test_extract_json_never_takes_an_inner_object_of_a_truncated_answer() -> None:
    with pytest.raises(ValueError, match="truncated JSON"):
        extract_json('Sure: {"objects": [{"id": 0, "name": "dog"}, {"id": 1, "na', ("objects",))
    data, notes = extract_json('noise {"a": 1} then {"objects": []}', ("objects",))
    assert data == {"objects": []} and notes


def test_spatial_caption_parser() -> None:
    ok = parse_spatial_caption('{"spatial_caption": "A dog sits left of a chair. The chair is larger."}')
    assert ok.status == "ok" and ok.value.startswith("A dog")
    prose = parse_spatial_caption("A dog sits left of a chair.\n The chair is larger.")
    assert prose.status == "repaired" and "not JSON" in prose.error
    long = parse_spatial_caption(json.dumps({"spatial_caption": " ".join(["word"] * 100)}), max_words=80)
    assert long.status == "repaired" and len(long.value.split()) == 80
    assert parse_spatial_caption('{"spatial_caption": 3}').status == "failed"
    assert parse_spatial_caption('{"spatial_caption": "   "}').error == "empty spatial caption"
    pattern = re.compile(get_task("spatial_caption").schema["properties"]["spatial_caption"]["pattern"])
    assert pattern.fullmatch("A dog sits left of a chair.") and not pattern.fullmatch('quote " inside')


def test_prompt_files_are_versioned_and_checked(tmp_path) -> None:
    for path in PROMPTS_DIR.glob("*.md"):
        task, version = path.stem.rsplit(".", 1)
        prompt = load_prompt(task, version)
        assert isinstance(prompt, PromptTemplate) and prompt.sha1
    with pytest.raises(FileNotFoundError):
        load_prompt("scene_graph", "v999")


def test_a_new_task_registers_without_engine_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    prompt = PromptTemplate(
        "colour", "v1", frozenset({"image"}), "You name colours.", "Main colour?", "0" * 40
    )
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }

    def factory(limits: Limits) -> Task:
        return Task(
            "colour_test",
            prompt,
            schema,
            lambda raw: parse_spatial_caption(raw),
            lambda value: {"colour": value},
            {"colour": pa.string()},
        )

    register_task("colour_test", factory)
    assert "colour_test" in task_names()
    assert get_task("colour_test").request(image=b"x").schema == schema
    with pytest.raises(ValueError, match="already registered"):
        register_task("colour_test", factory)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")
