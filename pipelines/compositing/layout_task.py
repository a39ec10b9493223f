"""The ``layout`` task: the annotation engines propose one box per concept and a background description.

The request of one composition is its concept phrases and an optional background hint, carried in the row's
``caption`` column as JSON (`layout_request`), so every engine (hf, vllm, openai, fixed) sends it through the
same `Task.request` call as any other task. Unlike the other tasks the answer's JSON schema depends on the row:
`pipelines.compositing.layout.layout_json_schema` makes the concepts the required keys of ``boxes``, so a
constrained engine cannot answer with a missing or an unknown concept. Boxes are asked on Gen4Gen's / LMD's
512 x 512 canvas (`LMD_CANVAS`) and scaled to the output size when parsed (`read_layout`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.answers import Parsed, extract_json
from pipelines.compositing.layout import (
    BACKGROUND_MAX_WORDS,
    LMD_CANVAS,
    Box,
    LayoutError,
    layout_json_schema,
    parse_layout,
    repair_layout,
)
from pipelines.prompting import ChatRequest, load_prompt
from pipelines.tasks import Task

__all__ = ["LayoutTask", "layout_request", "layout_task", "read_layout"]


def layout_request(phrases: Sequence[str], hint: str | None) -> str:
    """The ``caption`` cell of a layout row: the concept phrases and the background hint, as JSON."""
    return json.dumps({"concepts": list(phrases), "hint": hint})


def _hint_sentence(hint: str | None) -> str:
    return f"The background should show: {' '.join(hint.split())}." if hint and hint.strip() else ""


@dataclass(frozen=True)
class LayoutTask(Task):
    """`Task` whose request schema is the row's own (`layout_json_schema` of its concepts)."""

    min_size: int = 32

    def request(self, caption: str | None = None, image: Any = None) -> ChatRequest:
        spec = json.loads(caption or "{}")
        concepts = list(spec.get("concepts") or [])
        variables = {
            **self.variables,
            "concepts": ", ".join(concepts),
            "hint": _hint_sentence(spec.get("hint")),
            "min_size": self.min_size,
        }
        system, user = self.prompt.render(variables)
        return ChatRequest(system, user, layout_json_schema(concepts), self.name)


def _parse(raw: str | None) -> Parsed:
    """Only the JSON shape here: the boxes are checked against the row's concepts by `read_layout`."""
    data, repairs = extract_json(raw, ("boxes", "background"))
    return Parsed(data, "repaired" if repairs else "ok", "; ".join(repairs) or None)


def layout_task(min_size: int = 32) -> LayoutTask:
    """The layout task; `min_size` (pixels of the 512 x 512 canvas) is stated in the prompt."""
    width, height = LMD_CANVAS
    return LayoutTask(
        name="layout",
        prompt=load_prompt("layout", "v1"),
        schema=layout_json_schema(["object"]),  # the shape only; each request carries its row's schema
        parser=_parse,
        to_columns=lambda data: {"layout": json.dumps(data)},
        output_columns={"layout": pa.string()},
        variables={"width": width, "height": height, "max_words": BACKGROUND_MAX_WORDS},
        example_answer='{"boxes": {"object": [0, 0, 512, 512]}, "background": "a plain grey wall"}',
        min_size=min_size,
    )


def read_layout(
    raw: str | None,
    phrases: Sequence[str],
    size: int,
    min_size: float,
    max_overlap: float,
) -> tuple[list[Box], str, list[str]]:
    """The engine's answer as boxes in pixels of the ``size x size`` output (in `phrases` order), the
    background, and the repairs made: boxes crossing the canvas are clipped to it (`repair_layout`); any other
    problem raises `LayoutError` with the reason. `min_size` is in pixels of the 512 x 512 canvas, like the
    prompt's."""
    try:
        data, _ = extract_json(raw, ("boxes", "background"))
    except ValueError as exc:
        raise LayoutError(str(exc)) from None
    boxes, background = parse_layout(data, LMD_CANVAS)
    boxes, repairs = repair_layout(boxes, LMD_CANVAS, min_size, max_overlap, concepts=phrases)
    order = {phrase: i for i, phrase in enumerate(phrases)}
    scaled = [box.scaled(LMD_CANVAS, (size, size)) for box in sorted(boxes, key=lambda b: order[b.concept])]
    return scaled, background, repairs
