"""The question track: exact questions from hand-made graphs, DSG's dependency rule on hand-made answers (scores
worked out by hand in the comments), and the yes/no parser on hostile strings."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from benchmark.questions import (
    QUESTION_TEMPLATE_VERSION,
    SCORE_KEYS,
    ItemScore,
    Question,
    average_scores,
    counted_answers,
    generate_questions,
    parse_yes_no,
    score_item,
)
from benchmark.questions.generate import ordinal
from schemas import SceneGraph, SceneGraphError

ROOT = Path(__file__).resolve().parents[1]


def sg(objects: list[tuple[int, str, list[str]]], relations: list[tuple[int, str, int]] = ()) -> SceneGraph:
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n, "attributes": a} for i, n, a in objects],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    )


RIDER = sg(
    [(0, "man", ["young"]), (1, "horse", ["brown"]), (2, "hat", [])],
    [(0, "riding", 1), (0, "wearing", 2)],
)
DOGS = sg(
    [(0, "dog", ["black"]), (1, "dog", ["white", "small"]), (2, "umbrella", []), (3, "dog", [])],
    [(0, "chasing", 1), (1, "under", 2)],
)


def table(questions: tuple[Question, ...]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [(q.id, q.category, q.text, q.parents) for q in questions]


# ---------------------------------------------------------------------- generation


def test_questions_of_a_graph_with_attributes_and_relations():
    assert table(generate_questions(RIDER)) == [
        ("e0", "entity", "Is there a man?", ()),
        ("e0.a0", "attribute", "Is the man young?", ("e0",)),
        ("e1", "entity", "Is there a horse?", ()),
        ("e1.a0", "attribute", "Is the horse brown?", ("e1",)),
        ("e2", "entity", "Is there a hat?", ()),
        ("r0", "relation", "Is the man riding the horse?", ("e0", "e1")),
        ("r1", "relation", "Is the man wearing the hat?", ("e0", "e2")),
    ]


def test_objects_and_terms_name_the_graph_elements():
    by_id = {q.id: q for q in generate_questions(RIDER)}
    assert (by_id["e1"].objects, by_id["e1"].terms) == ((1,), ("horse",))
    assert (by_id["e1.a0"].objects, by_id["e1.a0"].terms) == ((1,), ("horse", "brown"))
    assert (by_id["r1"].objects, by_id["r1"].terms) == ((0, 2), ("man", "wearing", "hat"))


def test_repeated_names_are_numbered_in_graph_order_and_chained():
    # three dogs: one entity question each, asking for the n-th instance, each depending on the previous one
    assert table(generate_questions(DOGS)) == [
        ("e0", "entity", "Is there a dog?", ()),
        ("e0.a0", "attribute", "Is the first dog black?", ("e0",)),
        ("e1", "entity", "Is there a second dog?", ("e0",)),
        ("e1.a0", "attribute", "Is the second dog white?", ("e1",)),
        ("e1.a1", "attribute", "Is the second dog small?", ("e1",)),
        ("e2", "entity", "Is there an umbrella?", ()),
        ("e3", "entity", "Is there a third dog?", ("e1",)),
        ("r0", "relation", "Is the first dog chasing the second dog?", ("e0", "e1")),
        ("r1", "relation", "Is the second dog under the umbrella?", ("e1", "e2")),
    ]


def test_question_texts_are_unique_even_with_repeated_names():
    texts = [q.text for q in generate_questions(DOGS)]
    assert len(set(texts)) == len(texts)


def test_graph_without_relations_and_sparse_ids():
    graph = sg([(7, "apple", ["red", "shiny"]), (3, "table", [])])
    assert table(generate_questions(graph)) == [
        ("e7", "entity", "Is there an apple?", ()),
        ("e7.a0", "attribute", "Is the apple red?", ("e7",)),
        ("e7.a1", "attribute", "Is the apple shiny?", ("e7",)),
        ("e3", "entity", "Is there a table?", ()),
    ]


def test_empty_graph_has_no_questions():
    assert generate_questions(SceneGraph()) == ()


def test_generation_is_deterministic():
    assert generate_questions(DOGS) == generate_questions(SceneGraph.from_json(DOGS.to_json()))


def test_invalid_graph_is_refused():
    dangling = SceneGraph.from_json({"objects": [{"id": 0, "name": "man"}], "relations": [
        {"subject": 0, "predicate": "riding", "object": 5}]})
    with pytest.raises(SceneGraphError, match=r"relations\[0\]\.object"):
        generate_questions(dangling)
    with pytest.raises(SceneGraphError, match="character"):
        generate_questions(sg([(0, "<b>man</b>", [])]))


@pytest.mark.parametrize(
    ("n", "word"),
    [(1, "first"), (2, "second"), (3, "third"), (8, "eighth"), (10, "tenth"), (11, "11th"), (12, "12th"),
     (13, "13th"), (21, "21st"), (22, "22nd"), (23, "23rd"), (64, "64th"), (101, "101st"), (111, "111th"),
     (112, "112th")],
)
def test_ordinal(n: int, word: str):
    assert ordinal(n) == word


def test_ordinal_refuses_zero():
    with pytest.raises(ValueError):
        ordinal(0)


def test_articles_before_ordinals_and_names():
    graph = sg([(i, "cup", []) for i in range(18)] + [(18, "8-ball", []), (19, "owl", [])])
    texts = {q.id: q.text for q in generate_questions(graph)}
    assert texts["e7"] == "Is there an eighth cup?"
    assert texts["e9"] == "Is there a tenth cup?"
    assert texts["e10"] == "Is there an 11th cup?"
    assert texts["e11"] == "Is there a 12th cup?"
    assert texts["e17"] == "Is there an 18th cup?"
    assert texts["e18"] == "Is there an 8-ball?"
    assert texts["e19"] == "Is there an owl?"


def test_question_category_is_checked():
    with pytest.raises(ValueError, match="category"):
        Question("x", "global", "Is it a photo?")


def test_template_fingerprint_pins_the_version():
    """Any change to question texts, ids, order or parents changes this digest: bump QUESTION_TEMPLATE_VERSION
    (records state it) and update both values here."""
    questions = [asdict(q) for graph in (RIDER, DOGS) for q in generate_questions(graph)]
    digest = hashlib.sha1(json.dumps(questions, sort_keys=True).encode()).hexdigest()[:12]
    assert (QUESTION_TEMPLATE_VERSION, digest) == ("v1", "0ea72dcde5c1")


# ---------------------------------------------------------------------- scoring

RIDER_Q = generate_questions(RIDER)
DOGS_Q = generate_questions(DOGS)


def test_dependency_skipping_on_hand_made_answers():
    # no horse: "Is the horse brown?" and "Is the man riding the horse?" count as no although answered yes
    answers = {"e0": True, "e0.a0": True, "e1": False, "e1.a0": True, "e2": True, "r0": True, "r1": False}
    assert counted_answers(RIDER_Q, answers) == {
        "e0": True, "e0.a0": True, "e1": False, "e1.a0": False, "e2": True, "r0": False, "r1": False
    }
    # entity 2/3 (man, hat), attribute 1/2 (young), relation 0/2, overall 3/7; without the rule: 1, 1/2, 5/7
    assert score_item(RIDER_Q, answers) == ItemScore(
        entity=2 / 3, attribute=1 / 2, relation=0.0, overall=3 / 7, n_questions=7, n_yes=3, n_invalid=0, n_skipped=2
    )


def test_missing_and_invalid_answers_count_as_no():
    # e0.a0 invalid (None), e2 missing: both no; r1 (man wearing hat) then counts as no too although answered yes
    answers = {"e0": True, "e0.a0": None, "e1": True, "e1.a0": True, "r0": True, "r1": True}
    score = score_item(RIDER_Q, answers)
    # entity 2/3, attribute 1/2 (brown), relation 1/2 (riding), overall 4/7
    assert (score.entity, score.attribute, score.relation, score.overall) == pytest.approx((2 / 3, 1 / 2, 1 / 2, 4 / 7))
    assert (score.n_yes, score.n_invalid, score.n_skipped) == (4, 2, 1)


def test_no_answers_at_all_scores_zero():
    score = score_item(RIDER_Q, {})
    assert (score.entity, score.attribute, score.relation, score.overall) == (0.0, 0.0, 0.0, 0.0)
    assert (score.n_invalid, score.n_skipped) == (7, 0)


def test_all_yes_scores_one():
    score = score_item(DOGS_Q, {q.id: True for q in DOGS_Q})
    assert (score.entity, score.attribute, score.relation, score.overall) == (1.0, 1.0, 1.0, 1.0)


def test_the_rule_is_transitive():
    # no dog at all, yet the judge says there is a second dog, white and small, under the umbrella: the second
    # dog's entity counts as no (its parent "Is there a dog?" is no), so everything hanging on it counts as no
    answers = {q.id: True for q in DOGS_Q} | {"e0": False}
    counted = counted_answers(DOGS_Q, answers)
    assert [q for q, yes in counted.items() if yes] == ["e2"]
    score = score_item(DOGS_Q, answers)
    # entity 1/4 (umbrella), attribute 0/3, relation 0/2, overall 1/9; 7 yes answers skipped
    assert (score.entity, score.attribute, score.relation, score.overall) == pytest.approx((1 / 4, 0.0, 0.0, 1 / 9))
    assert score.n_skipped == 7


def test_categories_without_questions_score_none():
    questions = generate_questions(sg([(0, "cat", [])]))
    score = score_item(questions, {"e0": True})
    assert (score.entity, score.attribute, score.relation, score.overall) == (1.0, None, None, 1.0)
    empty = score_item((), {})
    assert (empty.entity, empty.attribute, empty.relation, empty.overall, empty.n_questions) == (
        None, None, None, None, 0
    )


def test_run_score_is_the_mean_of_item_scores_over_defined_items():
    a = score_item(RIDER_Q, {"e0": True, "e0.a0": True, "e1": False, "e1.a0": True, "e2": True, "r0": True})
    # a: entity 2/3, attribute 1/2, relation 0, overall 3/7 (r1 missing: invalid)
    b = score_item(generate_questions(sg([(0, "apple", ["red"])])), {"e0": True, "e0.a0": True})
    # b: entity 1, attribute 1, relation None, overall 1
    c = score_item(generate_questions(SceneGraph()), {})  # all None
    means, details = average_scores([a, b, c])
    # per-item mean: overall (3/7 + 1) / 2 = 5/7; pooled over questions it would be (3 + 2) / (7 + 2) = 5/9
    assert means == pytest.approx({"entity": 5 / 6, "attribute": 3 / 4, "relation": 0.0, "overall": 5 / 7})
    assert details == {
        "n_items": 3,
        "n_scored": {"entity": 2, "attribute": 2, "relation": 1, "overall": 2},
        "n_questions": 9,
        "n_invalid": 1,
        "n_skipped": 2,
    }


def test_run_score_without_items():
    means, details = average_scores([])
    assert means == dict.fromkeys(SCORE_KEYS)
    assert details["n_items"] == 0


def test_item_score_to_dict():
    assert score_item((), {}).to_dict() == {
        "entity": None, "attribute": None, "relation": None, "overall": None,
        "n_questions": 0, "n_yes": 0, "n_invalid": 0, "n_skipped": 0,
    }


def test_answers_to_unknown_questions_are_refused():
    with pytest.raises(ValueError, match="unknown question ids: 'e9'"):
        score_item(RIDER_Q, {"e0": True, "e9": True})


@pytest.mark.parametrize("value", ["yes", 1, 0.0, "no"])
def test_answers_must_be_bools(value):
    with pytest.raises(TypeError, match="parse_yes_no"):
        score_item(RIDER_Q, {"e0": value})


def test_malformed_question_lists_are_refused():
    entity = Question("e0", "entity", "Is there a cat?")
    attribute = Question("e0.a0", "attribute", "Is the cat black?", ("e0",))
    with pytest.raises(ValueError, match="duplicate question id"):
        score_item([entity, entity], {})
    with pytest.raises(ValueError, match="do not come before"):
        score_item([attribute, entity], {})
    loop = Question("x", "entity", "Is there x?", ("x",))
    with pytest.raises(ValueError, match="do not come before"):
        score_item([loop], {})


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        ("no", False),
        ("YES, it is", True),
        ("No, there is no dog.", False),
        ("  \n yes \n", True),
        ("**No**", False),
        ("'yes'", True),
        ('"Yes"', True),
        ("[yes]", True),
        ("Answer: No", False),
        ("The answer is yes.", True),
        ("ＹＥＳ", True),  # full-width letters
        ("\u200byes", True),  # a zero-width space first
        ('{"answer":"yes"}', True),
        ('{"answer": "No."}', False),
        ('{"Answer": "yes", "reason": "a dog is visible"}', True),
        ('{"answer": true}', True),
        ('{"answer": false}', False),
        ('```json\n{"answer": "yes"}\n```', True),
        ("```\nno\n```", False),
        # refused
        ("", None),
        ("   ", None),
        ("garbage", None),
        ("yesterday", None),
        ("none", None),
        ("nope", None),
        ("yeah", None),
        ("true", None),
        ("y", None),
        ("yes/no", None),
        ("Yes or no", None),
        ("no, yes", None),
        ("No. Yes.", None),
        ("I think yes", None),
        ("answer", None),
        ("{yes}", None),
        ('{"answer": "yes"', None),  # cut JSON
        ('{"answer": "no", "answer": "yes"}', None),  # repeated key
        ('{"answer": "no", "ANSWER": "yes"}', None),
        ('{"response": "yes"}', None),
        ('{"answer": 1}', None),
        ('{"answer": null}', None),
        ('{"answer": ["yes"]}', None),
        ('{"answer": "{\\"answer\\": \\"yes\\"}"}', None),  # JSON inside JSON
        ("[" * 100_000, None),
        ('{"a":' * 100_000, None),  # nesting deeper than the json module recurses
        ("{" + '"answer": "yes", ' * 1000 + "}", None),
        ("```" + " " * 100_000 + "x```", None),
        ("!" * 1_000_000, None),
        (None, None),
        (b"yes", None),
        (1, None),
        (True, None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


# ---------------------------------------------------------------------- imports


def test_importable_without_torch_or_ray():
    check = (
        "import sys, benchmark.questions\n"
        "heavy = sorted({'torch', 'ray', 'torchmetrics', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
