"""The layout step of compositing: one box per concept, checked, repaired or rejected with a reason.

The annotation engine proposes, LLM-grounded-diffusion style, one bounding box per concept and a background
description. Gen4Gen (``gen4gen/llm_guide/box_template.py``, after LLM-grounded Diffusion) asks for boxes on a
**512 x 512** canvas as ``[top-left x, top-left y, box width, box height]``, inside the canvas and not
overlapping, and scales them to the output image (its ``s2_llm_guided_object_composition.py``: 512 -> 1024). Here:

Coordinates
    A `Box` is in **pixels** of a canvas ``(width, height)``, origin at the top-left corner, y growing downward, on
    pixel *edges*: the box covers ``x0 <= x < x1`` and ``y0 <= y < y1``, so its width is ``x1 - x0`` and a box
    that fills a 512-wide canvas has ``x0 = 0, x1 = 512``. Coordinates are floats (a box scaled from 512 to 768
    is not on whole pixels; rounding belongs to the step that pastes). Pixels, not normalised [0, 1], because
    the engine answers in pixels of a stated canvas, the compositor pastes in pixels of the output image and a
    minimum size is a number of pixels; `Box.scaled` maps the engine's canvas to the output's.
    `Box.from_xywh` reads the LMD form ``[x, y, w, h]``.

Checks (`validate_layout`: a list of problems, empty when the layout is good)
    - *outside the canvas*: ``x0 < 0``, ``y0 < 0``, ``x1 > width`` or ``y1 > height``;
    - *too small*: width or height below ``min_size`` pixels (a side length, not an area: a 500 x 2 sliver has a
      large area and still cannot hold a pasted concept);
    - *overlap*: for each pair, the area of their intersection divided by the area of the **smaller** box,
      above ``max_overlap`` (``0 <= max_overlap <= 1``; touching edges overlap 0). Not IoU: what compositing
      must bound is how much of a concept the other one hides, and a small box inside a large one is completely
      hidden while its IoU is tiny (a 50 x 50 box inside a 400 x 400 one: IoU 0.016, overlap 1.0). Intersection
      over the smaller box is the share of the more-covered concept that is covered;
    - *duplicate concept* (two boxes for one concept), and with ``concepts`` given, *missing concept* and
      *unknown concept*: one box per concept, no more, no less.

Repair (`repair_layout`)
    Clips every box that crosses the canvas border to the canvas, and nothing else. What clipping cannot fix is
    rejected with `LayoutError` naming every problem: a box with nothing inside the canvas, a box below the
    minimum size (after clipping), an overlap above the bound, a duplicate, missing or unknown concept. A concept
    is never dropped and no box is moved or enlarged (that would be inventing a layout, not repairing one). Every
    layout `repair_layout` returns passes `validate_layout` with the same arguments.

Error messages start with their category (``outside the canvas``, ``too small``, ``overlap``, ...) followed by a
colon, as `pipelines.answers.failure_reason` expects.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from pipelines.tasks import words_pattern

__all__ = [
    "LMD_CANVAS",
    "Box",
    "LayoutError",
    "layout_json_schema",
    "overlap",
    "parse_layout",
    "repair_layout",
    "validate_layout",
]

LMD_CANVAS = (512, 512)  # (width, height) of LLM-grounded Diffusion's and Gen4Gen's box prompt
BACKGROUND_MAX_WORDS = 40

Canvas = tuple[float, float]  # (width, height) in pixels, as PIL's Image.size


class LayoutError(ValueError):
    """A layout that cannot be used or repaired; `reason` says why (``category: details``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise LayoutError(f"invalid box: {what} must be a finite number, got {value!r:.40}")
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Box:
    """The box of one concept: ``concept`` and its corners ``(x0, y0)`` (top-left) and ``(x1, y1)`` (bottom-right),
    in pixels on pixel edges (see the module). Refuses (`LayoutError`) an empty concept name, a non-finite
    coordinate and an empty box (``x1 <= x0`` or ``y1 <= y0``)."""

    concept: str
    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise LayoutError(
                f"invalid box: the concept must be a non-empty string, got {self.concept!r:.40}"
            )
        for name in ("x0", "y0", "x1", "y1"):
            object.__setattr__(self, name, _number(getattr(self, name), f"{self.concept!r} {name}"))
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise LayoutError(f"empty box: {self.concept!r} has no area {self._corners()}")

    @classmethod
    def from_xywh(cls, concept: str, xywh: Sequence[Any]) -> Box:
        """The LMD / Gen4Gen form ``[top-left x, top-left y, width, height]``."""
        if isinstance(xywh, (str, bytes)) or not isinstance(xywh, Sequence) or len(xywh) != 4:
            raise LayoutError(f"invalid box: {concept!r} must be [x, y, width, height], got {xywh!r:.60}")
        x, y, w, h = (
            _number(v, f"{concept!r} {n}") for v, n in zip(xywh, ("x", "y", "width", "height"), strict=True)
        )
        if w <= 0 or h <= 0:
            raise LayoutError(f"empty box: {concept!r} has width {_fmt(w)} and height {_fmt(h)}")
        return cls(concept, x, y, x + w, y + h)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def xywh(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.width, self.height

    def _corners(self) -> str:
        return f"({', '.join(_fmt(v) for v in (self.x0, self.y0, self.x1, self.y1))})"

    def intersection_area(self, other: Box) -> float:
        """Area of the intersection (0 when the boxes are apart or only touch)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def inside(self, canvas: Canvas) -> bool:
        width, height = canvas
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height

    def clipped(self, canvas: Canvas) -> Box | None:
        """The part of the box inside the canvas, or None when nothing of it is (an edge only touching counts as
        nothing)."""
        width, height = canvas
        x0, y0, x1, y1 = max(self.x0, 0.0), max(self.y0, 0.0), min(self.x1, width), min(self.y1, height)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(self.concept, x0, y0, x1, y1)

    def scaled(self, from_canvas: Canvas, to_canvas: Canvas) -> Box:
        """The same box on another canvas size (x by the width ratio, y by the height ratio)."""
        sx, sy = to_canvas[0] / from_canvas[0], to_canvas[1] / from_canvas[1]
        return Box(self.concept, self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)


def overlap(a: Box, b: Box) -> float:
    """Intersection area over the area of the smaller box, in [0, 1] (the module says why not IoU)."""
    return a.intersection_area(b) / min(a.area, b.area)


def _check_arguments(canvas: Canvas, min_size: float, max_overlap: float) -> Canvas:
    if len(canvas) != 2:
        raise ValueError(f"canvas must be (width, height), got {canvas!r}")
    width, height = (float(v) for v in canvas)
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"canvas must have a positive finite width and height, got {canvas!r}")
    if not (math.isfinite(min_size) and min_size >= 0):
        raise ValueError(f"min_size must be a finite number >= 0, got {min_size!r}")
    if not 0 <= max_overlap <= 1:
        raise ValueError(f"max_overlap must be within [0, 1], got {max_overlap!r}")
    return width, height


def _concept_problems(boxes: Sequence[Box], concepts: Sequence[str] | None) -> list[str]:
    problems = []
    if not boxes:
        problems.append("no boxes: a layout needs one box per concept")
    counts = Counter(box.concept for box in boxes)
    problems += [f"duplicate concept: {name!r} has {n} boxes" for name, n in counts.items() if n > 1]
    if concepts is not None:
        expected = list(dict.fromkeys(concepts))
        problems += [f"missing concept: no box for {name!r}" for name in expected if name not in counts]
        problems += [
            f"unknown concept: {name!r} is not one of {expected}" for name in counts if name not in expected
        ]
    return problems


def validate_layout(
    boxes: Sequence[Box],
    canvas: Canvas,
    min_size: float,
    max_overlap: float,
    *,
    concepts: Sequence[str] | None = None,
) -> list[str]:
    """Every problem of the layout (module docstring: *Checks*), concept problems first, then each box in order,
    then each pair in order; an empty list when there is none. ``canvas`` is ``(width, height)``; bad
    arguments (not the layout) raise ValueError."""
    size = _check_arguments(canvas, min_size, max_overlap)
    problems = _concept_problems(boxes, concepts)
    for box in boxes:
        if not box.inside(size):
            problems.append(
                f"outside the canvas: {box.concept!r} {box._corners()} is not within "
                f"{_fmt(size[0])}x{_fmt(size[1])}"
            )
        if box.width < min_size or box.height < min_size:
            problems.append(
                f"too small: {box.concept!r} is {_fmt(box.width)}x{_fmt(box.height)}, "
                f"below the minimum side {_fmt(min_size)}"
            )
    for a, b in combinations(boxes, 2):
        if (value := overlap(a, b)) > max_overlap:
            problems.append(
                f"overlap: {a.concept!r} and {b.concept!r} overlap {value:.3g} of the smaller box, "
                f"above {_fmt(max_overlap)}"
            )
    return problems


def repair_layout(
    boxes: Sequence[Box],
    canvas: Canvas,
    min_size: float,
    max_overlap: float,
    *,
    concepts: Sequence[str] | None = None,
) -> tuple[list[Box], list[str]]:
    """The layout with every box clipped to the canvas, and one note per clipped box; raises `LayoutError`
    naming every problem clipping cannot fix (module docstring: *Repair*). The boxes keep their order and
    concepts; the result passes `validate_layout` with the same arguments."""
    size = _check_arguments(canvas, min_size, max_overlap)
    if problems := _concept_problems(boxes, concepts):
        raise LayoutError("; ".join(problems))
    repaired, changes, lost = [], [], []
    for box in boxes:
        if box.inside(size):
            repaired.append(box)
            continue
        clipped = box.clipped(size)
        if clipped is None:
            lost.append(
                f"outside the canvas: {box.concept!r} {box._corners()} has nothing inside "
                f"{_fmt(size[0])}x{_fmt(size[1])}"
            )
            continue
        repaired.append(clipped)
        changes.append(f"clipped {box.concept!r} to the canvas: {box._corners()} -> {clipped._corners()}")
    if lost:
        raise LayoutError("; ".join(lost))
    if problems := validate_layout(repaired, size, min_size, max_overlap, concepts=concepts):
        raise LayoutError("; ".join(problems))
    return repaired, changes


# ---------------------------------------------------------------------- the engine's answer


def layout_json_schema(
    concepts: Sequence[str],
    canvas: tuple[int, int] = LMD_CANVAS,
    max_background_words: int = BACKGROUND_MAX_WORDS,
) -> dict[str, Any]:
    """The JSON Schema of the engine's answer, for constrained decoding (like `pipelines.tasks`' schemas)::

        {"boxes": {"<concept>": [x, y, width, height], ...}, "background": "<words>"}

    ``boxes`` is an object with exactly the given concepts as keys (all required, no other), so the answer has
    one box per concept by construction; each box is LMD's ``[x, y, width, height]`` in integer pixels of
    ``canvas`` (``0 <= x < width``, ``1 <= width <= canvas width``, the same for y). That the box *ends* inside
    the canvas (``x + width <= canvas width``) is not expressible here: `validate_layout` checks it and
    `repair_layout` clips. ``background`` is 1 to `max_background_words` words of the spatial caption's word
    pattern (bounded inside the pattern: xgrammar ignores ``maxLength`` beside a ``pattern``)."""
    names = list(concepts)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"concepts must be distinct non-empty strings, got {names!r}")
    width, height = canvas
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in canvas):
        raise ValueError(f"canvas must be two positive integers (width, height), got {canvas!r}")
    if max_background_words < 1:
        raise ValueError(f"max_background_words must be >= 1, got {max_background_words!r}")
    box = {
        "type": "array",
        "prefixItems": [
            {"type": "integer", "minimum": 0, "maximum": width - 1},
            {"type": "integer", "minimum": 0, "maximum": height - 1},
            {"type": "integer", "minimum": 1, "maximum": width},
            {"type": "integer", "minimum": 1, "maximum": height},
        ],
        "items": False,
        "minItems": 4,
        "maxItems": 4,
    }
    return {
        "title": "Layout",
        "type": "object",
        "properties": {
            "boxes": {
                "type": "object",
                "properties": {name: box for name in names},
                "required": names,
                "additionalProperties": False,
            },
            "background": {
                "type": "string",
                "pattern": words_pattern(1, max_background_words),
            },
        },
        "required": ["boxes", "background"],
        "additionalProperties": False,
    }


def _box_entries(boxes: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(boxes, Mapping):
        return boxes.items()
    if isinstance(boxes, list):
        entries = []
        for entry in boxes:
            if not (isinstance(entry, list) and len(entry) == 2):
                raise LayoutError(
                    f"invalid layout: a box entry must be [concept, [x, y, width, height]], got {entry!r:.60}"
                )
            entries.append((entry[0], entry[1]))
        return entries
    raise LayoutError(f"invalid layout: 'boxes' must be an object or a list, got {type(boxes).__name__}")


def parse_layout(
    data: Mapping[str, Any], canvas: Canvas = LMD_CANVAS, to_canvas: Canvas | None = None
) -> tuple[list[Box], str]:
    """The boxes (in the answer's order) and the background of a parsed JSON answer.

    ``boxes`` is the schema's object ``{concept: [x, y, width, height]}`` or LMD's list of pairs
    ``[[concept, [x, y, width, height]], ...]``; the numbers are pixels of ``canvas`` (default LMD's 512 x 512)
    and, with ``to_canvas``, the boxes are scaled to it. Raises `LayoutError` for an answer of the wrong shape;
    whether the boxes are a good layout (concepts, canvas, size, overlap) is `validate_layout`'s question."""
    if not isinstance(data, Mapping):
        raise LayoutError(f"invalid layout: expected a JSON object, got {type(data).__name__}")
    if "boxes" not in data:
        raise LayoutError("invalid layout: no 'boxes'")
    background = data.get("background")
    if not isinstance(background, str) or not background.strip():
        raise LayoutError(f"invalid layout: 'background' must be a non-empty string, got {background!r:.60}")
    boxes = []
    for concept, xywh in _box_entries(data["boxes"]):
        if not isinstance(concept, str):
            raise LayoutError(f"invalid layout: a concept name must be a string, got {concept!r:.40}")
        box = Box.from_xywh(concept, xywh)
        boxes.append(box if to_canvas is None else box.scaled(canvas, to_canvas))
    return boxes, " ".join(background.split())
