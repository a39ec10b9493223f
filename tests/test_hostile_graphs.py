"""Hostile inputs: graph text is data, not markup; every converter returns a valid graph or names the field.

Expected values are written by hand (an independent oracle); nothing here is computed with the code under test.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Limits, RecordError, SceneGraph, SceneGraphError, SGObject, SGRelation, converters

MARKUP = [
    "<script>alert(1)</script>",
    "\"'><img src=x onerror=alert(1)>",
    "{{7*7}}",
    "${jndi:ldap://x/a}",
    "`rm -rf /`",
    "robert'); drop table students;--",
    "a\\u003cb",
    "fish &amp; chips",
    "[click](http://x)",
    "x=1",
    "evil\u202etxt.exe",  # right-to-left override
    "zero\u200bwidth",  # zero-width space
    "bell\x07",
]

REAL_LABELS = [
    "man's shirt",
    "man\u2019s hat",
    "t-shirt",
    "café",
    "straße",
    "no. 5",
    "1st floor",
    "2",
    "frisbee/disc",
    "wii controller (white)",
    "red, white",
    "日本語",
    "наушники",
    "bird's-eye view",
    "e\u0301cole",  # combining accent
]


def one(name: str = "man", attributes: list[str] | None = None, predicate: str = "near") -> SceneGraph:
    return SceneGraph([SGObject(0, name, attributes or []), SGObject(1, "tree")], [SGRelation(0, predicate, 1)])


# ---------------------------------------------------------------------- the text rule in problems()/validate()


@pytest.mark.parametrize("bad", MARKUP)
@pytest.mark.parametrize("where", ["objects[0].name", "objects[0].attributes[0]", "relations[0].predicate"])
def test_markup_and_code_characters_fail_validation(bad: str, where: str):
    graph = {
        "objects[0].name": one(name=bad),
        "objects[0].attributes[0]": one(attributes=[bad]),
        "relations[0].predicate": one(predicate=bad),
    }[where]
    assert not graph.is_valid()
    with pytest.raises(SceneGraphError) as info:
        graph.validate()
    assert len(info.value.problems) >= 1
    assert all(p.startswith(where) for p in info.value.problems), info.value.problems


def test_markup_problem_names_the_characters():
    problems = one(name="<script>alert(1)</script>").problems()
    assert problems == [
        "objects[0].name '<script>alert(1)</script>': characters not allowed in graph text: '<', '>'"
    ]


@pytest.mark.parametrize("label", REAL_LABELS)
def test_real_labels_pass(label: str):
    one(name=label, attributes=[label], predicate=label).validate()


@pytest.mark.parametrize("bad", ["-tree", "'s", ".", "(left) man", "/"])
def test_text_must_begin_with_a_letter_or_digit(bad: str):
    assert one(name=bad).problems() == [f"objects[0].name {bad!r}: must begin with a letter or digit"]


def test_underscores_and_case_are_a_normalisation_problem_not_a_character_problem():
    assert one(name="Traffic_Light").problems() == [
        "objects[0].name 'Traffic_Light' is not normalised (lower-case, trimmed, single spaces, no underscores)"
    ]


def test_ids_must_fit_the_int32_row_column():
    graph = SceneGraph([SGObject(2**40, "man"), SGObject(1, "tree")], [SGRelation(2**40, "near", 1)])
    assert graph.problems() == [f"objects[0].id: id {2**40} outside 0..2147483647"]
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(0, "man"), SGObject(1, "tree")], [SGRelation(0, "near", 1)])


def test_non_string_text_is_a_problem_not_a_crash():
    graph = SceneGraph([SGObject(0, 5), SGObject(1, "tree", [None])], [SGRelation(0, b"on", 1)])  # type: ignore[arg-type]
    assert graph.problems() == [
        "objects[0].name: expected a string, got int",
        "objects[1].attributes[0]: expected a string, got NoneType",
        "relations[0].predicate: expected a string, got bytes",
    ]
    repaired, _ = graph.repair()
    assert repaired == SceneGraph([SGObject(0, "tree")], [])


# ---------------------------------------------------------------------- repair() drops, never strips


def test_repair_drops_markup_text_and_says_why():
    graph = SceneGraph(
        [
            SGObject(0, "<script>alert(1)</script>"),
            SGObject(1, " Man ", ["Red\"><img>", "Tall"]),
            SGObject(2, "ca<b>t"),
            SGObject(3, "Tree"),
        ],
        [SGRelation(1, "Near", 3), SGRelation(1, "on<b>", 3), SGRelation(0, "near", 1), SGRelation(2, "near", 1)],
    )
    repaired, changes = graph.repair()
    assert repaired == SceneGraph(
        [SGObject(0, "man", ["tall"]), SGObject(1, "tree")],
        [SGRelation(0, "near", 1)],
    )
    text = "\n".join(changes)
    for expected in (
        "dropped objects[0].name '<script>alert(1)</script>': characters not allowed in graph text: '<', '>'",
        "dropped objects[0] (id 0): no usable name",
        "dropped objects[1].attributes[0] 'Red\"><img>': characters not allowed in graph text: '\"', '>', '<'",
        "normalised objects[1].attributes[1]: 'Tall' -> 'tall'",
        "dropped objects[2].name 'ca<b>t': characters not allowed in graph text: '<', '>'",
        "dropped relations[1].predicate 'on<b>': characters not allowed in graph text: '<', '>'",
        "dropped relations[1]: no usable predicate",
        "dropped relations[2]: subject id not among the objects",
        "dropped relations[3]: subject id not among the objects",
    ):
        assert expected in text, expected
    assert repaired.repair()[1] == []


def test_repair_drops_text_starting_with_punctuation():
    graph = SceneGraph([SGObject(0, "-Tree"), SGObject(1, "Man", ["'S", "Old"])], [])
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(0, "man", ["old"])], [])
    assert "dropped objects[0].name '-Tree': must begin with a letter or digit" in changes
    assert "dropped objects[1].attributes[0] \"'S\": must begin with a letter or digit" in changes


def test_huge_hostile_values_give_bounded_messages():
    huge_markup = "<" * 1_000_000
    huge_word = "Aa" * 500_000
    for bad in (huge_markup, huge_word, "a" * 999_999 + "<"):
        graph = one(name=bad, attributes=[bad], predicate=bad)
        problems = graph.problems()
        assert 0 < len("; ".join(problems)) < 1000, problems
        with pytest.raises(SceneGraphError) as info:
            graph.validate()
        assert len(str(info.value)) < 1000
        repaired, changes = graph.repair()
        assert repaired == SceneGraph([SGObject(0, "tree")], [])
        assert len("; ".join(changes)) < 1000, changes


def test_repair_of_10000_objects_summarises_the_drops():
    graph = SceneGraph([SGObject(i, "tree") for i in range(10_000)], [])
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(i, "tree") for i in range(64)], [])
    text = "; ".join(changes)
    assert len(text.encode()) < 4096
    assert changes == ["dropped 9936 objects (objects[64..9999]): over the limit of 64 objects"]


def test_repair_of_10000_bad_items_caps_the_change_lines():
    graph = SceneGraph(
        [SGObject(i, f"Tree <{i}>", [f"Red{i}"] * 20) for i in range(10_000)] + [SGObject(10_000, "dog")],
        [SGRelation(i, "NEAR", i + 1) for i in range(10_000)] + [SGRelation(10_000, "on", 10_000)] * 5000,
    )
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(0, "dog")], [])
    text = "; ".join(changes)
    assert len(text.encode()) < 4096
    assert len(changes) <= 22
    assert re.fullmatch(r"\.\.\. and \d+ more changes", changes[-1]), changes[-1]
    assert "dropped objects[0].name 'Tree <0>': characters not allowed in graph text: '<', '>'" in changes


def test_repair_of_10000_relations_summarises_the_drops():
    graph = SceneGraph(
        [SGObject(i, "tree") for i in range(200)],
        [SGRelation(i % 200, "near", (i + 1 + i // 200) % 200) for i in range(10_000)],
    )
    repaired, changes = graph.repair()
    assert len(repaired.relations) == 128
    text = "; ".join(changes)
    assert len(text.encode()) < 4096
    assert "over the limit of 128 relations" in text
    assert "dropped 136 objects (objects[64..199]): over the limit of 64 objects" in changes


def test_validation_error_of_a_huge_graph_is_bounded():
    graph = SceneGraph([SGObject(i, "<b>") for i in range(10_000)], [])
    with pytest.raises(SceneGraphError) as info:
        graph.validate()
    assert len(info.value.problems) == 10_001  # the list keeps every problem
    message = str(info.value)
    assert len(message.encode()) < 4096
    assert message.endswith("; ... and 9981 more problems")


# ---------------------------------------------------------------------- the decoding grammar is a subset of the rule

_PATTERNS = [Limits().text_pattern, r"^[a-z][a-z ]{0,7}$"]  # the default and the tiny test server's pattern


@settings(deadline=None)
@given(st.sampled_from(_PATTERNS).flatmap(lambda p: st.from_regex(p, fullmatch=True)))
def test_everything_the_grammar_emits_passes_the_text_rule(text: str):
    assert not any("not allowed" in p or "must begin" in p for p in one(name=text).problems())
    repaired, changes = one(name=text, attributes=[text], predicate=text).repair()
    assert not any(c.startswith("dropped") for c in changes), changes  # at most whitespace is normalised
    repaired.validate()


# ---------------------------------------------------------------------- converters: valid graph or a named field


def assert_record_error(convert, record, field: str) -> RecordError:
    with pytest.raises(RecordError) as info:
        convert(record)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    assert len(str(info.value)) < 2000
    return info.value


def test_laion_sg_hostile_record_is_repaired():
    record = {
        "img_id": "7",
        "items": [
            {"item_id": 0, "label": "Man ", "attributes": ["Young", "young ", "<b>bold</b>"], "global_item_id": 1},
            {"item_id": 1, "label": "UMBRELLA", "attributes": None},
            {"item_id": 2, "label": "<script>alert(1)</script>", "attributes": []},
        ],
        "relations": [
            {"triple_id": 0, "item1": 0, "relation": "Holding ", "item2": 1},
            {"triple_id": 1, "item1": 0, "relation": "holding", "item2": 1},
            {"triple_id": 2, "item1": 1, "relation": "on", "item2": 1},
            {"triple_id": 3, "item1": 2, "relation": "near", "item2": 0},
            {"triple_id": 4, "item1": 0, "relation": "near", "item2": 9},
        ],
    }
    changes: list[str] = []
    graph = converters.from_laion_sg(record, changes=changes)
    assert graph == SceneGraph(
        [SGObject(0, "man", ["young"]), SGObject(1, "umbrella")], [SGRelation(0, "holding", 1)]
    )
    graph.validate()
    assert SceneGraph.from_laion_sg(record) == graph
    assert "dropped relations[2]: self-loop on object 1" in changes
    assert "dropped relations[1]: duplicate relation" in changes


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"img_id": "7", "items": [{"item_id": 0, "label": 42}]}, "items[0].label"),
        ({"img_id": "7", "items": [{"item_id": 0, "label": "man"}], "relations": {"item1": 0}}, "relations"),
        ({"img_id": "7", "items": [{"item_id": 0, "label": "man"}], "relations": {}}, "relations"),
        ({"img_id": "7", "items": [{"item_id": 0, "label": "man", "attributes": "red"}]}, "items[0].attributes"),
        ({"img_id": "7", "items": [{"item_id": 0, "label": "man", "attributes": ""}]}, "items[0].attributes"),
        ({"img_id": "7", "items": [{"item_id": "\u00b2", "label": "man"}]}, "items[0].item_id"),
        ({"img_id": "7", "items": [{"item_id": "9" * 5000, "label": "man"}]}, "items[0].item_id"),
        ({"img_id": "7", "items": [{"item_id": 0, "label": "<b>"}, {"item_id": 1, "label": " "}]}, "items"),
        ({"img_id": "7", "items": None}, "items"),
        ({"img_id": "7", "items": [{"item_id": 10**40, "label": "man"}]}, "items[0].item_id"),
        ({"img_id": "x" * 100_000, "items": [{"item_id": 0}]}, "items[0].label"),
    ],
)
def test_laion_sg_broken_records_name_the_field(record, field):
    assert_record_error(converters.from_laion_sg, record, field)


def test_a_valid_record_is_returned_as_read():
    record = {"img_id": "8", "items": [{"item_id": 3, "label": "dog"}, {"item_id": 7, "label": "sofa"}],
              "relations": [{"item1": 3, "relation": "lying on", "item2": 7}]}
    changes: list[str] = []
    graph = SceneGraph.from_laion_sg(record, changes=changes)
    assert graph == SceneGraph([SGObject(3, "dog"), SGObject(7, "sofa")], [SGRelation(3, "lying on", 7)])
    assert changes == []


@pytest.mark.parametrize(
    "convert", [converters.from_sg2im, converters.from_vlm_raw, SceneGraph.from_json], ids=["sg2im", "vlm", "json"]
)
def test_json_with_an_integer_too_long_for_int_names_the_json(convert):
    text = '{"objects": ["a"], "items": ["a_0"], "relationships": [], "relations": [[0, "on", 1' + "0" * 5000 + "]]}"
    assert_record_error(convert, text, "<json>")


def test_visual_genome_hostile_entry_is_repaired():
    entry = {
        "image_id": 1,
        "objects": [
            {"object_id": 1058498, "names": ["Man "], "attributes": ["White ", "white", "tall&amp;"]},
            {"object_id": 5046, "name": "STREET"},
            {"object_id": 77, "names": ["sign\"><img src=x onerror=alert(1)>"]},
        ],
        "relationships": [
            {"relationship_id": 1, "predicate": "ON", "subject_id": 1058498, "object_id": 5046},
            {"relationship_id": 2, "predicate": "on ", "subject_id": 1058498, "object_id": 5046},
            {"relationship_id": 3, "predicate": "near", "subject_id": 5046, "object_id": 5046},
            {"relationship_id": 4, "predicate": "on", "subject_id": 77, "object_id": 5046},
            {"relationship_id": 5, "predicate": "<b>by</b>", "subject_id": 5046, "object_id": 1058498},
        ],
    }
    graph = SceneGraph.from_visual_genome(entry)
    assert graph == SceneGraph([SGObject(0, "man", ["white"]), SGObject(1, "street")], [SGRelation(0, "on", 1)])
    graph.validate()


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"image_id": 5, "objects": [{"object_id": 1, "names": [5]}]}, "objects[0].names[0]"),
        ({"image_id": 5, "objects": [{"object_id": 1, "name": 5}]}, "objects[0].name"),
        ({"image_id": 5, "objects": [{"object_id": "abc", "names": ["a"]}]}, "objects[0].object_id"),
        ({"image_id": 5, "objects": [{"object_id": 1, "names": ["a"]}], "relationships": "on"}, "relationships"),
        ({"image_id": 5, "objects": {"object_id": 1}}, "objects"),
        (
            {"image_id": 5, "objects": [{"object_id": 1, "names": ["a"]}, {"object_id": 2, "names": ["b"]}],
             "relationships": [{"subject_id": 1, "object_id": 2, "predicate": ["on"]}]},
            "relationships[0].predicate",
        ),
        ({"image_id": 5, "objects": [{"object_id": 1, "names": ["{{x}}"]}]}, "objects"),
    ],
)
def test_visual_genome_broken_entries_name_the_field(entry, field):
    assert_record_error(converters.from_visual_genome, entry, field)


def test_sg2im_hostile_json_is_repaired():
    obj = {
        "objects": ["Sky ", "SHEEP", "grass", "<img src=x>"],
        "relationships": [[1, "Standing On", 2], [1, "standing  on", 2], [0, "above", 0], [3, "on", 2], [0, "above", 1]],
    }
    graph = SceneGraph.from_sg2im(json.dumps(obj))
    assert graph == SceneGraph(
        [SGObject(0, "sky"), SGObject(1, "sheep"), SGObject(2, "grass")],
        [SGRelation(1, "standing on", 2), SGRelation(0, "above", 1)],
    )
    graph.validate()


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"objects": "sky"}, "objects"),
        ({"objects": ["sky", 3]}, "objects[1]"),
        ({"objects": ["sky", "sea"], "relationships": [[0, "on", "x"]]}, "relationships[0][2]"),
        ({"objects": ["sky", "sea"], "relationships": {"0": "on"}}, "relationships"),
        ({"objects": ["sky", "sea"], "relationships": [[0, None, 1]]}, "relationships[0][1]"),
        ({"objects": ["`x`"]}, "objects"),
    ],
)
def test_sg2im_broken_json_names_the_field(obj, field):
    assert_record_error(converters.from_sg2im, obj, field)


def test_vlm_raw_hostile_output_is_repaired():
    raw = {
        "items": ["Person_0", "Umbrella_1 ", "<script>_2"],
        "attributes": [[0, "Young", "young"], [1, "RED "], [2, "evil"]],
        "relations": [[0, "Holding", 1], [0, "holding ", 1], [1, "on", 1], [2, "near", 0], [0, "near", 8]],
    }
    changes: list[str] = []
    graph = SceneGraph.from_vlm_raw(raw, changes=changes)
    assert graph == SceneGraph(
        [SGObject(0, "person", ["young"]), SGObject(1, "umbrella", ["red"])], [SGRelation(0, "holding", 1)]
    )
    graph.validate()
    assert any("characters not allowed in graph text: '<', '>'" in c for c in changes)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"items": "person_0"}, "items"),
        ({"items": [5]}, "items[0]"),
        ({"items": ["person_0"], "relations": "0 holding 1"}, "relations"),
        ({"items": ["person_0"], "attributes": {"0": "red"}}, "attributes"),
        ({"items": ["person_0"], "attributes": [[0, 7]]}, "attributes[0][1]"),
        ({"items": ["person_0", "cup_1"], "relations": [[0, "on", "cup"]]}, "relations[0][2]"),
        ({"items": ["<b>_0"]}, "items"),
    ],
)
def test_vlm_raw_broken_output_names_the_field(raw, field):
    assert_record_error(converters.from_vlm_raw, raw, field)


def test_from_json_parses_faithfully_and_validate_catches_markup():
    """`from_json` is the parser of our own shape (no repair); `validate()`/`repair()` decide."""
    graph = SceneGraph.from_json({"objects": [{"id": 0, "name": "<script>alert(1)</script>"}], "relations": []})
    assert graph == SceneGraph([SGObject(0, "<script>alert(1)</script>")], [])
    assert not graph.is_valid()
    assert graph.repair()[0] == SceneGraph([], [])


# ---------------------------------------------------------------------- exact boundaries of the field checks


def test_bounds_are_inclusive_exactly_at_the_limit():
    """A text of exactly `max_text_length` characters and the id 2**31 - 1 are valid; one more is not. An id of
    10**30 is named by its bit length, 10**30 - 1 by its digits; a string or a bool is not an id."""
    limits = Limits(max_text_length=12)
    assert one(name="a" * 12).problems(limits) == []
    assert one(name="a" * 13).problems(limits) == ["objects[0].name is longer than 12 characters"]
    top = 2**31 - 1
    assert SceneGraph([SGObject(top, "man")], []).problems() == []
    assert SceneGraph([SGObject(top + 1, "man")], []).problems() == [
        f"objects[0].id: id {top + 1} outside 0..2147483647"
    ]
    assert SceneGraph([SGObject(10**30 - 1, "man")], []).problems() == [
        f"objects[0].id: id {10**30 - 1} outside 0..2147483647"
    ]
    assert SceneGraph([SGObject(10**30, "man")], []).problems() == [
        f"objects[0].id: id of {(10**30).bit_length()} bits outside 0..2147483647"
    ]
    for bad, kind in (("0", "str"), (True, "bool"), (1.0, "float")):
        assert SceneGraph([SGObject(bad, "man")], []).problems() == [  # type: ignore[arg-type]
            f"objects[0].id: expected an integer, got {kind}"
        ]


@pytest.mark.parametrize("bad_items", [19, 20, 21, 25])
def test_repair_lists_twenty_changes_then_counts_the_rest_exactly(bad_items: int):
    """repair() writes one line per change up to 20 (`_MAX_CHANGE_LINES`), then one count of the rest (here one
    dropped attribute per object, one change each)."""
    graph = SceneGraph([SGObject(i, "dog", [f"Red <{i}>"]) for i in range(bad_items)], [])
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(i, "dog") for i in range(bad_items)], [])
    assert changes[: min(bad_items, 20)] == [
        f"dropped objects[{i}].attributes[0] 'Red <{i}>': characters not allowed in graph text: '<', '>'"
        for i in range(min(bad_items, 20))
    ]
    assert changes[20:] == ([f"... and {bad_items - 20} more changes"] if bad_items > 20 else [])


@pytest.mark.parametrize(
    ("graph", "problems", "repaired", "changes"),
    [
        (
            SceneGraph([SGObject(0, "dog", "brown")], []),  # type: ignore[arg-type]
            ["objects[0].attributes: expected a list, got str"],
            SceneGraph([SGObject(0, "dog")], []),
            ["dropped objects[0].attributes: expected a list, got str"],
        ),
        (
            SceneGraph([SGObject(0, "dog", ["brown", "brown"])], []),
            ["objects[0].attributes: duplicate attributes"],
            SceneGraph([SGObject(0, "dog", ["brown"])], []),
            ["dropped objects[0].attributes[1]: duplicate 'brown'"],
        ),
        (
            SceneGraph(
                [SGObject(0, "dog"), SGObject(1, "cat")],
                [SGRelation("0", "near", 1), SGRelation(0, "near", None)],  # type: ignore[arg-type]
            ),
            ["relations[0].subject: id '0' is not an object id", "relations[1].object: id None is not an object id"],
            SceneGraph([SGObject(0, "dog"), SGObject(1, "cat")], []),
            ["dropped relations[0]: subject id not among the objects", "dropped relations[1]: object id not among the objects"],
        ),
        (
            SceneGraph([SGObject(0, "dog")], [SGRelation(5, "near", 7)]),
            ["relations[0].subject: id 5 is not an object id", "relations[0].object: id 7 is not an object id"],
            SceneGraph([SGObject(0, "dog")], []),
            ["dropped relations[0]: subject and object id not among the objects"],
        ),
        (
            SceneGraph([SGObject("a", "dog"), SGObject(1, "cat")], []),  # type: ignore[arg-type]
            ["objects[0].id: expected an integer, got str"],
            SceneGraph([SGObject(0, "cat")], []),
            ["dropped objects[0]: id is not an integer (str)", "renumbered object ids densely: 1->0"],
        ),
        (
            SceneGraph(
                [SGObject(0, "dog"), SGObject(1, "cat")],
                [SGRelation(0, "near", 1), SGRelation(1, "on", 0), SGRelation(0, "by", 1), SGRelation(1, "under", 0)],
            ),
            ["relations: 4 relations exceed the limit of 2"],
            SceneGraph([SGObject(0, "dog"), SGObject(1, "cat")], [SGRelation(0, "near", 1), SGRelation(1, "on", 0)]),
            ["dropped 2 relations (relations[2..3]): over the limit of 2 relations"],
        ),
    ],
    ids=["attributes-not-a-list", "duplicate-attribute", "relation-ids-not-int", "both-ends-dangling",
         "object-id-not-int", "relations-over-limit"],
)
def test_problems_and_repair_of_hostile_fields_exactly(graph, problems, repaired, changes):
    """Hand-written expected messages and repairs for hostile field types and counts (max_relations=2)."""
    limits = Limits(max_relations=2)
    assert graph.problems(limits) == problems
    assert graph.repair(limits) == (repaired, changes)


@pytest.mark.parametrize("count", [10, 11, 12])
def test_renumbering_message_shows_ten_ids_then_the_count(count: int):
    graph = SceneGraph([SGObject(100 + i, "dog") for i in range(count)], [])
    repaired, changes = graph.repair()
    assert repaired == SceneGraph([SGObject(i, "dog") for i in range(count)], [])
    shown = ", ".join(f"{100 + i}->{i}" for i in range(10))
    more = f", ... ({count} ids in all)" if count > 10 else ""
    assert changes == [f"renumbered object ids densely: {shown}{more}"]
