"""Reading a model's raw answer: the JSON object in it (`extract_json`), and the parsers of the annotation tasks'
answers (a scene graph, a spatial caption, a paragraph), each giving a `Parsed` value: ok, repaired (with the
repairs listed) or failed (with the reason, whose text before the first colon is its category)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from schemas import DEFAULT_LIMITS, Limits, RecordError, SceneGraph, Status, json_kind

__all__ = [
    "Parsed",
    "extract_json",
    "failure_reason",
    "parse_paragraph",
    "parse_scene_graph",
    "parse_spatial_caption",
]

SPATIAL_CAPTION_MAX_WORDS = 80
# A `paragraph` answer (ParaImage style): the prompt and the schema ask for 100..300 words (see
# `pipelines.tasks`); the parser, which also reads answers of engines without a grammar, cuts beyond 300 words
# and fails under 20.
PARAGRAPH_MIN_WORDS = 100
PARAGRAPH_MAX_WORDS = 300
PARAGRAPH_MIN_USABLE_WORDS = 20
_FENCE = re.compile(r"```(?:[jJ][sS][oO][nN])?\s*(.*?)```", re.DOTALL)


class Parsed(NamedTuple):
    """A parsed answer: the value (None when failed), its status, and the reason or the list of repairs."""

    value: Any
    status: Status
    error: str | None


def failure_reason(error: str) -> str:
    """The category of an error message: the text before its first colon (``"invalid JSON: ..."`` -> ``"invalid JSON"``)."""
    return error.split(":", 1)[0].strip() or error


def _json_error(raw: str, exc: json.JSONDecodeError) -> str:
    if exc.msg.startswith("Unterminated string") or exc.pos >= len(raw.rstrip()) - 1:
        return f"truncated JSON: the answer ends before the JSON is complete ({exc.msg}, char {exc.pos})"
    return f"invalid JSON: {exc.msg} (char {exc.pos})"


def extract_json(raw: str | None, keys: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """The JSON object in a model answer, and notes on what had to be cut away to find it.

    Accepts the bare object, an object inside a Markdown code fence, or the first object embedded in prose that
    has one of `keys` at its top level (so that an inner object of a truncated answer is never taken for the
    answer). Raises `ValueError` with a categorised reason (``empty output``, ``invalid JSON``,
    ``truncated JSON``, ``not a JSON object``).
    """
    if raw is None or not raw.strip():
        raise ValueError("empty output: the model returned no text")
    text = raw.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        error = _json_error(text, exc)
    else:
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object: the answer is {json_kind(data)}")
        return data, []
    fence_error = None
    fence = _FENCE.search(text)
    if fence:  # a fence that holds no JSON (e.g. code after the answer) does not end the search
        body = fence.group(1).strip()
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            fence_error = _json_error(body, exc)
        else:
            if isinstance(data, dict):
                return data, ["removed a Markdown code fence around the JSON"]
    decoder = json.JSONDecoder()
    first_candidate_error = None
    for match in re.finditer(r"\{", text):
        try:
            data, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as exc:
            first_candidate_error = first_candidate_error or _json_error(text, exc)
            continue
        if isinstance(data, dict) and any(key in data for key in keys):
            return data, ["ignored text around the JSON object"]
    raise ValueError(fence_error or first_candidate_error or error)


def _graph_from_object(data: Mapping[str, Any]) -> tuple[SceneGraph, list[str]]:
    """Our own JSON shape, LAION-SG's raw model shape (``items: ["person_0", ...]``) or its record shape."""
    if "items" in data and "objects" not in data:
        items = data["items"]
        notes: list[str] = []  # the converters repair; their changes are this answer's repairs
        if isinstance(items, list) and items and isinstance(items[0], Mapping):
            return SceneGraph.from_laion_sg(data, changes=notes), notes
        return SceneGraph.from_vlm_raw(data, changes=notes), notes
    unknown = sorted(set(data) - {"objects", "relations"})
    notes = [f"ignored unknown keys {unknown}"] if unknown else []
    return SceneGraph.from_json(data), notes


def parse_scene_graph(raw: str | None, limits: Limits = DEFAULT_LIMITS) -> Parsed:
    """Raw model text -> a valid `SceneGraph`: ok, repaired (changes listed in `error`), or failed with the reason."""
    try:
        data, notes = extract_json(raw, ("objects", "items"))
        graph, shape_notes = _graph_from_object(data)
    except ValueError as exc:  # RecordError is a ValueError too
        reason = f"invalid scene graph: {exc}" if isinstance(exc, RecordError) else str(exc)
        return Parsed(None, "failed", reason)
    notes += shape_notes
    if not graph.objects:
        return Parsed(None, "failed", "empty scene graph: no objects")
    if not notes and graph.is_valid(limits):
        return Parsed(graph, "ok", None)
    repaired, changes = graph.repair(limits)
    if not repaired.objects:
        return Parsed(
            None, "failed", "empty scene graph: no usable objects after repair: " + "; ".join(changes)
        )
    return Parsed(repaired, "repaired", "repaired: " + "; ".join(notes + changes))


def _parse_text(
    raw: str | None, field: str, label: str, noun: str, max_words: int, min_words: int = 1
) -> Parsed:
    """Raw model text -> the string in `field`, whitespace normalised and cut to `max_words` words.

    Plain prose without any JSON is accepted as the value (status repaired), which keeps endpoints without
    structured-output support usable. `label` names the value in errors, `noun` in the prose note; fewer than
    `min_words` words fail (``{label} too short``).
    """
    try:
        data, notes = extract_json(raw, (field,))
    except ValueError as exc:
        if raw and raw.strip() and "{" not in raw and failure_reason(str(exc)) != "not a JSON object":
            data, notes = {field: raw}, [f"the answer is not JSON; used the text as the {noun}"]
        else:
            return Parsed(None, "failed", str(exc))
    value = data.get(field)
    if not isinstance(value, str):
        return Parsed(
            None, "failed", f"invalid {label}: expected a string field '{field}', got {value!r:.60}"
        )
    words = value.split()
    if not words:
        return Parsed(None, "failed", f"empty {label}")
    if len(words) < min_words:
        return Parsed(None, "failed", f"{label} too short: {len(words)} words, at least {min_words} needed")
    if len(words) > max_words:
        words = words[:max_words]
        notes.append(f"cut to {max_words} words")
    elif " ".join(words) != value:
        notes.append("normalised whitespace")
    text = " ".join(words)
    if notes:
        return Parsed(text, "repaired", "repaired: " + "; ".join(notes))
    return Parsed(text, "ok", None)


def parse_spatial_caption(raw: str | None, max_words: int = SPATIAL_CAPTION_MAX_WORDS) -> Parsed:
    """Raw model text -> a spatial caption string (`_parse_text`: plain prose is accepted, repaired)."""
    return _parse_text(raw, "spatial_caption", "spatial caption", "caption", max_words)


def parse_paragraph(
    raw: str | None, max_words: int = PARAGRAPH_MAX_WORDS, min_words: int = PARAGRAPH_MIN_USABLE_WORDS
) -> Parsed:
    """Raw model text -> a paragraph string (`_parse_text`): plain prose is accepted (repaired), whitespace is
    normalised (repaired), words beyond `max_words` are cut (repaired), fewer than `min_words` fail.

    Between `min_words` and `PARAGRAPH_MIN_WORDS` (the length asked for) a paragraph is kept as it is: the hf
    engine's grammar never gives one that short, and a shorter dense description is still a usable prompt.
    """
    return _parse_text(raw, "paragraph", "paragraph", "paragraph", max_words, min_words)
