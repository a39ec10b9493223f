"""The compositing layout step: hand-made boxes with known problems and repairs, the engine answer's schema and
parser, and (hypothesis) every repaired layout passes the checks."""

from __future__ import annotations

import math

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.answers import failure_reason
from pipelines.compositing.layout import (
    LMD_CANVAS,
    Box,
    LayoutError,
    layout_json_schema,
    overlap,
    parse_layout,
    repair_layout,
    validate_layout,
)

CANVAS = (512, 512)
MIN, MAX = 32, 0.2  # minimum side in pixels, largest allowed overlap (intersection over the smaller box)


def check(boxes: list[Box], **kwargs) -> list[str]:
    return validate_layout(boxes, CANVAS, MIN, MAX, **kwargs)


def categories(problems: list[str]) -> list[str]:
    return [failure_reason(problem) for problem in problems]


GOOD = [Box("cat", 0, 0, 200, 200), Box("dog", 256, 0, 512, 256), Box("plant", 0, 300, 100, 512)]

# ---------------------------------------------------------------------------------------------------------------
# Box


def test_box_reads_lmd_xywh_and_scales() -> None:
    box = Box.from_xywh("car", [21, 181, 211, 159])  # from Gen4Gen's box prompt
    assert (box.x0, box.y0, box.x1, box.y1) == (21, 181, 232, 340)
    assert box.xywh == (21, 181, 211, 159) and box.area == 211 * 159
    assert box.scaled(LMD_CANVAS, (1024, 768)) == Box("car", 42, 271.5, 464, 510)  # x times 2, y times 1.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 0, 0, 1, 1), "non-empty string"),
        (("cat", 0, 0, 0, 1), "empty box"),
        (("cat", 0, 5, 1, 4), "empty box"),
        (("cat", math.nan, 0, 1, 1), "finite number"),
        (("cat", 0, 0, math.inf, 1), "finite number"),
        (("cat", True, 0, 1, 1), "finite number"),
        (("cat", "0", 0, 1, 1), "finite number"),
    ],
)
def test_box_refuses_what_is_not_a_box(args: tuple, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        Box(*args)


@pytest.mark.parametrize("xywh", [[0, 0, 0, 5], [0, 0, 5, -1], [0, 0, 5], "0 0 5 5", [0, 0, 5, None]])
def test_from_xywh_refuses_malformed_boxes(xywh) -> None:
    with pytest.raises(LayoutError):
        Box.from_xywh("cat", xywh)


# ---------------------------------------------------------------------------------------------------------------
# validate_layout


def test_a_good_layout_has_no_problem() -> None:
    assert check(GOOD) == []
    assert check(GOOD, concepts=["plant", "cat", "dog"]) == []
    assert check([Box("all", 0, 0, 512, 512)]) == []  # edges on the canvas border are inside


def test_outside_the_canvas() -> None:
    assert check([Box("cat", -10, 0, 100, 100)]) == [
        "outside the canvas: 'cat' (-10, 0, 100, 100) is not within 512x512"
    ]
    for box in (Box("c", 0, -1, 50, 50), Box("c", 0, 0, 513, 50), Box("c", 0, 0, 50, 512.5)):
        assert categories(check([box])) == ["outside the canvas"], box
    # (width, height): a 600 x 300 canvas holds x up to 600 and y up to 300
    assert validate_layout([Box("c", 500, 0, 600, 50)], (600, 300), MIN, MAX) == []
    assert categories(validate_layout([Box("c", 0, 250, 50, 301)], (600, 300), MIN, MAX)) == [
        "outside the canvas"
    ]


def test_minimum_size_is_a_side_length() -> None:
    assert check([Box("c", 0, 0, 32, 32)]) == []  # exactly the minimum
    assert check([Box("c", 0, 0, 31, 100)]) == ["too small: 'c' is 31x100, below the minimum side 32"]
    assert categories(check([Box("c", 0, 0, 500, 31.5)])) == ["too small"]  # a large sliver


def test_overlap_is_intersection_over_the_smaller_box() -> None:
    a = Box("a", 0, 0, 100, 100)
    b = Box("b", 50, 50, 150, 150)  # 2500 of a 10000 box: 0.25 (IoU 2500 / 17500 = 0.14 would pass 0.2)
    assert overlap(a, b) == overlap(b, a) == 0.25
    assert check([a, b]) == ["overlap: 'a' and 'b' overlap 0.25 of the smaller box, above 0.2"]
    big = Box("big", 0, 0, 400, 400)
    small = Box("small", 100, 100, 150, 150)  # hidden entirely: IoU 0.016
    assert overlap(big, small) == 1.0 and categories(check([big, small])) == ["overlap"]
    wide = Box("wide", 70, 0, 270, 200)  # 3000 over a's 10000: 0.3 (over its own 40000: 0.075)
    assert overlap(a, wide) == pytest.approx(0.3) and categories(check([a, wide])) == ["overlap"]


def test_overlap_at_the_bound_and_touching_edges_pass() -> None:
    a = Box("a", 0, 0, 100, 100)
    assert overlap(a, Box("b", 80, 0, 180, 100)) == 0.2 and check([a, Box("b", 80, 0, 180, 100)]) == []
    touching = Box("t", 100, 0, 200, 100)
    assert overlap(a, touching) == 0.0
    assert validate_layout([a, touching], CANVAS, MIN, 0.0) == []
    assert categories(validate_layout([a, Box("b", 99, 0, 199, 100)], CANVAS, MIN, 0.0)) == ["overlap"]
    assert validate_layout([a, Box("same", 0, 0, 100, 100)], CANVAS, MIN, 1.0) == []  # 1.0 allows anything


def test_one_box_per_concept() -> None:
    cat2 = Box("cat", 300, 300, 400, 400)
    assert check([*GOOD, cat2]) == ["duplicate concept: 'cat' has 2 boxes"]
    assert check(GOOD, concepts=["cat", "dog", "plant", "bird"]) == ["missing concept: no box for 'bird'"]
    assert categories(check(GOOD, concepts=["cat", "dog"])) == ["unknown concept"]
    assert check([]) == ["no boxes: a layout needs one box per concept"]


def test_every_problem_is_listed_in_order() -> None:
    boxes = [Box("cat", -5, 0, 20, 100), Box("cat", 0, 0, 100, 100), Box("dog", 600, 0, 700, 100)]
    assert categories(check(boxes, concepts=["cat", "dog", "bird"])) == [
        "duplicate concept",
        "missing concept",
        "outside the canvas",
        "too small",
        "outside the canvas",
        "overlap",
    ]


@pytest.mark.parametrize(
    ("canvas", "min_size", "max_overlap"),
    [((0, 512), MIN, MAX), ((512, math.inf), MIN, MAX), ((512,), MIN, MAX), (CANVAS, -1, MAX), (CANVAS, MIN, 1.5),
     (CANVAS, MIN, -0.1), (CANVAS, math.nan, MAX)],
)  # fmt: skip
def test_bad_arguments_are_not_layout_problems(canvas, min_size, max_overlap) -> None:
    for function in (validate_layout, repair_layout):
        with pytest.raises(ValueError) as info:
            function(GOOD, canvas, min_size, max_overlap)
        assert not isinstance(info.value, LayoutError)


# ---------------------------------------------------------------------------------------------------------------
# repair_layout


def test_a_good_layout_is_returned_unchanged() -> None:
    assert repair_layout(GOOD, CANVAS, MIN, MAX, concepts=["cat", "dog", "plant"]) == (GOOD, [])


def test_boxes_crossing_the_border_are_clipped() -> None:
    boxes = [Box("cat", -20, 10, 200, 210), Box("dog", 400, 400, 600, 700), Box("plant", 250, 0, 350, 100)]
    repaired, changes = repair_layout(boxes, CANVAS, MIN, MAX)
    assert repaired == [Box("cat", 0, 10, 200, 210), Box("dog", 400, 400, 512, 512), boxes[2]]
    assert changes == [
        "clipped 'cat' to the canvas: (-20, 10, 200, 210) -> (0, 10, 200, 210)",
        "clipped 'dog' to the canvas: (400, 400, 600, 700) -> (400, 400, 512, 512)",
    ]


def test_clipping_follows_width_and_height() -> None:
    boxes = [Box("cat", 500, 250, 700, 400), Box("dog", -50, -50, 100, 100)]
    repaired, changes = repair_layout(boxes, (600, 300), MIN, MAX)  # 600 wide, 300 high
    assert repaired == [Box("cat", 500, 250, 600, 300), Box("dog", 0, 0, 100, 100)] and len(changes) == 2


@pytest.mark.parametrize(
    ("boxes", "category"),
    [
        ([Box("cat", 600, 0, 700, 100)], "outside the canvas"),  # nothing inside: never dropped
        ([Box("cat", 512, 0, 600, 100)], "outside the canvas"),  # only its edge touches the canvas
        ([Box("cat", -90, 0, 20, 100)], "too small"),  # 20 wide once clipped
        ([Box("cat", 0, 0, 10, 100)], "too small"),
        ([Box("a", 0, 0, 100, 100), Box("b", 50, 50, 150, 150)], "overlap"),  # not moved apart
        ([Box("cat", 0, 0, 100, 100), Box("cat", 200, 200, 300, 300)], "duplicate concept"),
        ([], "no boxes"),
    ],
)
def test_what_clipping_cannot_fix_is_rejected_with_its_reason(boxes: list[Box], category: str) -> None:
    with pytest.raises(LayoutError) as info:
        repair_layout(boxes, CANVAS, MIN, MAX)
    assert isinstance(info.value, ValueError) and info.value.reason == str(info.value)
    assert failure_reason(info.value.reason) == category


def test_a_missing_or_unknown_concept_is_rejected() -> None:
    with pytest.raises(LayoutError, match="missing concept: no box for 'bird'"):
        repair_layout(GOOD, CANVAS, MIN, MAX, concepts=["cat", "dog", "plant", "bird"])
    with pytest.raises(LayoutError, match="unknown concept: 'plant'"):
        repair_layout(GOOD, CANVAS, MIN, MAX, concepts=["cat", "dog"])


def test_clipping_can_reveal_an_overlap_it_cannot_fix() -> None:
    # a 10 x 10 intersection: 100 / 10000 = 0.01 before clipping, 100 of the 20 x 100 clipped box = 0.05 after
    boxes = [Box("a", -80, 0, 20, 100), Box("b", 10, 90, 110, 190)]
    assert categories(validate_layout(boxes, CANVAS, 10, 0.02)) == ["outside the canvas"]
    with pytest.raises(LayoutError) as info:
        repair_layout(boxes, CANVAS, 10, 0.02)
    assert categories(info.value.reason.split("; ")) == ["overlap"]


# ---------------------------------------------------------------------------------------------------------------
# every repair passes validate (hypothesis)

NAMES = ("cat", "dog", "plant", "lion", "bird")


@st.composite
def layouts(draw):
    """1-4 boxes placed relative to a canvas of any aspect (so that many cross a border and many pass), with a
    minimum side relative to it and any overlap bound; rarely a duplicate concept, sometimes the concept list."""
    width, height = draw(st.integers(16, 600)), draw(st.integers(16, 600))
    count = draw(st.integers(1, 4))
    names = list(draw(st.permutations(NAMES)))[:count]
    if count > 1 and draw(st.integers(0, 9)) == 7:
        names[-1] = names[0]
    start, side = st.floats(-0.3, 0.95), st.floats(0.01, 0.8)
    boxes = []
    for name in names:
        x0, y0 = draw(start) * width, draw(start) * height
        boxes.append(Box(name, x0, y0, x0 + draw(side) * width, y0 + draw(side) * height))
    concepts = draw(st.one_of(st.none(), st.permutations(sorted(set(names)))))
    min_size = draw(st.floats(0, 0.3)) * min(width, height)
    return boxes, (width, height), min_size, draw(st.floats(0, 1)), concepts


@given(layouts())
def test_every_repaired_layout_passes_validate(layout) -> None:
    boxes, canvas, min_size, max_overlap, concepts = layout
    problems = validate_layout(boxes, canvas, min_size, max_overlap, concepts=concepts)
    try:
        repaired, changes = repair_layout(boxes, canvas, min_size, max_overlap, concepts=concepts)
    except LayoutError as exc:
        assert problems, "a valid layout was rejected"
        clipped = [box.clipped(canvas) for box in boxes]
        if None not in clipped:  # a rejection clipping could have fixed would be a bug
            assert validate_layout(clipped, canvas, min_size, max_overlap, concepts=concepts), exc.reason
        return
    assert validate_layout(repaired, canvas, min_size, max_overlap, concepts=concepts) == []
    assert [box.concept for box in repaired] == [box.concept for box in boxes]  # none dropped, same order
    assert len(changes) == sum(a != b for a, b in zip(boxes, repaired, strict=True))
    width, height = canvas
    for before, after in zip(boxes, repaired, strict=True):  # each box is its intersection with the canvas
        x0, y0, x1, y1 = max(before.x0, 0), max(before.y0, 0), min(before.x1, width), min(before.y1, height)
        assert (after.concept, after.x0, after.y0, after.x1, after.y1) == (before.concept, x0, y0, x1, y1)
        assert 0 <= after.x0 < after.x1 <= width and 0 <= after.y0 < after.y1 <= height
    assert repair_layout(repaired, canvas, min_size, max_overlap, concepts=concepts) == (repaired, [])
    if not problems:
        assert (repaired, changes) == (list(boxes), [])


# ---------------------------------------------------------------------------------------------------------------
# the engine's answer: JSON schema and parser

CONCEPTS = ["cat", "dog"]
ANSWER = {"boxes": {"cat": [21, 181, 211, 159], "dog": [269, 181, 209, 160]}, "background": "a sunny garden"}


def answer(**changes) -> dict:
    data = {"boxes": dict(ANSWER["boxes"]), "background": ANSWER["background"]}
    for key, value in changes.items():
        if key in data["boxes"]:
            data["boxes"][key] = value
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("data", "valid"),
    [
        (ANSWER, True),
        (answer(cat=[0, 0, 512, 512]), True),  # the largest box
        (answer(cat=[511, 511, 1, 1]), True),  # the last pixel
        (answer(cat=[512, 0, 10, 10]), False),  # starts outside
        (answer(cat=[0, 0, 0, 10]), False),  # empty
        (answer(cat=[0, 0, 513, 10]), False),  # wider than the canvas
        (answer(cat=[-1, 0, 10, 10]), False),
        (answer(cat=[0, 0, 10]), False),
        (answer(cat=[0, 0, 10, 10, 10]), False),
        (answer(cat=[0.5, 0, 10, 10]), False),  # whole pixels
        ({**ANSWER, "boxes": {**ANSWER["boxes"], "bird": [0, 0, 10, 10]}}, False),  # an unknown concept
        ({"boxes": {"cat": [0, 0, 10, 10]}, "background": "a garden"}, False),  # a missing one
        (answer(background=""), False),
        (answer(background='a "garden"'), False),
        (answer(background=" ".join(["word"] * 40)), True),
        (answer(background=" ".join(["word"] * 41)), False),
        ({"boxes": ANSWER["boxes"]}, False),
        ({**ANSWER, "note": "x"}, False),
    ],
)
def test_the_schema_admits_one_box_per_concept_on_the_canvas(data: dict, valid: bool) -> None:
    assert jsonschema.Draft202012Validator(layout_json_schema(CONCEPTS)).is_valid(data) == valid


def test_the_schema_follows_the_canvas() -> None:
    schema = layout_json_schema(["a cat"], canvas=(640, 480), max_background_words=3)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"boxes": {"a cat": [639, 479, 640, 480]}, "background": "a b c"})
    assert not validator.is_valid({"boxes": {"a cat": [0, 480, 10, 10]}, "background": "a b c"})
    assert not validator.is_valid({"boxes": {"a cat": [0, 0, 10, 481]}, "background": "a b c"})
    assert not validator.is_valid({"boxes": {"a cat": [0, 0, 10, 10]}, "background": "a b c d"})


def test_the_schema_compiles_for_xgrammar() -> None:
    xgrammar = pytest.importorskip("xgrammar")
    xgrammar.Grammar.from_json_schema(layout_json_schema(["cat", "dog", "house plant"]))


@pytest.mark.parametrize(
    "args",
    [
        ([],),
        (["cat", "cat"],),
        (["cat", " "],),
        (["cat"], (512.0, 512)),
        (["cat"], (0, 512)),
        (["cat"], CANVAS, 0),
    ],
)
def test_the_schema_refuses_bad_arguments(args: tuple) -> None:
    with pytest.raises(ValueError):
        layout_json_schema(*args)


def test_parse_reads_the_schema_form_and_lmd_pairs() -> None:
    expected = [Box("cat", 21, 181, 232, 340), Box("dog", 269, 181, 478, 341)]
    assert parse_layout(ANSWER) == (expected, "a sunny garden")
    pairs = {
        "boxes": [["cat", [21, 181, 211, 159]], ["dog", [269, 181, 209, 160]]],
        "background": " a  sunny garden\n",
    }
    assert parse_layout(pairs) == (expected, "a sunny garden")
    assert parse_layout(ANSWER, to_canvas=(1024, 1024))[0] == [
        box.scaled(LMD_CANVAS, (1024, 1024)) for box in expected
    ]
    assert parse_layout(ANSWER, canvas=(256, 256), to_canvas=(512, 512))[0][0] == Box(
        "cat", 42, 362, 464, 680
    )
    # the parser reads the shape; the layout's problems are validate's (the boxes overlap 0.99 of the dog's)
    boxes, _ = parse_layout(
        {"boxes": [["cat", [0, 0, 100, 100]], ["cat", [1, 1, 100, 100]]], "background": "x"}
    )
    assert categories(check(boxes)) == ["duplicate concept", "overlap"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"background": "x"}, "no 'boxes'"),
        ({"boxes": {}}, "'background' must be a non-empty string"),
        ({"boxes": {}, "background": "  "}, "'background' must be a non-empty string"),
        ({"boxes": "cat", "background": "x"}, "'boxes' must be an object or a list"),
        ({"boxes": [["cat"]], "background": "x"}, "a box entry must be"),
        ({"boxes": [[1, [0, 0, 5, 5]]], "background": "x"}, "concept name must be a string"),
        ({"boxes": {"cat": [0, 0, 5]}, "background": "x"}, "must be \\[x, y, width, height\\]"),
        ({"boxes": {"cat": [0, 0, 0, 5]}, "background": "x"}, "empty box"),
        ({"boxes": {"cat": [0, "0", 5, 5]}, "background": "x"}, "finite number"),
        ({"boxes": {"": [0, 0, 5, 5]}, "background": "x"}, "non-empty string"),
    ],
)
def test_parse_refuses_answers_of_the_wrong_shape(data, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        parse_layout(data)


def test_answer_to_layout_end_to_end() -> None:
    """A schema-valid answer whose dog box runs past the 512 canvas: parsed, scaled to 1024 and clipped."""
    data = answer(dog=[300, 200, 300, 100])
    assert jsonschema.Draft202012Validator(layout_json_schema(CONCEPTS)).is_valid(data)
    boxes, background = parse_layout(data, to_canvas=(1024, 1024))
    repaired, changes = repair_layout(boxes, (1024, 1024), 64, 0.1, concepts=CONCEPTS)
    assert repaired[1] == Box("dog", 600, 400, 1024, 600) and background == "a sunny garden"
    assert changes == ["clipped 'dog' to the canvas: (600, 400, 1200, 600) -> (600, 400, 1024, 600)"]
