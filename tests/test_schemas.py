"""The data contract: invariants, repair, canonical text, JSON schema and converters."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    Limits,
    RecordError,
    SceneGraph,
    SceneGraphError,
    SGObject,
    SGRelation,
    Vocabulary,
    as_scene_graph,
    converters,
    flip_graph,
)


def person_book() -> SceneGraph:
    return SceneGraph(
        [SGObject(0, "person", ["young", "male"]), SGObject(1, "book", ["small"]), SGObject(2, "lamp", [])],
        [SGRelation(0, "holding", 1)],
    )


# ---------------------------------------------------------------------- validate / repair


def test_valid_graph_passes_and_text_is_canonical():
    graph = person_book().validate()
    assert graph.to_text() == "young male person holding small book, lamp"


def test_validate_names_every_problem():
    graph = SceneGraph(
        [SGObject(0, "Person"), SGObject(0, "book"), SGObject(2, " ")],
        [SGRelation(0, "on", 0), SGRelation(0, "holding", 7), SGRelation(0, "holding", 7)],
    )
    with pytest.raises(SceneGraphError) as info:
        graph.validate()
    problems = "\n".join(info.value.problems)
    assert "objects[0].name 'Person' is not normalised" in problems
    assert "objects[1].id: duplicate id 0" in problems
    assert "objects[2].name" in problems
    assert "relations[0]: self-loop on object 0" in problems
    assert "relations[1].object: id 7 is not an object id" in problems
    assert "relations[2]: duplicate relation" in problems


def test_validate_enforces_limits():
    limits = Limits(max_objects=2, max_relations=1, max_attributes=1)
    graph = SceneGraph(
        [SGObject(0, "a", ["x", "y"]), SGObject(1, "b"), SGObject(2, "c")],
        [SGRelation(0, "p", 1), SGRelation(1, "p", 2)],
    )
    problems = graph.problems(limits)
    assert any("3 objects exceed the limit of 2" in p for p in problems)
    assert any("2 relations exceed the limit of 1" in p for p in problems)
    assert any("objects[0].attributes: more than 1" in p for p in problems)


def test_repair_reports_every_change_and_never_invents():
    graph = SceneGraph(
        [
            SGObject(3, " Tall  Man ", ["Young", "young", ""]),
            SGObject(3, "duplicate"),
            SGObject(7, "traffic_light"),
            SGObject(9, "\x00"),
        ],
        [
            SGRelation(3, "Standing Near", 7),
            SGRelation(3, "standing near", 7),
            SGRelation(3, "on", 3),
            SGRelation(3, "holding", 42),
            SGRelation(9, "near", 3),
        ],
    )
    repaired, changes = graph.repair()
    assert repaired == SceneGraph(
        [SGObject(0, "tall man", ["young"]), SGObject(1, "traffic light")],
        [SGRelation(0, "standing near", 1)],
    )
    text = "\n".join(changes)
    for expected in (
        "normalised objects[0].name",
        "duplicate 'young'",
        "dropped objects[0].attributes[2]: empty",
        "dropped objects[1]: duplicate id 3",
        "dropped objects[3] (id 9): no usable name",
        "renumbered object ids densely",
        "dropped relations[1]: duplicate relation",
        "dropped relations[2]: self-loop",
        "dropped relations[3]: object id not among the objects",
        "dropped relations[4]: subject id not among the objects",
    ):
        assert expected in text, expected
    names = {o.name for o in repaired.objects} | {a for o in repaired.objects for a in o.attributes}
    assert names <= {"tall man", "young", "traffic light"}


def test_repair_of_valid_graph_changes_nothing():
    graph = person_book()
    repaired, changes = graph.repair()
    assert repaired == graph and changes == []


def test_repair_applies_size_limits_keeping_first_items():
    limits = Limits(max_objects=2, max_relations=1, max_attributes=1)
    graph = SceneGraph(
        [SGObject(0, "a", ["x", "y"]), SGObject(1, "b"), SGObject(2, "c")],
        [SGRelation(0, "p", 1), SGRelation(1, "q", 0), SGRelation(1, "p", 2)],
    )
    repaired, changes = graph.repair(limits)
    assert repaired == SceneGraph([SGObject(0, "a", ["x"]), SGObject(1, "b")], [SGRelation(0, "p", 1)])
    assert repaired.is_valid(limits)
    assert sum("over the limit" in c for c in changes) == 3


# ---------------------------------------------------------------------- property-based

_text = st.text(alphabet=st.sampled_from("abcXYZ _-\t\x01é"), min_size=0, max_size=12)
_raw_graphs = st.builds(
    SceneGraph,
    st.lists(st.builds(SGObject, st.integers(-3, 80), _text, st.lists(_text, max_size=10)), max_size=70),
    st.lists(st.builds(SGRelation, st.integers(-3, 80), _text, st.integers(-3, 80)), max_size=140),
)


@settings(deadline=None)
@given(_raw_graphs)
def test_repair_output_always_validates(graph: SceneGraph):
    repaired, _ = graph.repair()
    repaired.validate()
    assert repaired.repair()[1] == []  # idempotent


@settings(deadline=None)
@given(_raw_graphs)
def test_json_round_trip_of_repaired_graphs_validates(graph: SceneGraph):
    repaired, _ = graph.repair()
    again = SceneGraph.from_json(repaired.to_json())
    assert again == repaired
    again.validate()
    jsonschema.validate(json.loads(repaired.to_json()), _schema_without_patterns())


def _schema_without_patterns() -> dict:
    """The decoding schema minus patterns and minItems (repaired graphs may hold non-ASCII names or no objects)."""
    schema = json.loads(json.dumps(SceneGraph.json_schema()).replace('"pattern"', '"x-pattern"'))
    schema["properties"]["objects"].pop("minItems")
    return schema


# ---------------------------------------------------------------------- JSON schema


def test_json_schema_accepts_valid_and_rejects_invalid():
    schema = SceneGraph.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(person_book().to_dict(), schema)
    bad = person_book().to_dict()
    bad["objects"][0]["name"] = "Person\n"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = person_book().to_dict()
    bad["relations"][0]["subject"] = 64
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _edit(path: str, value: object) -> dict:
    """person_book() as a dict with one value set (``objects.0.name``; ``value`` DELETE removes the key)."""
    graph = person_book().to_dict()
    *parents, last = path.split(".")
    node = graph
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value == "DELETE":
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return graph


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("objects", []),  # at least one object
        ("objects", "person"),
        ("objects.0", "person"),
        ("objects.0.name", 3),
        ("objects.0.id", "0"),
        ("objects.0.id", -1),
        ("objects.0.attributes", "young"),
        ("objects.0.attributes.0", 1),
        ("objects.0.attributes", ["a", "b", "c", "d", "e", "f", "g", "h", "i"]),  # > max_attributes
        ("objects.0.extra", 1),
        ("objects.0.attributes", "DELETE"),
        ("relations", {}),
        ("relations.0", "holding"),
        ("relations.0.predicate", 2),
        ("relations.0.object", 1.5),
        ("relations.0.extra", 1),
        ("relations.0.predicate", "DELETE"),
        ("relations", "DELETE"),
        ("extra", []),
    ],
)
def test_json_schema_rejects_each_kind_of_bad_graph(path: str, value: object):
    """Each constraint of the decoding schema, checked by an independent validator (jsonschema): the valid graph
    passes, and this one edit makes it fail."""
    schema = SceneGraph.json_schema()
    jsonschema.validate(person_book().to_dict(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_edit(path, value), schema)


def test_json_schema_bounds_follow_the_limits_and_the_vocabulary():
    """One object is enough; the limits bound objects, relations and attributes exactly; vocabulary enums are
    strings that refuse other words."""
    limits = Limits(max_objects=3, max_relations=1, max_attributes=2)
    schema = SceneGraph.json_schema(limits)
    assert schema["title"] == "SceneGraph"
    one = {"objects": [{"id": 0, "name": "cat", "attributes": ["a", "b"]}], "relations": []}
    jsonschema.validate(one, schema)
    for bad in (
        {**one, "objects": one["objects"] + [{"id": i, "name": "cat", "attributes": []} for i in (1, 2, 3)]},
        {**one, "objects": [{"id": 0, "name": "cat", "attributes": ["a", "b", "c"]}]},
        {**one, "relations": [{"subject": 0, "predicate": "on", "object": 0}] * 2},
        {**one, "objects": [{"id": 3, "name": "cat", "attributes": []}]},  # id beyond max_objects - 1
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    vocabulary = Vocabulary(names=("cat",), predicates=("on",))
    restricted = SceneGraph.json_schema(limits, vocabulary)
    jsonschema.validate({**one, "relations": [{"subject": 0, "predicate": "on", "object": 0}]}, restricted)
    for bad in (
        {**one, "objects": [{"id": 0, "name": "dog", "attributes": []}]},
        {**one, "relations": [{"subject": 0, "predicate": "under", "object": 0}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, restricted)
    assert restricted["properties"]["objects"]["items"]["properties"]["name"]["type"] == "string"
    assert restricted["properties"]["relations"]["items"]["properties"]["predicate"]["type"] == "string"
    assert schema["properties"]["objects"]["items"]["properties"]["attributes"]["items"]["type"] == "string"


def test_json_schema_with_vocabulary_uses_enums():
    vocabulary = Vocabulary.of(person_book())
    assert vocabulary == Vocabulary(names=("book", "lamp", "person"), predicates=("holding",))
    schema = SceneGraph.json_schema(vocabulary=vocabulary)
    item = schema["properties"]["objects"]["items"]["properties"]
    assert item["name"]["enum"] == ["book", "lamp", "person"]
    assert schema["properties"]["relations"]["items"]["properties"]["predicate"]["enum"] == ["holding"]


# ---------------------------------------------------------------------- converters: round trips


def test_laion_sg_round_trip_and_real_layout():
    record = {
        "img_id": "482027",
        "name": "482027.jpg",
        "caption_ori": "A man reading a book",
        "score": "6.71",
        "url": "http://example.com/a.jpg",
        "items": [
            {"item_id": 0, "label": "person", "attributes": ["young", "male"], "global_item_id": 3201},
            {"item_id": 1, "label": "book", "attributes": ["small"], "global_item_id": 3202},
            {"item_id": 2, "label": "lamp", "attributes": [], "global_item_id": 3203},
        ],
        "relations": [{"triple_id": 0, "item1": 0, "relation": "holding", "item2": 1, "global_relation_id": 11}],
    }
    graph = SceneGraph.from_laion_sg(record)
    assert graph == person_book()
    again = graph.to_laion_sg(img_id="482027", name="482027.jpg", caption="A man reading a book", score="6.71",
                              url="http://example.com/a.jpg", global_item_offset=3201, global_relation_offset=11)
    assert again == record
    assert SceneGraph.from_laion_sg(again) == graph


def test_visual_genome_round_trip_and_real_layout():
    entry = {
        "image_id": 1,
        "objects": [
            {"object_id": 1058498, "x": 421, "y": 91, "w": 79, "h": 339, "names": ["clock"], "synsets": ["clock.n.01"]},
            {"object_id": 5046, "name": "street", "attributes": ["sidewalk"]},
        ],
        "relationships": [
            {"relationship_id": 15927, "predicate": "ON", "subject_id": 1058498, "object_id": 5046, "synsets": []}
        ],
    }
    graph = SceneGraph.from_visual_genome(entry)
    # Visual Genome's raw "ON" is normalised: every converter returns a valid graph.
    assert graph == SceneGraph([SGObject(0, "clock"), SGObject(1, "street", ["sidewalk"])], [SGRelation(0, "on", 1)])
    graph.validate()
    assert SceneGraph.from_visual_genome(graph.to_visual_genome(image_id=1)) == graph


def test_sg2im_round_trip():
    obj = {"objects": ["sky", "sheep", "grass"], "relationships": [[1, "standing on", 2], [0, "above", 1]]}
    graph = SceneGraph.from_sg2im(obj)
    assert graph.to_sg2im() == obj
    assert SceneGraph.from_sg2im(json.dumps(obj)) == graph
    assert person_book().to_sg2im() == {"objects": ["person", "book", "lamp"], "relationships": [[0, "holding", 1]]}


def test_vlm_raw_round_trip():
    raw = {"items": ["person_0", "book_1"], "attributes": [[0, "male", "young"], [1, "small"]], "relations": [[0, "holding", 1]]}
    graph = SceneGraph.from_vlm_raw(raw)
    assert graph == SceneGraph([SGObject(0, "person", ["male", "young"]), SGObject(1, "book", ["small"])],
                               [SGRelation(0, "holding", 1)])
    assert graph.to_vlm_raw() == raw
    assert SceneGraph.from_vlm_raw(person_book().to_vlm_raw()) == person_book()


@settings(deadline=None)
@given(_raw_graphs)
def test_all_converters_round_trip_valid_graphs(graph: SceneGraph):
    graph, _ = graph.repair()
    assert SceneGraph.from_laion_sg(graph.to_laion_sg()) == graph
    assert SceneGraph.from_visual_genome(graph.to_visual_genome()) == graph
    assert SceneGraph.from_vlm_raw(graph.to_vlm_raw()) == graph
    without_attributes = SceneGraph([SGObject(o.id, o.name) for o in graph.objects], graph.relations)
    assert SceneGraph.from_sg2im(graph.to_sg2im()) == without_attributes



# ---------------------------------------------------------------------- as_scene_graph: the format told by its keys


def test_as_scene_graph_reads_every_shape():
    graph = person_book()
    assert as_scene_graph(graph) is graph  # a valid graph is returned as it is
    laion = graph.to_laion_sg(img_id="1")
    sg2im = {"objects": ["sky", "sheep"], "relationships": [[1, "under", 0]]}
    for value in (graph.to_json(), graph.to_json().encode(), graph.to_dict(), laion, json.dumps(laion)):
        assert as_scene_graph(value) == graph
    for value in (sg2im, json.dumps(sg2im)):
        assert as_scene_graph(value) == SceneGraph([SGObject(0, "sky"), SGObject(1, "sheep")], [SGRelation(1, "under", 0)])
    # a VLM's answer in our JSON with an extra `items` list (of names, not LAION-SG items) is our JSON
    assert as_scene_graph({**graph.to_dict(), "items": [o.name for o in graph.objects]}) == graph


def test_as_scene_graph_refuses_what_is_not_a_valid_graph():
    ours = person_book().to_dict()
    for value in ("[1, 2]", b'"text"', 7, [ours]):
        with pytest.raises(TypeError, match="a scene graph must be a SceneGraph, JSON object or mapping"):
            as_scene_graph(value)
    with pytest.raises(json.JSONDecodeError):
        as_scene_graph("{not json")
    with pytest.raises(SceneGraphError):  # our JSON and SceneGraph objects are validated, not repaired
        as_scene_graph({**ours, "relations": [{"subject": 0, "predicate": "holding", "object": 9}]})
    with pytest.raises(SceneGraphError):
        as_scene_graph(SceneGraph([SGObject(0, "Person")]))
    with pytest.raises(RecordError):  # the converters name the broken field
        as_scene_graph({"items": [{"item_id": 0}]})
    with pytest.raises(RecordError):
        as_scene_graph({"objects": ["a"], "relationships": [[0, "on", 3]]})


# ---------------------------------------------------------------------- flip_graph


def test_flip_graph_swaps_left_and_right_as_whole_words():
    graph = SceneGraph(
        [SGObject(0, "cup", ["left", "leftover"]), SGObject(1, "right hand", ["upright"]), SGObject(5, "plate")],
        [SGRelation(0, "to the left of", 1), SGRelation(1, "right of", 5), SGRelation(5, "near", 0)],
    )
    before = graph.to_json()
    flipped = flip_graph(graph)
    assert flipped == SceneGraph(
        [SGObject(0, "cup", ["right", "leftover"]), SGObject(1, "left hand", ["upright"]), SGObject(5, "plate")],
        [SGRelation(0, "to the right of", 1), SGRelation(1, "left of", 5), SGRelation(5, "near", 0)],
    )
    assert graph.to_json() == before  # the input is not changed
    assert flip_graph(flipped) == graph
    assert flip_graph(SceneGraph()) == SceneGraph()


# ---------------------------------------------------------------------- converters: malformed input

def test_error_messages_cut_long_problem_lists_and_hostile_record_ids() -> None:
    """A `SceneGraphError` shows its first 20 problems and counts the rest; a `RecordError` keeps a record id of
    up to 64 characters and cuts a longer one to 61 plus "..." (hand-written expectations)."""
    from schemas.errors import RecordError, SceneGraphError

    problems = [f"p{i}" for i in range(25)]
    error = SceneGraphError(problems)
    assert error.problems == problems
    assert str(error) == "invalid scene graph: " + "; ".join(problems[:20]) + "; ... and 5 more problems"
    assert str(SceneGraphError(problems[:20])) == "invalid scene graph: " + "; ".join(problems[:20])
    assert str(SceneGraphError(problems[:21])).endswith("; p19; ... and 1 more problems")

    for record, shown in (("a" * 64, "a" * 64), ("b" * 65, "b" * 61 + "..."), ("img_id=7", "img_id=7")):
        error = RecordError(record, "items[0]", "not a string")
        assert (error.record, error.field, error.reason) == (shown, "items[0]", "not a string")
        assert str(error) == f"record {shown}: field 'items[0]': not a string"


def test_record_field_readers_return_the_value_or_name_the_field() -> None:
    """The typed readers of untrusted records, on hand-picked values: integral floats and short digit strings
    are ids, bools and other text are not, ids are 64-bit signed, and each refusal names the record and field."""
    from schemas.errors import RecordError
    from schemas.record_fields import _require_int, _require_mapping, _require_mappings, _require_str_list

    def refusal(read, value, where: str = "f") -> str:
        with pytest.raises(RecordError) as info:
            read(value, "img_id=1", where)
        return str(info.value)

    for value, expected in ((7, 7), (3.0, 3), ("  42 ", 42), ("-7", -7), (2**63 - 1, 2**63 - 1), (-(2**63), -(2**63))):
        read = _require_int(value, "img_id=1", "f")
        assert read == expected and type(read) is int, value
    assert refusal(_require_int, True) == "record img_id=1: field 'f': expected an integer, got bool True"
    assert refusal(_require_int, 2.5) == "record img_id=1: field 'f': expected an integer, got float 2.5"
    assert refusal(_require_int, "1e3") == "record img_id=1: field 'f': expected an integer, got str '1e3'"
    nineteen = "9" * 19  # longer than an id written as text may be
    assert refusal(_require_int, nineteen) == f"record img_id=1: field 'f': expected an integer, got str '{nineteen}'"
    for out_of_range in (2**63, -(2**63) - 1):
        assert refusal(_require_int, out_of_range) == "record img_id=1: field 'f': integer of 64 bits is out of range"

    assert _require_mapping({"a": 1}, "img_id=1", "f") == {"a": 1}
    assert refusal(_require_mapping, 5) == "record img_id=1: field 'f': expected an object, got int"
    assert refusal(_require_mappings, [{}, 3], "objects") == (
        "record img_id=1: field 'objects[1]': expected an object, got int"
    )
    assert _require_str_list(["a", "b"], "img_id=1", "attributes") == ["a", "b"]
    assert refusal(_require_str_list, ["a", 1], "attributes") == (
        "record img_id=1: field 'attributes[1]': expected a string, got int 1"
    )


def test_converter_helpers_on_hand_picked_inputs() -> None:
    """Item names and ids of LAION-SG's raw shape, record names in messages, JSON decoding and the LAION-SG
    record layout, each against a hand-written expectation."""
    from schemas.converters import _decode, _record_name, _split_item, to_laion_sg
    from schemas.errors import RecordError

    for item, expected in [
        ("person_0", ("person", 0)),
        ("traffic_light_3", ("traffic_light", 3)),  # the id is after the last underscore
        (" dog ", ("dog", 7)),  # no suffix: the position is the id
        ("cat_x", ("cat_x", 7)),
        ("cat_\u0663", ("cat_\u0663", 7)),  # an Arabic-Indic digit is a digit, but not an ASCII id
        ("5", ("5", 7)),
        ("cat_123456789", ("cat", 123456789)),  # up to 9 digits
        ("cat_1234567890", ("cat_1234567890", 7)),
    ]:
        assert _split_item(item, 7, "r") == expected, item
    with pytest.raises(RecordError) as info:
        _split_item("  ", 2, "<vlm_raw>")
    assert str(info.value) == "record <vlm_raw>: field 'items[2]': empty item name"

    assert _record_name("img_id", 10**30) == "img_id=<an integer of 100 bits>"
    assert _record_name("img_id", 10**30 - 1) == "img_id=" + "9" * 30
    assert _record_name("img_id", 301) == "img_id=301"
    assert _record_name("img_id", "x" * 50) == "img_id=" + "x" * 40

    assert _decode('{"a": 1}', "r") == {"a": 1} and _decode({"b": 2}, "r") == {"b": 2}
    for text, message in [
        ("not json", "record r: field '<json>': invalid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[1]", "record r: field '<root>': expected an object, got list"),
    ]:
        with pytest.raises(RecordError) as info:
            _decode(text, "r")
        assert str(info.value) == message

    graph = SceneGraph.from_json(
        {
            "objects": [{"id": 0, "name": "man", "attributes": ["tall"]}, {"id": 1, "name": "dog", "attributes": []}],
            "relations": [{"subject": 0, "predicate": "walks", "object": 1}, {"subject": 1, "predicate": "near", "object": 0}],
        }
    )
    items = [
        {"item_id": 0, "label": "man", "attributes": ["tall"], "global_item_id": 0},
        {"item_id": 1, "label": "dog", "attributes": [], "global_item_id": 1},
    ]
    relations = [
        {"triple_id": 0, "item1": 0, "relation": "walks", "item2": 1, "global_relation_id": 0},
        {"triple_id": 1, "item1": 1, "relation": "near", "item2": 0, "global_relation_id": 1},
    ]
    empty = {"img_id": "", "name": "", "caption_ori": "", "score": "", "url": ""}
    assert to_laion_sg(graph) == empty | {"items": items, "relations": relations}
    shifted = to_laion_sg(graph, "7", "7.jpg", "a man", 6.5, "http://x", global_item_offset=10, global_relation_offset=20)
    assert shifted["score"] == "6.5" and (shifted["img_id"], shifted["caption_ori"]) == ("7", "a man")
    assert [i["global_item_id"] for i in shifted["items"]] == [10, 11]
    assert [r["global_relation_id"] for r in shifted["relations"]] == [20, 21]


def _vg(objects: list[Any], relationships: Any = None) -> dict[str, Any]:
    """A Visual Genome entry of image 3 (``relationships`` left out when None)."""
    entry: dict[str, Any] = {"image_id": 3, "objects": objects}
    return entry if relationships is None else {**entry, "relationships": relationships}


_ITEM = {"item_id": 0, "label": "cat"}
_VG_OBJECTS = [{"object_id": 10, "names": ["man"]}, {"object_id": 11, "name": "hat"}]
# Each malformed record of each source format, with the whole message it must raise (written by hand): the record
# (its id, or the format where it has none), the field's path and the reason.
MALFORMED_RECORDS: list[tuple[str, Any, str]] = [
    ("laion_sg", [], "record <laion_sg>: field '<root>': expected an object, got list"),
    ("laion_sg", {}, "record img_id=?: field '<root>.items': missing"),
    ("laion_sg", {"img_id": 7, "items": 5}, "record img_id=7: field 'items': expected a list, got int"),
    ("laion_sg", {"img_id": 7, "items": [3]}, "record img_id=7: field 'items[0]': expected an object, got int"),
    ("laion_sg", {"img_id": 7, "items": [{"label": "a"}]}, "record img_id=7: field 'items[0].item_id': missing"),
    ("laion_sg", {"img_id": 7, "items": [{"item_id": "x", "label": "a"}]},
     "record img_id=7: field 'items[0].item_id': expected an integer, got str 'x'"),
    ("laion_sg", {"img_id": 7, "items": [{"item_id": 0}]}, "record img_id=7: field 'items[0].label': missing"),
    ("laion_sg", {"img_id": 7, "items": [{"item_id": 0, "label": 1}]},
     "record img_id=7: field 'items[0].label': expected a string, got int 1"),
    ("laion_sg", {"img_id": 7, "items": [{**_ITEM, "attributes": "red"}]},
     "record img_id=7: field 'items[0].attributes': expected a list, got str"),
    ("laion_sg", {"img_id": 7, "items": [{**_ITEM, "attributes": ["red", 1]}]},
     "record img_id=7: field 'items[0].attributes[1]': expected a string, got int 1"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": "x"},
     "record img_id=7: field 'relations': expected a list, got str"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [1]},
     "record img_id=7: field 'relations[0]': expected an object, got int"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{}]},
     "record img_id=7: field 'relations[0].item1': missing"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{"item1": "a", "relation": "on", "item2": 0}]},
     "record img_id=7: field 'relations[0].item1': expected an integer, got str 'a'"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{"item1": 0, "item2": 0}]},
     "record img_id=7: field 'relations[0].relation': missing"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{"item1": 0, "relation": 5, "item2": 0}]},
     "record img_id=7: field 'relations[0].relation': expected a string, got int 5"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{"item1": 0, "relation": "on"}]},
     "record img_id=7: field 'relations[0].item2': missing"),
    ("laion_sg", {"img_id": 7, "items": [_ITEM], "relations": [{"item1": 0, "relation": "on", "item2": "b"}]},
     "record img_id=7: field 'relations[0].item2': expected an integer, got str 'b'"),
    ("laion_sg", {"img_id": 7, "items": [{"item_id": 0, "label": "!!!"}, {"item_id": 1, "label": "???"}]},
     "record img_id=7: field 'items': no usable object after repair (objects[i] is items[i]): "
     "dropped objects[0].name '!!!': characters not allowed in graph text: '!'; dropped objects[0] (id 0): no usable "
     "name; dropped objects[1].name '???': characters not allowed in graph text: '?'; dropped objects[1] (id 1): no "
     "usable name"),
    ("visual_genome", [], "record <visual_genome>: field '<root>': expected an object, got list"),
    ("visual_genome", {}, "record image_id=?: field '<root>.objects': missing"),
    ("visual_genome", {"image_id": 3, "objects": [5]},
     "record image_id=3: field 'objects[0]': expected an object, got int"),
    ("visual_genome", _vg([{"names": ["man"]}]), "record image_id=3: field 'objects[0].object_id': missing"),
    ("visual_genome", _vg([{"object_id": 10, "names": []}]), "record image_id=3: field 'objects[0].names': empty list"),
    ("visual_genome", _vg([{"object_id": 10, "names": [4]}]),
     "record image_id=3: field 'objects[0].names[0]': expected a string, got int 4"),
    ("visual_genome", _vg([{"object_id": 10}]), "record image_id=3: field 'objects[0].name': missing"),
    ("visual_genome", _vg([{"object_id": 10, "name": 2}]),
     "record image_id=3: field 'objects[0].name': expected a string, got int 2"),
    ("visual_genome", _vg([{"object_id": 10, "name": "man", "attributes": "tall"}]),
     "record image_id=3: field 'objects[0].attributes': expected a list, got str"),
    ("visual_genome", _vg([{"object_id": 10, "name": "man", "attributes": [3]}]),
     "record image_id=3: field 'objects[0].attributes[0]': expected a string, got int 3"),
    ("visual_genome", _vg([*_VG_OBJECTS, {"object_id": 10, "name": "dog"}]),
     "record image_id=3: field 'objects[2].object_id': duplicate object_id 10"),
    ("visual_genome", _vg(_VG_OBJECTS, 5), "record image_id=3: field 'relationships': expected a list, got int"),
    ("visual_genome", _vg(_VG_OBJECTS, [5]), "record image_id=3: field 'relationships[0]': expected an object, got int"),
    ("visual_genome", _vg(_VG_OBJECTS, [{}]), "record image_id=3: field 'relationships[0].subject_id': missing"),
    ("visual_genome", _vg(_VG_OBJECTS, [{"subject_id": "x", "predicate": "on", "object_id": 11}]),
     "record image_id=3: field 'relationships[0].subject_id': expected an integer, got str 'x'"),
    ("visual_genome", _vg(_VG_OBJECTS, [{"subject_id": 10, "predicate": "on", "object_id": 99}]),
     "record image_id=3: field 'relationships[0].object_id': object 99 is not in objects"),
    ("visual_genome", _vg(_VG_OBJECTS, [{"subject_id": 10, "object_id": 11}]),
     "record image_id=3: field 'relationships[0].predicate': missing"),
    ("visual_genome", _vg(_VG_OBJECTS, [{"subject_id": 10, "predicate": 4, "object_id": 11}]),
     "record image_id=3: field 'relationships[0].predicate': expected a string, got int 4"),
    ("visual_genome", _vg([{"object_id": 10, "names": ["..."]}]),
     "record image_id=3: field 'objects': no usable object after repair (relations[i] is relationships[i]): "
     "dropped objects[0].name '...': must begin with a letter or digit; dropped objects[0] (id 0): no usable name"),
    ("sg2im", {"relationships": []}, "record <sg2im>: field '<root>.objects': missing"),
    ("sg2im", {"objects": ["a", 1]}, "record <sg2im>: field 'objects[1]': expected a string, got int 1"),
    ("sg2im", {"objects": ["a"], "relationships": 3}, "record <sg2im>: field 'relationships': expected a list, got int"),
    ("sg2im", {"objects": ["a"], "relationships": [5]},
     "record <sg2im>: field 'relationships[0]': expected a list, got int"),
    ("sg2im", {"objects": ["a"], "relationships": [[0, "on"]]},
     "record <sg2im>: field 'relationships[0]': expected [subject, predicate, object], got 2 items"),
    ("sg2im", {"objects": ["a", "b"], "relationships": [["a", "on", 1]]},
     "record <sg2im>: field 'relationships[0][0]': expected an integer, got str 'a'"),
    ("sg2im", {"objects": ["a", "b"], "relationships": [[0, "on", "b"]]},
     "record <sg2im>: field 'relationships[0][2]': expected an integer, got str 'b'"),
    ("sg2im", {"objects": ["a", "b"], "relationships": [[0, "on", 2]]},
     "record <sg2im>: field 'relationships[0][2]': index 2 outside objects[0..1]"),
    ("sg2im", {"objects": ["a", "b", "c"], "relationships": [[-1, "on", 0]]},
     "record <sg2im>: field 'relationships[0][0]': index -1 outside objects[0..2]"),
    ("sg2im", {"objects": ["a", "b"], "relationships": [[0, 5, 1]]},
     "record <sg2im>: field 'relationships[0][1]': expected a string, got int 5"),
    ("sg2im", {"objects": ["#"]},
     "record <sg2im>: field 'objects': no usable object after repair (relations[i] is relationships[i]): "
     "dropped objects[0].name '#': characters not allowed in graph text: '#'; dropped objects[0] (id 0): no usable name"),
    ("vlm_raw", {}, "record <vlm_raw>: field '<root>.items': missing"),
    ("vlm_raw", {"items": ["a_0", "b_0"]}, "record <vlm_raw>: field 'items[1]': duplicate id 0"),
    ("vlm_raw", {"items": ["a_0", " "]}, "record <vlm_raw>: field 'items[1]': empty item name"),
    ("vlm_raw", {"items": ["a_0"], "attributes": 3}, "record <vlm_raw>: field 'attributes': expected a list, got int"),
    ("vlm_raw", {"items": ["a_0"], "attributes": [3]},
     "record <vlm_raw>: field 'attributes[0]': expected a list, got int"),
    ("vlm_raw", {"items": ["a_0"], "attributes": [[]]},
     "record <vlm_raw>: field 'attributes[0]': expected [id, attribute, ...], got []"),
    ("vlm_raw", {"items": ["a_0"], "attributes": [["x", "red"]]},
     "record <vlm_raw>: field 'attributes[0][0]': expected an integer, got str 'x'"),
    ("vlm_raw", {"items": ["a_0"], "attributes": [[5, "red"]]},
     "record <vlm_raw>: field 'attributes[0][0]': id 5 is not an item"),
    ("vlm_raw", {"items": ["a_0"], "attributes": [[0, "red", 3]]},
     "record <vlm_raw>: field 'attributes[0][2]': expected a string, got int 3"),
    ("vlm_raw", {"items": ["a_0"], "relations": 3}, "record <vlm_raw>: field 'relations': expected a list, got int"),
    ("vlm_raw", {"items": ["a_0"], "relations": [3]}, "record <vlm_raw>: field 'relations[0]': expected a list, got int"),
    ("vlm_raw", {"items": ["a_0"], "relations": [[0, "on"]]},
     "record <vlm_raw>: field 'relations[0]': expected [subject, predicate, object], got 2 items"),
    ("vlm_raw", {"items": ["a_0"], "relations": [["a", "on", 0]]},
     "record <vlm_raw>: field 'relations[0][0]': expected an integer, got str 'a'"),
    ("vlm_raw", {"items": ["a_0"], "relations": [[0, 1, 0]]},
     "record <vlm_raw>: field 'relations[0][1]': expected a string, got int 1"),
    ("vlm_raw", {"items": ["a_0"], "relations": [[0, "on", "c"]]},
     "record <vlm_raw>: field 'relations[0][2]': expected an integer, got str 'c'"),
    ("vlm_raw", {"items": ["%_0"]},
     "record <vlm_raw>: field 'items': no usable object after repair (objects[i] is items[i]): "
     "dropped objects[0].name '%': characters not allowed in graph text: '%'; dropped objects[0] (id 0): no usable name"),
    ("sg2im", "{not json",
     "record <sg2im>: field '<json>': invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
     "(char 1)"),
    ("scene_graph", '{"objects": [', "record <scene_graph>: field '<json>': invalid JSON: Expecting value: line 1 "
     "column 14 (char 13)"),
    ("scene_graph", "[1, 2]", "record <scene_graph>: field '<root>': expected an object, got list"),
    ("scene_graph", {"objects": 1}, "record <scene_graph>: field 'objects': expected a list, got int"),
    ("scene_graph", {"objects": [1]}, "record <scene_graph>: field 'objects[0]': expected an object, got int"),
    ("scene_graph", {"objects": [{"name": "a"}]}, "record <scene_graph>: field 'objects[0].id': missing"),
    ("scene_graph", {"objects": [{"id": None, "name": "a"}]},
     "record <scene_graph>: field 'objects[0].id': expected an integer, got NoneType None"),
    ("scene_graph", {"objects": [{"id": 0}]}, "record <scene_graph>: field 'objects[0].name': missing"),
    ("scene_graph", {"objects": [{"id": 0, "name": 1}]},
     "record <scene_graph>: field 'objects[0].name': expected a string, got int 1"),
    ("scene_graph", {"objects": [{"id": 0, "name": "a", "attributes": [2]}]},
     "record <scene_graph>: field 'objects[0].attributes[0]': expected a string, got int 2"),
    ("scene_graph", {"objects": [], "relations": 3}, "record <scene_graph>: field 'relations': expected a list, got int"),
    ("scene_graph", {"objects": [], "relations": [3]},
     "record <scene_graph>: field 'relations[0]': expected an object, got int"),
    ("scene_graph", {"relations": [{}]}, "record <scene_graph>: field 'relations[0].subject': missing"),
    ("scene_graph", {"relations": [{"subject": "s", "predicate": "on", "object": 0}]},
     "record <scene_graph>: field 'relations[0].subject': expected an integer, got str 's'"),
    ("scene_graph", {"relations": [{"subject": 0, "object": 0}]},
     "record <scene_graph>: field 'relations[0].predicate': missing"),
    ("scene_graph", {"relations": [{"subject": 0, "predicate": 1, "object": 0}]},
     "record <scene_graph>: field 'relations[0].predicate': expected a string, got int 1"),
    ("scene_graph", {"relations": [{"subject": 0, "predicate": "on"}]},
     "record <scene_graph>: field 'relations[0].object': missing"),
    ("scene_graph", {"relations": [{"subject": 0, "predicate": "on", "object": "o"}]},
     "record <scene_graph>: field 'relations[0].object': expected an integer, got str 'o'"),
]


@pytest.mark.parametrize(("source", "record", "message"), MALFORMED_RECORDS)
def test_each_malformed_record_is_refused_with_its_field_and_reason(source: str, record: Any, message: str) -> None:
    read = SceneGraph.from_json if source == "scene_graph" else getattr(converters, f"from_{source}")
    with pytest.raises(RecordError) as info:
        read(record)
    assert str(info.value) == message
    if source == "scene_graph":  # the caller's record name replaces the default one
        with pytest.raises(RecordError) as info:
            SceneGraph.from_json(record, record="row 5")
        assert str(info.value) == message.replace("<scene_graph>", "row 5")


def test_converters_hand_made_records_read_and_written() -> None:
    """Items without a numeric suffix take their position as id; a repairable Visual Genome entry reports each
    repair; `to_visual_genome` writes VG's own keys; `as_scene_graph` names what it cannot read."""
    from schemas.converters import as_scene_graph, from_visual_genome, from_vlm_raw, to_visual_genome

    assert from_vlm_raw({"items": ["cat", "dog_5"], "relations": [[0, "near", 5]]}) == SceneGraph(
        [SGObject(0, "cat"), SGObject(5, "dog")], [SGRelation(0, "near", 5)]
    )
    changes: list[str] = []
    entry = _vg(
        [{"object_id": 10, "names": ["Man "]}, {"object_id": 11, "names": ["hat"]}],
        [{"subject_id": 10, "predicate": "ON", "object_id": 11}, {"subject_id": 10, "predicate": "on", "object_id": 10}],
    )
    assert from_visual_genome(entry, changes=changes) == SceneGraph(
        [SGObject(0, "man"), SGObject(1, "hat")], [SGRelation(0, "on", 1)]
    )
    assert changes == [
        "normalised objects[0].name: 'Man ' -> 'man'",
        "normalised relations[0].predicate: 'ON' -> 'on'",
        "dropped relations[1]: self-loop on object 0",
    ]
    graph = SceneGraph([SGObject(4, "man", ["tall"]), SGObject(9, "hat")], [SGRelation(4, "wearing", 9)])
    assert to_visual_genome(graph, image_id=12) == {
        "image_id": 12,
        "objects": [
            {"object_id": 4, "names": ["man"], "attributes": ["tall"]},
            {"object_id": 9, "names": ["hat"], "attributes": []},
        ],
        "relationships": [{"relationship_id": 0, "subject_id": 4, "predicate": "wearing", "object_id": 9}],
    }
    for value, shown in (("[1]", "list"), (5, "int")):
        with pytest.raises(TypeError) as info:
            as_scene_graph(value)  # type: ignore[arg-type]
        assert str(info.value) == f"a scene graph must be a SceneGraph, JSON object or mapping, got {shown}"


def test_problems_go_on_past_each_broken_item_and_show_values_as_they_are() -> None:
    """`problems()` lists every violation: it reads on after an attribute field that is not a list and after a
    bad predicate; ids that are not integers are shown as reprs, huge ones by their size; a relation whose ends are
    not ids is never called a duplicate (hand-written lists)."""
    graph = SceneGraph(
        [SGObject(0, "cup", "red"), SGObject(1, "Plate"), SGObject(2, "fork")],  # type: ignore[arg-type]
        [
            SGRelation("x", "on", 0),  # type: ignore[arg-type]
            SGRelation("x", "on", 0),  # type: ignore[arg-type]
            SGRelation(0, "ON", 1),
            SGRelation(0, "near", 1),
            SGRelation(0, "near", 1),
            SGRelation(10**40, "near", 1),
        ],
    )
    assert graph.problems() == [
        "objects[0].attributes: expected a list, got str",
        "objects[1].name 'Plate' is not normalised (lower-case, trimmed, single spaces, no underscores)",
        "relations[0].subject: id 'x' is not an object id",
        "relations[1].subject: id 'x' is not an object id",
        "relations[2].predicate 'ON' is not normalised (lower-case, trimmed, single spaces, no underscores)",
        "relations[4]: duplicate relation (0, 'near', 1)",
        "relations[5].subject: id of 133 bits is not an object id",
    ]


def test_graph_json_and_the_class_shortcuts_to_the_converters() -> None:
    """`to_json` is compact and keeps non-ASCII text as it is; the `SceneGraph.from_*` shortcuts pass the limits
    and the change list through to the converters."""
    graph = SceneGraph([SGObject(0, "café", ["crème"]), SGObject(1, "table")], [SGRelation(0, "on", 1)])
    assert graph.to_json() == (
        '{"objects":[{"id":0,"name":"café","attributes":["crème"]},{"id":1,"name":"table","attributes":[]}],'
        '"relations":[{"subject":0,"predicate":"on","object":1}]}'
    )
    assert SceneGraph.from_json(graph.to_json()) == graph
    assert graph.to_visual_genome(image_id=42)["image_id"] == 42
    assert graph.to_visual_genome()["image_id"] == converters.to_visual_genome(graph)["image_id"] == 0
    one = Limits(max_objects=1)
    records = {
        SceneGraph.from_laion_sg: {"img_id": 1, "items": [{"item_id": 0, "label": "Cat"}, {"item_id": 1, "label": "dog"}]},
        SceneGraph.from_visual_genome: {"image_id": 1, "objects": [{"object_id": 5, "names": ["Cat"]},
                                                                    {"object_id": 6, "names": ["dog"]}]},
        SceneGraph.from_sg2im: {"objects": ["Cat", "dog"]},
        SceneGraph.from_vlm_raw: {"items": ["Cat_0", "dog_1"]},
    }
    for read, record in records.items():
        changes: list[str] = []
        assert read(record, limits=one, changes=changes) == SceneGraph([SGObject(0, "cat")]), read
        assert changes == [
            "normalised objects[0].name: 'Cat' -> 'cat'",
            "dropped 1 objects (objects[1]): over the limit of 1 objects",
        ], read


def test_text_rule_problem_names_the_first_eight_bad_characters() -> None:
    """The character rule's reason lists each bad character once, in order of appearance, at most eight of them."""
    from schemas.graph_text import text_rule_problem

    assert text_rule_problem("red apple") is None
    assert text_rule_problem("a!b!c?") == "characters not allowed in graph text: '!', '?'"
    many = "a" + "".join("!?#$%^*~=@" * 2)  # ten different characters not allowed, each twice
    assert text_rule_problem(many) == (
        "characters not allowed in graph text: '!', '?', '#', '$', '%', '^', '*', '~'"
    )
    assert text_rule_problem("-apple") == "must begin with a letter or digit"
    assert text_rule_problem("9 lives") is None


def test_repair_reports_each_drop_in_whole_at_the_limits() -> None:
    """Hand-written change lists: a name that is not a string, text of exactly the length limit (kept) and one over
    it, attributes and relations over their limits (each counted and spanned in one line); a graph of our JSON
    without a relations key has none."""
    limits = Limits(max_attributes=2, max_relations=1, max_text_length=8)
    graph = SceneGraph(
        [
            SGObject(0, 5),  # type: ignore[arg-type]
            SGObject(1, "abcdefgh", ["red", "big", "old", "wet"]),
            SGObject(2, "abcdefghi"),
            SGObject(3, "cup"),
        ],
        [SGRelation(1, "on", 3), SGRelation(3, "near", 1), SGRelation(1, "by", 3), SGRelation(3, "in", 1)],
    )
    repaired, changes = graph.repair(limits)
    assert repaired == SceneGraph(
        [SGObject(0, "abcdefgh", ["red", "big"]), SGObject(1, "cup")], [SGRelation(0, "on", 1)]
    )
    assert changes == [
        "dropped objects[0].name: expected a string, got int",
        "dropped objects[0] (id 0): no usable name",
        "dropped 2 attributes (objects[1].attributes[2..3]): over the limit of 2 attributes",
        "dropped objects[2].name: longer than 8 characters",
        "dropped objects[2] (id 2): no usable name",
        "renumbered object ids densely: 1->0, 3->1",
        "dropped 3 relations (relations[1..3]): over the limit of 1 relations",  # summaries come last
    ]
    assert SceneGraph.from_json('{"objects": [{"id": 0, "name": "cat"}]}') == SceneGraph([SGObject(0, "cat")])


@pytest.mark.parametrize("not_an_object", [[], "a graph", 3, None, [{"objects": [], "relations": []}]])
def test_json_schema_rejects_a_graph_that_is_not_an_object(not_an_object: Any) -> None:
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'object'"):
        jsonschema.validate(not_an_object, SceneGraph.json_schema())
