"""Tasks as data: published prompts, schemas, and parsers of raw model answers (no model, no Ray)."""

from __future__ import annotations

import hashlib
import json
import re

import jsonschema
import pyarrow as pa
import pytest

from pipelines import answers, prompting, tasks
from pipelines.answers import (
    PARAGRAPH_MIN_WORDS,
    extract_json,
    failure_reason,
    parse_scene_graph,
    parse_spatial_caption,
)
from pipelines.prompting import PROMPTS_DIR, PromptTemplate, load_prompt
from pipelines.tasks import Task, get_task, judge_task, register_task, task_names
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


# ---------------------------------------------------------------------- exact behaviour, boundaries and reasons

EMPTY = "empty output: the model returned no text"
TRUNCATED = "truncated JSON: the answer ends before the JSON is complete"
FENCE_NOTE = "removed a Markdown code fence around the JSON"
AROUND_NOTE = "ignored text around the JSON object"
PROSE_NOTE = "the answer is not JSON; used the text as the caption"
NO_CAPTION = "no caption: this task turns the caption into a graph and the row has none"
# distinct numbers, so that a limit that reaches the wrong placeholder shows
LIMITS = Limits(max_objects=7, max_relations=9, max_attributes=3)
VOCABULARY = Vocabulary(names=("dog", "sofa", "window"), predicates=("lying on", "next to"))
TRUNCATED_IN_PROSE = 'Sure: {"objects": [{"id": 0, "name": "dog"}, {"id": 1, "na'


def _published(name: str) -> tuple[str, str]:
    """The system and user sections of a published prompt file, read without `load_prompt`."""
    text = (PROMPTS_DIR / f"{name}.v1.md").read_text(encoding="utf-8")
    body = text.split("\n---\n", 1)[1]
    system, user = body.split("## user\n")
    return system.split("## system\n")[1].strip(), user.strip()


def _fill(text: str, values: dict[str, object]) -> str:
    for key, value in values.items():
        text = text.replace("${" + key + "}", str(value))
    return text


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("invalid JSON: Expecting value (char 0)", "invalid JSON"),
        (f"{TRUNCATED} (Expecting ',' delimiter, char 17)", "truncated JSON"),
        (
            "invalid scene graph: record <scene_graph>: field 'objects': expected a list",
            "invalid scene graph",
        ),
        ("empty spatial caption", "empty spatial caption"),
        ("  padded reason  : detail", "padded reason"),
        (": nothing before the colon", ": nothing before the colon"),
        ("", ""),
    ],
)
def test_failure_reason_is_the_text_before_the_first_colon(error: str, reason: str) -> None:
    assert failure_reason(error) == reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the error is on the last character or past it: the answer stopped early
        ('{"objects": [1, 2', f"{TRUNCATED} (Expecting ',' delimiter, char 17)"),
        ('{"a": 1.', f"{TRUNCATED} (Expecting ',' delimiter, char 7)"),  # char 7 of 8: the last one
        ('{"a": -', f"{TRUNCATED} (Expecting value, char 6)"),
        ('{"a": 1.   \n', f"{TRUNCATED} (Expecting ',' delimiter, char 7)"),  # trailing blanks do not count
        # an unterminated string always runs to the end, wherever it starts
        ('{"a": "abc', f"{TRUNCATED} (Unterminated string starting at, char 6)"),
        # an error before the last character is a syntax error
        ('{"a" 1}', "invalid JSON: Expecting ':' delimiter (char 5)"),
        ('{"a": "ab\ncd"}', "invalid JSON: Invalid control character at (char 9)"),
        ("hello", "invalid JSON: Expecting value (char 0)"),
    ],
)
def test_json_error_tells_truncated_from_invalid(raw: str, expected: str) -> None:
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(raw)
    assert answers._json_error(raw, info.value) == expected


@pytest.mark.parametrize(
    ("raw", "data", "notes"),
    [
        (GOOD, GRAPH, []),
        (f"  \n{GOOD}\n\t ", GRAPH, []),
        ('{"a": 1}', {"a": 1}, []),  # a bare object is the answer whatever its keys
        (f"```json\n{GOOD}\n```", GRAPH, [FENCE_NOTE]),
        (f"```JSON\n{GOOD}\n```", GRAPH, [FENCE_NOTE]),
        (f"```\n{GOOD}\n```", GRAPH, [FENCE_NOTE]),
        (f"Here it is:\n```json\n{GOOD}\n```\nDone.", GRAPH, [FENCE_NOTE]),
        ('```json\n{"a": 1}\n```', {"a": 1}, [FENCE_NOTE]),
        (f"Here is the graph: {GOOD} Bye.", GRAPH, [AROUND_NOTE]),
        (f"{GOOD} trailing words", GRAPH, [AROUND_NOTE]),
        ('{"objects": [1]} {"objects": [2]}', {"objects": [1]}, [AROUND_NOTE]),  # several: the first
        ('x {oops} y {"objects": []}', {"objects": []}, [AROUND_NOTE]),  # a broken candidate is skipped
        ('Answer: {"result": {"objects": []}}', {"objects": []}, [AROUND_NOTE]),  # the object with the key
        ('```json\n[{"objects": []}]\n```', {"objects": []}, [AROUND_NOTE]),  # a fenced list is no answer
    ],
)
def test_extract_json_finds_the_object_and_says_what_it_cut(raw: str, data: dict, notes: list[str]) -> None:
    assert extract_json(raw, ("objects",)) == (data, notes)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, EMPTY),
        ("", EMPTY),
        (" \n\t ", EMPTY),
        ("[1, 2, 3]", "not a JSON object: the answer is a JSON array"),
        ("42", "not a JSON object: the answer is a JSON number"),
        ('"a dog"', "not a JSON object: the answer is a JSON string"),
        ("hello there", "invalid JSON: Expecting value (char 0)"),
        ('{"objects": [1, 2', f"{TRUNCATED} (Expecting ',' delimiter, char 17)"),
        ('{"a" 1}', "invalid JSON: Expecting ':' delimiter (char 5)"),
        # the first candidate's error, not the error of the whole text ("Expecting value (char 0)")
        (
            TRUNCATED_IN_PROSE,
            f"{TRUNCATED} (Unterminated string starting at, char {TRUNCATED_IN_PROSE.rindex(chr(34) + 'na')})",
        ),
        ('Sure: {"a": 1} and {"b": 2}', "invalid JSON: Expecting value (char 0)"),  # no object has a key
        # a broken fence body is reported at its own position
        ('```json\n{"objects": [\n```', f"{TRUNCATED} (Expecting value, char 13)"),
        ('```json\n{"objects" []}\n```', "invalid JSON: Expecting ':' delimiter (char 11)"),
    ],
)
def test_extract_json_failures_have_exact_reasons(raw: str | None, message: str) -> None:
    with pytest.raises(ValueError) as info:
        extract_json(raw, ("objects",))
    assert str(info.value) == message


def _graph(*objects: tuple[str, list[str]], relations: tuple[tuple[int, str, int], ...] = ()) -> SceneGraph:
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n, "attributes": a} for i, (n, a) in enumerate(objects)],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    )


UMBRELLA = _graph(("person", ["female", "young"]), ("umbrella", ["red"]), relations=((0, "holding", 1),))
BROWN_DOG = _graph(("dog", ["brown"]))
NORMALISED_DOG = (
    "normalised objects[0].name: 'Dog' -> 'dog'; normalised objects[0].attributes[0]: 'Brown' -> 'brown'"
)

# (id, raw answer, expected value, expected status, expected error)
SCENE_GRAPH_ANSWERS: list[tuple[str, str | None, SceneGraph | None, str, str | None]] = [
    ("ok", GOOD, UMBRELLA, "ok", None),
    (
        "laion record",
        json.dumps({"img_id": "7", "items": [{"item_id": 0, "label": "dog", "attributes": ["brown"]}]}),
        BROWN_DOG,
        "ok",
        None,
    ),
    (
        "laion record repaired",
        json.dumps(
            {
                "img_id": "7",
                "items": [{"item_id": 0, "label": "Dog", "attributes": ["Brown"]}],
                "relations": [],
            }
        ),
        BROWN_DOG,
        "repaired",
        f"repaired: {NORMALISED_DOG}",
    ),
    (
        "raw shape repaired",
        json.dumps(
            {"items": ["Dog_0", "sofa_1"], "attributes": [[0, "Brown"]], "relations": [[0, "lying on", 1]]}
        ),
        _graph(("dog", ["brown"]), ("sofa", []), relations=((0, "lying on", 1),)),
        "repaired",
        f"repaired: {NORMALISED_DOG}",
    ),
    (
        "raw shape in prose",
        'Here: {"items": ["dog_0"]} thanks',
        _graph(("dog", [])),
        "repaired",
        f"repaired: {AROUND_NOTE}",
    ),
    (
        "unknown keys",
        json.dumps({"confidence": 0.9, **GRAPH, "caption": "x"}),
        UMBRELLA,
        "repaired",
        "repaired: ignored unknown keys ['caption', 'confidence']",
    ),
    (
        "objects win over items",
        json.dumps({**GRAPH, "items": ["cat_0"]}),
        UMBRELLA,
        "repaired",
        "repaired: ignored unknown keys ['items']",
    ),
    (
        "fence and a repair",
        f"```json\n{GOOD.replace('person', 'Person')}\n```",
        UMBRELLA,
        "repaired",
        f"repaired: {FENCE_NOTE}; normalised objects[0].name: 'Person' -> 'person'",
    ),
    ("none", None, None, "failed", EMPTY),
    ("list", "[1, 2, 3]", None, "failed", "not a JSON object: the answer is a JSON array"),
    ("truncated", '{"objects": [1, 2', None, "failed", f"{TRUNCATED} (Expecting ',' delimiter, char 17)"),
    (
        "objects not a list",
        '{"objects": "dog", "relations": []}',
        None,
        "failed",
        "invalid scene graph: record <scene_graph>: field 'objects': expected a list, got str",
    ),
    (
        "missing name",
        '{"objects": [{"id": 0}], "relations": []}',
        None,
        "failed",
        "invalid scene graph: record <scene_graph>: field 'objects[0].name': missing",
    ),
    ("no objects", '{"objects": [], "relations": []}', None, "failed", "empty scene graph: no objects"),
    ("only relations", '{"relations": []}', None, "failed", "empty scene graph: no objects"),
    (
        "no usable object",
        json.dumps({"objects": [{"id": 0, "name": " "}, {"id": 1, "name": ""}], "relations": []}),
        None,
        "failed",
        "empty scene graph: no usable objects after repair: dropped objects[0].name: empty; "
        "dropped objects[0] (id 0): no usable name; dropped objects[1].name: empty; "
        "dropped objects[1] (id 1): no usable name",
    ),
]


@pytest.mark.parametrize(
    ("raw", "value", "status", "error"),
    [a[1:] for a in SCENE_GRAPH_ANSWERS],
    ids=[a[0] for a in SCENE_GRAPH_ANSWERS],
)
def test_parse_scene_graph_exact_results(
    raw: str | None, value: SceneGraph | None, status: str, error: str | None
) -> None:
    assert tuple(parse_scene_graph(raw)) == (value, status, error)


def test_parse_scene_graph_applies_its_limits_at_and_past_the_bound() -> None:
    limits = Limits(max_objects=2, max_relations=1, max_attributes=1)
    at_bound = _graph(("person", ["female"]), ("umbrella", ["red"]), relations=((0, "holding", 1),))
    assert tuple(parse_scene_graph(json.dumps(at_bound.to_dict()), limits)) == (at_bound, "ok", None)
    # GOOD has two attributes on its first object: one past the bound
    expected = (
        "repaired",
        "repaired: dropped 1 attributes (objects[0].attributes[1]): over the limit of 1 attributes",
    )
    assert tuple(parse_scene_graph(GOOD, limits))[1:] == expected
    assert parse_scene_graph(GOOD, limits).value == at_bound
    # the task built with these limits parses with them too
    task = get_task("scene_graph", limits)
    assert task.parse(GOOD) == parse_scene_graph(GOOD, limits)
    assert get_task("text_to_graph", limits).parse(GOOD) == parse_scene_graph(GOOD, limits)
    assert judge_task(VOCABULARY, limits).parse(GOOD) == parse_scene_graph(GOOD, limits)
    three = _graph(("dog", ["brown"]), ("sofa", ["red"]), ("cat", ["black"]))
    parsed = task.parse(json.dumps(three.to_dict()))
    assert parsed.status == "repaired" and parsed.value == _graph(("dog", ["brown"]), ("sofa", ["red"]))
    assert parsed.error == "repaired: dropped 1 objects (objects[2]): over the limit of 2 objects"


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# (id, raw answer, max_words or None for the default, expected value, status, error)
CAPTION_ANSWERS: list[tuple[str, str | None, int | None, str | None, str, str | None]] = [
    (
        "ok",
        '{"spatial_caption": "A dog sits left of a chair."}',
        None,
        "A dog sits left of a chair.",
        "ok",
        None,
    ),
    (
        "prose around",
        'Sure: {"spatial_caption": "A dog."} Bye',
        None,
        "A dog.",
        "repaired",
        f"repaired: {AROUND_NOTE}",
    ),
    (
        "fence",
        '```json\n{"spatial_caption": "A dog."}\n```',
        None,
        "A dog.",
        "repaired",
        f"repaired: {FENCE_NOTE}",
    ),
    (
        "plain prose",
        "A dog sits left of a chair.",
        None,
        "A dog sits left of a chair.",
        "repaired",
        f"repaired: {PROSE_NOTE}",
    ),
    (
        "plain prose with line breaks",
        "  A dog.\n The chair. ",
        None,
        "A dog. The chair.",
        "repaired",
        f"repaired: {PROSE_NOTE}; normalised whitespace",
    ),
    (
        "double space",
        '{"spatial_caption": "A  dog."}',
        None,
        "A dog.",
        "repaired",
        "repaired: normalised whitespace",
    ),
    (
        "leading space",
        '{"spatial_caption": " A dog."}',
        None,
        "A dog.",
        "repaired",
        "repaired: normalised whitespace",
    ),
    ("80 words", json.dumps({"spatial_caption": _words(80)}), None, _words(80), "ok", None),
    (
        "81 words",
        json.dumps({"spatial_caption": _words(81)}),
        None,
        _words(80),
        "repaired",
        "repaired: cut to 80 words",
    ),
    (
        "81 words badly spaced",
        json.dumps({"spatial_caption": "  ".join(_words(81).split())}),
        None,
        _words(80),
        "repaired",
        "repaired: cut to 80 words",
    ),
    (
        "81 words of prose",
        _words(81),
        None,
        _words(80),
        "repaired",
        f"repaired: {PROSE_NOTE}; cut to 80 words",
    ),
    ("3 of 3 words", json.dumps({"spatial_caption": _words(3)}), 3, _words(3), "ok", None),
    (
        "4 of 3 words",
        json.dumps({"spatial_caption": _words(4)}),
        3,
        _words(3),
        "repaired",
        "repaired: cut to 3 words",
    ),
    ("none", None, None, None, "failed", EMPTY),
    ("empty", "", None, None, "failed", EMPTY),
    ("blank", " \n ", None, None, "failed", EMPTY),
    (
        "truncated",
        '{"spatial_caption": "A dog',
        None,
        None,
        "failed",
        f"{TRUNCATED} (Unterminated string starting at, char 20)",
    ),
    (  # the error of the first {...} candidate
        "prose with a brace",
        "A dog {left} of a chair",
        None,
        None,
        "failed",
        "invalid JSON: Expecting property name enclosed in double quotes (char 7)",
    ),
    (
        "not a string",
        '{"spatial_caption": 3}',
        None,
        None,
        "failed",
        "invalid spatial caption: expected a string field 'spatial_caption', got 3",
    ),
    (
        "missing",
        '{"caption": "A dog."}',
        None,
        None,
        "failed",
        "invalid spatial caption: expected a string field 'spatial_caption', got None",
    ),
    (
        "long non-string cut to 60 characters",
        json.dumps({"spatial_caption": ["a" * 100]}),
        None,
        None,
        "failed",
        "invalid spatial caption: expected a string field 'spatial_caption', got ['" + "a" * 58,
    ),
    ("blank caption", '{"spatial_caption": " \\n "}', None, None, "failed", "empty spatial caption"),
]


@pytest.mark.parametrize(
    ("raw", "max_words", "value", "status", "error"),
    [a[1:] for a in CAPTION_ANSWERS],
    ids=[a[0] for a in CAPTION_ANSWERS],
)
def test_parse_spatial_caption_exact_results(
    raw: str | None, max_words: int | None, value: str | None, status: str, error: str | None
) -> None:
    parsed = parse_spatial_caption(raw) if max_words is None else parse_spatial_caption(raw, max_words)
    assert tuple(parsed) == (value, status, error)
    if max_words is None:  # the registered task parses with the same default
        assert get_task("spatial_caption").parse(raw) == parsed


def test_registry_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert task_names() == ["paragraph", "scene_graph", "spatial_caption", "text_to_graph"]
    with pytest.raises(ValueError) as info:
        get_task("judge")  # needs a vocabulary: only through judge_task
    assert str(info.value) == "unknown task 'judge'; known tasks: paragraph, scene_graph, spatial_caption, text_to_graph"
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    with pytest.raises(ValueError) as info:
        register_task("scene_graph", lambda limits: get_task("text_to_graph", limits))
    assert str(info.value) == "task 'scene_graph' is already registered"
    assert get_task("scene_graph").name == "scene_graph"  # the first registration stays
    seen: list[Limits] = []

    def factory(limits: Limits) -> Task:
        seen.append(limits)
        return get_task("spatial_caption")

    register_task("caption_again", factory)
    assert task_names() == ["caption_again", "paragraph", "scene_graph", "spatial_caption", "text_to_graph"]
    get_task("caption_again")
    get_task("caption_again", LIMITS)
    assert seen == [Limits(), LIMITS]


@pytest.mark.parametrize(
    ("name", "needs_image", "needs_caption"),
    [("scene_graph", True, False), ("text_to_graph", False, True), ("spatial_caption", True, False)],
)
def test_task_inputs_and_prompt_version(name: str, needs_image: bool, needs_caption: bool) -> None:
    task = get_task(name)
    assert task.name == name
    assert (task.needs_image, task.needs_caption) == (needs_image, needs_caption)
    sha1 = hashlib.sha1((PROMPTS_DIR / f"{name}.v1.md").read_bytes()).hexdigest()
    assert task.prompt_version == task.prompt.prompt_version == f"v1+{sha1[:8]}"
    request = task.request("a dog", image=b"jpeg bytes")
    assert request.image == (b"jpeg bytes" if needs_image else None)
    assert request.schema is task.schema and request.schema_name == name


def test_judge_is_an_image_task_with_its_own_prompt() -> None:
    task = judge_task(VOCABULARY)
    assert task.name == "judge" and (task.needs_image, task.needs_caption) == (True, False)
    sha1 = hashlib.sha1((PROMPTS_DIR / "judge.v1.md").read_bytes()).hexdigest()
    assert task.prompt_version == f"v1+{sha1[:8]}"
    assert task.schema == SceneGraph.json_schema(vocabulary=VOCABULARY)
    assert task.request(image=b"png").image == b"png"


@pytest.mark.parametrize("name", ["scene_graph", "text_to_graph", "judge", "spatial_caption"])
def test_requests_render_the_published_prompt_with_limits_and_vocabulary(name: str) -> None:
    task = judge_task(VOCABULARY, LIMITS) if name == "judge" else get_task(name, LIMITS)
    values = {"max_objects": 7, "max_relations": 9, "max_attributes": 3, "caption": "two dogs chasing a ball"}
    values |= {"names": "dog, sofa, window", "predicates": "lying on, next to", "max_words": 80}
    system, user = _published(name)
    request = task.request("  two dogs chasing a ball \n", image=b"img")
    assert (request.system, request.user) == (_fill(system, values), _fill(user, values))
    assert "${" not in request.system + request.user
    flat = _flat(request.user)
    if name == "spatial_caption":
        assert "Use at most 80 words." in flat
        return
    assert "At most 7 objects and 9 relations" in flat and "at most 3 per object" in flat
    if name == "judge":
        assert "Use only these object names: dog, sofa, window." in flat
        assert "Use only these predicates: lying on, next to." in flat
    if name == "text_to_graph":
        assert '\n"two dogs chasing a ball"\n' in request.user
        assert '\n""\n' in task.request(None).user


def test_limit_variables_name_each_limit() -> None:
    assert tasks._limit_variables(LIMITS) == {"max_objects": 7, "max_relations": 9, "max_attributes": 3}
    assert tasks._limit_variables(Limits()) == {"max_objects": 64, "max_relations": 128, "max_attributes": 8}
    assert get_task("scene_graph", LIMITS).variables == {
        "max_objects": 7,
        "max_relations": 9,
        "max_attributes": 3,
    }
    assert judge_task(VOCABULARY, LIMITS).variables == {
        "max_objects": 7,
        "max_relations": 9,
        "max_attributes": 3,
        "names": "dog, sofa, window",
        "predicates": "lying on, next to",
    }
    assert get_task("spatial_caption", LIMITS).variables == {"max_words": 80}


def test_render_fills_both_sections_and_needs_every_variable() -> None:
    prompt = PromptTemplate("t", "v3", frozenset({"caption"}), "Sys ${a}.", "User ${b} costs $$5.", "ab" * 20)
    assert prompt.render({"a": 1, "b": "two", "unused": 0}) == ("Sys 1.", "User two costs $5.")
    assert prompt.prompt_version == "v3+abababab"
    with pytest.raises(KeyError):
        prompt.render({"a": 1})


@pytest.mark.parametrize(
    ("task_name", "caption", "image_error", "reason"),
    [
        ("scene_graph", None, None, None),
        ("scene_graph", None, "", None),
        ("scene_graph", "", "truncated image: x", "truncated image: x"),
        ("spatial_caption", None, "cannot identify image file", "cannot identify image file"),
        ("text_to_graph", None, None, NO_CAPTION),
        ("text_to_graph", "", None, NO_CAPTION),
        ("text_to_graph", " \n ", None, NO_CAPTION),
        ("text_to_graph", "a cat", "cannot identify image file", None),
    ],
)
def test_skip_reason(
    task_name: str, caption: str | None, image_error: str | None, reason: str | None
) -> None:
    assert get_task(task_name).skip_reason(caption, image_error) == reason


@pytest.mark.parametrize("name", ["scene_graph", "text_to_graph", "judge"])
def test_scene_graph_columns_for_none_and_a_graph(name: str) -> None:
    task = judge_task(VOCABULARY) if name == "judge" else get_task(name)
    assert task.output_columns == {"scene_graph": SCENE_GRAPH_TYPE, "sg_text": pa.string()}
    assert task.columns(None) == {"scene_graph": None, "sg_text": None}
    columns = task.columns(UMBRELLA)
    assert columns == {"scene_graph": GRAPH, "sg_text": "female young person holding red umbrella"}
    table = pa.Table.from_pylist([columns, task.columns(None)], schema=pa.schema(task.output_columns))
    assert table.column("sg_text").to_pylist() == ["female young person holding red umbrella", None]


def test_spatial_caption_columns_and_schema() -> None:
    task = get_task("spatial_caption", LIMITS)  # a caption ignores graph limits
    assert task.output_columns == {"spatial_caption": pa.string()}
    assert task.columns(None) == {"spatial_caption": None}
    assert task.columns("A dog.") == {"spatial_caption": "A dog."}
    word = "[A-Za-z0-9,.;:!?'()-]{1,24}"
    assert task.schema == {
        "title": "SpatialCaption",
        "type": "object",
        "properties": {"spatial_caption": {"type": "string", "pattern": f"^{word}( {word}){{0,79}}$"}},
        "required": ["spatial_caption"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        ({"spatial_caption": "A dog sits left of a chair; (it's small)!"}, True),
        ({"spatial_caption": _words(80)}, True),
        ({"spatial_caption": _words(81)}, False),
        ({"spatial_caption": "a" * 24}, True),
        ({"spatial_caption": "a" * 25}, False),
        ({"spatial_caption": 'a "quoted" dog'}, False),
        ({"spatial_caption": "back\\slash"}, False),
        ({"spatial_caption": "A dog.\nA cat."}, False),
        ({"spatial_caption": "A  dog"}, False),
        ({"spatial_caption": " A dog"}, False),
        ({"spatial_caption": ""}, False),
        ({"spatial_caption": 3}, False),
        ({}, False),
        ({"spatial_caption": "A dog", "extra": 1}, False),
    ],
)
def test_spatial_caption_schema_bounds(answer: dict, valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(get_task("spatial_caption").schema)
    assert validator.is_valid(answer) == valid


def _answer(objects: int = 3, attributes: int = 3, relations: int = 9, **changes: object) -> dict:
    """A scene-graph answer at every bound of LIMITS, with `changes` to one object or relation."""
    answer = {
        "objects": [{"id": i, "name": "dog", "attributes": ["brown"] * attributes} for i in range(objects)],
        "relations": [{"subject": 0, "predicate": "next to", "object": 1}] * relations,
    }
    if "object" in changes:
        answer["objects"][0] |= changes["object"]
    if "relation" in changes:
        answer["relations"][0] |= changes["relation"]
    return answer


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        (_answer(), True),
        (_answer(objects=7), True),
        (_answer(objects=8), False),
        (_answer(objects=0, relations=0), False),  # at least one object
        (_answer(attributes=0, relations=0), True),
        (_answer(attributes=4), False),
        (_answer(relations=10), False),
        (_answer(object={"id": 6}), True),
        (_answer(object={"id": 7}), False),
        (_answer(object={"id": -1}), False),
        (_answer(relation={"object": 6}), True),
        (_answer(relation={"object": 7}), False),
        (_answer(object={"name": "a" * 24}), True),
        (_answer(object={"name": "a" * 25}), False),
        (_answer(object={"name": "Dog"}), False),
        (_answer(object={"extra": 1}), False),
        ({"objects": _answer()["objects"]}, False),
    ],
)
def test_scene_graph_task_schema_bounds(answer: dict, valid: bool) -> None:
    for task in (get_task("scene_graph", LIMITS), get_task("text_to_graph", LIMITS)):
        assert task.schema == SceneGraph.json_schema(LIMITS)
        assert jsonschema.Draft202012Validator(task.schema).is_valid(answer) == valid


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({}, True),
        ({"object": {"name": "sofa"}}, True),
        ({"object": {"name": "cat"}}, False),
        ({"relation": {"predicate": "lying on"}}, True),
        ({"relation": {"predicate": "on"}}, False),
        ({"object": {"attributes": ["any colour"]}}, True),  # attributes stay free text
    ],
)
def test_judge_schema_allows_only_its_vocabulary(changes: dict, valid: bool) -> None:
    task = judge_task(VOCABULARY, LIMITS)
    assert task.schema == SceneGraph.json_schema(LIMITS, vocabulary=VOCABULARY)
    assert jsonschema.Draft202012Validator(task.schema).is_valid(_answer(**changes)) == valid
    assert jsonschema.Draft202012Validator(task.schema).is_valid(_answer(objects=8)) is False


def _write_prompt(
    directory, name: str, front: str, body: str = "## system\nS ${a}\n\n## user\nU ${b}\n"
) -> None:
    (directory / f"{name}.v1.md").write_bytes(f"---\n{front}---\n{body}".encode())


def test_load_prompt_reads_front_matter_and_normalises_line_ends(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompting, "PROMPTS_DIR", tmp_path)
    front = "task: lp_both\nversion: v1\n\ninputs: caption , image\nnote: a: b\n"
    _write_prompt(tmp_path, "lp_both", front)
    text = (tmp_path / "lp_both.v1.md").read_bytes()
    prompt = load_prompt("lp_both", "v1")
    assert prompt == PromptTemplate(
        "lp_both", "v1", frozenset({"image", "caption"}), "S ${a}", "U ${b}", hashlib.sha1(text).hexdigest()
    )
    (tmp_path / "lp_crlf.v1.md").write_bytes(text.replace(b"lp_both", b"lp_crlf").replace(b"\n", b"\r\n"))
    crlf = load_prompt("lp_crlf", "v1")
    assert (crlf.system, crlf.user, crlf.inputs) == ("S ${a}", "U ${b}", prompt.inputs)
    assert crlf.sha1 == hashlib.sha1(text.replace(b"lp_both", b"lp_crlf")).hexdigest()


@pytest.mark.parametrize(
    ("name", "front", "body", "message"),
    [
        ("lp_nofront", None, None, "missing '---' front matter"),
        (
            "lp_task",
            "task: other\nversion: v1\ninputs: image\n",
            None,
            "front matter says task='other' version='v1'",
        ),
        (
            "lp_version",
            "task: lp_version\nversion: v2\ninputs: image\n",
            None,
            "front matter says task='lp_version' version='v2'",
        ),
        (
            "lp_noinputs",
            "task: lp_noinputs\nversion: v1\n",
            None,
            "inputs must be a subset of ['caption', 'image'], got []",
        ),
        (
            "lp_audio",
            "task: lp_audio\nversion: v1\ninputs: image, audio\n",
            None,
            "inputs must be a subset of ['caption', 'image'], got ['audio', 'image']",
        ),
        (
            "lp_nouser",
            "task: lp_nouser\nversion: v1\ninputs: image\n",
            "## system\nS\n",
            "needs exactly one '## system' and one '## user' section",
        ),
        (
            "lp_twosystems",
            "task: lp_twosystems\nversion: v1\ninputs: image\n",
            "## system\nS\n## user\nU\n## system\nT\n",
            "needs exactly one '## system' and one '## user' section",
        ),
    ],
)
def test_load_prompt_rejects_bad_files(
    tmp_path, monkeypatch: pytest.MonkeyPatch, name, front, body, message
) -> None:
    monkeypatch.setattr(prompting, "PROMPTS_DIR", tmp_path)
    if front is None:
        (tmp_path / f"{name}.v1.md").write_text("## system\nS\n## user\nU\n", encoding="utf-8")
    elif body is None:
        _write_prompt(tmp_path, name, front)
    else:
        _write_prompt(tmp_path, name, front, body)
    with pytest.raises(ValueError) as info:
        load_prompt(name, "v1")
    assert str(info.value) == f"{tmp_path / f'{name}.v1.md'}: {message}"


def test_spatial_caption_word_bound_reaches_prompt_schema_and_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "SPATIAL_CAPTION_MAX_WORDS", 3)
    task = get_task("spatial_caption")
    assert task.variables == {"max_words": 3} and "Use at most 3 words." in _flat(task.request().user)
    validator = jsonschema.Draft202012Validator(task.schema)
    assert validator.is_valid({"spatial_caption": _words(3)}) and not validator.is_valid(
        {"spatial_caption": _words(4)}
    )
    assert tuple(task.parse(json.dumps({"spatial_caption": _words(4)}))) == (
        _words(3),
        "repaired",
        "repaired: cut to 3 words",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # a fence holding code after a complete answer does not hide the answer
        ('{"objects": []} and\n```python\nprint(1)\n```', ({"objects": []}, ["ignored text around the JSON object"])),
        ('```Json\n{"objects": []}\n```', ({"objects": []}, ["removed a Markdown code fence around the JSON"])),
    ],
)
def test_extract_json_looks_past_a_fence_without_json(raw: str, expected) -> None:
    assert extract_json(raw, ("objects",)) == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ('["A dog sits left of a chair."]', "not a JSON object: the answer is a JSON array"),
        ("null", "not a JSON object: the answer is JSON null"),
        ("true", "not a JSON object: the answer is a JSON boolean"),
        ("4.5", "not a JSON object: the answer is a JSON number"),
    ],
)
def test_json_that_is_not_an_object_is_never_taken_for_a_prose_caption(raw: str, error: str) -> None:
    assert tuple(parse_spatial_caption(raw)) == (None, "failed", error)


@pytest.mark.parametrize("name", ["scene_graph", "text_to_graph", "spatial_caption", "paragraph"])
def test_each_task_has_an_example_answer_its_grammar_and_parser_accept(name: str) -> None:
    """The answer `--engine fixed --model builtin` gives every row: valid under the task's JSON schema (what the
    hf engine's grammar enforces) and parsed as it is, without repairs."""
    task = get_task(name)
    assert task.example_answer is not None
    jsonschema.validate(json.loads(task.example_answer), task.schema)
    parsed = task.parse(task.example_answer)
    assert (parsed.status, parsed.error) == ("ok", None)
    if name == "paragraph":  # the fewest repeats of its sentence that reach the length the prompt asks for
        words = len(parsed.value.split())
        assert PARAGRAPH_MIN_WORDS <= words < PARAGRAPH_MIN_WORDS + 13, words


def test_a_one_word_spatial_caption_is_kept() -> None:
    """A spatial caption needs one word (a paragraph needs `PARAGRAPH_MIN_USABLE_WORDS`)."""
    assert tuple(parse_spatial_caption('{"spatial_caption": "centered"}')) == ("centered", "ok", None)
    assert tuple(parse_spatial_caption("centered")) == (
        "centered", "repaired", "repaired: the answer is not JSON; used the text as the caption"
    )  # fmt: skip
