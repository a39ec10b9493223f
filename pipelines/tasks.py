"""Annotation tasks as data: a prompt template, an output JSON schema, a parser and output columns.

A `Task` is everything an engine needs to know about *what* to ask and how to read the answer; engines only call
`task.request(...)`, read `request.schema`, and hand raw text back to `task.parse(...)`. Registering a new task
(`register_task`) therefore never touches engine code.

Prompts are published as Markdown files in ``pipelines/prompts/{task}.{version}.md`` with a small front matter
(``task``, ``version``, ``inputs``) and two sections, ``## system`` and ``## user``. Placeholders use
`string.Template` syntax (``${max_objects}``) so that JSON examples in the prompt need no escaping. Every row
records ``prompt_version`` = ``{version}+{sha1 of the file}[:8]``, so an edited prompt is never mistaken for the
published one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

import pyarrow as pa

from schemas import (
    DEFAULT_LIMITS,
    SCENE_GRAPH_TYPE,
    Limits,
    RecordError,
    SceneGraph,
    Status,
    Vocabulary,
    json_kind,
    scene_graph_to_arrow,
)

__all__ = [
    "PROMPTS_DIR",
    "ChatRequest",
    "Parsed",
    "PromptTemplate",
    "Task",
    "extract_json",
    "failure_reason",
    "get_task",
    "judge_task",
    "load_prompt",
    "parse_paragraph",
    "parse_scene_graph",
    "parse_spatial_caption",
    "register_task",
    "task_names",
]

PROMPTS_DIR = Path(__file__).with_name("prompts")
INPUTS = frozenset({"image", "caption"})
SPATIAL_CAPTION_MAX_WORDS = 80
# A `paragraph` answer (ParaImage style): the prompt and the schema ask for 100..300 words (xgrammar 0.2.8
# compiles the {99,299} repetition of `_WORD` in under a second); the parser, which also reads answers of
# engines without a grammar, cuts beyond 300 words and fails under 20.
PARAGRAPH_MIN_WORDS = 100
PARAGRAPH_MAX_WORDS = 300
PARAGRAPH_MIN_USABLE_WORDS = 20
# Words of printable characters (no quotes, backslashes or control characters) separated by single spaces, the
# length bound inside the pattern: xgrammar 0.2.8 ignores `maxLength` next to a `pattern`, and fails to compile
# one long bounded repetition such as ``[...]{1,600}``.
_WORD = "[A-Za-z0-9,.;:!?'()-]{1,24}"
_FENCE = re.compile(r"```(?:[jJ][sS][oO][nN])?\s*(.*?)```", re.DOTALL)
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_SECTION = re.compile(r"^## (system|user)[ \t]*$", re.MULTILINE)


# ---------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptTemplate:
    """A published prompt: system and user text with `string.Template` placeholders."""

    task: str
    version: str
    inputs: frozenset[str]
    system: str
    user: str
    sha1: str

    @property
    def prompt_version(self) -> str:
        return f"{self.version}+{self.sha1[:8]}"

    def render(self, variables: Mapping[str, Any]) -> tuple[str, str]:
        """(system, user) with every placeholder filled; a missing variable raises `KeyError`."""
        return Template(self.system).substitute(variables), Template(self.user).substitute(variables)


@cache
def load_prompt(task: str, version: str) -> PromptTemplate:
    """Read and check ``prompts/{task}.{version}.md``."""
    path = PROMPTS_DIR / f"{task}.{version}.md"
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    match = _FRONT_MATTER.match(text)
    if not match:
        raise ValueError(f"{path}: missing '---' front matter")
    meta = dict(line.split(":", 1) for line in match.group(1).splitlines() if line.strip())
    meta = {k.strip(): v.strip() for k, v in meta.items()}
    if meta.get("task") != task or meta.get("version") != version:
        raise ValueError(
            f"{path}: front matter says task={meta.get('task')!r} version={meta.get('version')!r}"
        )
    inputs = frozenset(part.strip() for part in meta.get("inputs", "").split(",") if part.strip())
    if not inputs or not inputs <= INPUTS:
        raise ValueError(f"{path}: inputs must be a subset of {sorted(INPUTS)}, got {sorted(inputs)}")
    parts = _SECTION.split(text[match.end() :])
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if sorted(parts[1::2]) != ["system", "user"]:
        raise ValueError(f"{path}: needs exactly one '## system' and one '## user' section")
    return PromptTemplate(
        task=task,
        version=version,
        inputs=inputs,
        system=sections["system"],
        user=sections["user"],
        sha1=hashlib.sha1(text.encode("utf-8")).hexdigest(),
    )


# ---------------------------------------------------------------------- requests and parsing


@dataclass(frozen=True)
class ChatRequest:
    """One model call: a system and a user message, an optional image, and the JSON schema of the answer.

    `image` is encoded image bytes (JPEG/PNG) or a PIL image; engines convert it to what they send.
    """

    system: str
    user: str
    schema: dict[str, Any]
    schema_name: str
    image: Any = None


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


# ---------------------------------------------------------------------- tasks


def _scene_graph_columns(graph: SceneGraph | None) -> dict[str, Any]:
    return {
        "scene_graph": scene_graph_to_arrow(graph),
        "sg_text": None if graph is None else graph.to_text(),
    }


SCENE_GRAPH_COLUMNS: dict[str, pa.DataType] = {"scene_graph": SCENE_GRAPH_TYPE, "sg_text": pa.string()}


@dataclass(frozen=True)
class Task:
    """What to ask and how to read the answer.

    `variables` fill the prompt placeholders that do not depend on the row (limits, vocabulary); ``${caption}``
    comes from the row. `parser` turns raw text into a `Parsed`; `to_columns` turns a parsed value (or None) into
    the row's output columns, whose Arrow types are `output_columns`.
    """

    name: str
    prompt: PromptTemplate
    schema: dict[str, Any]
    parser: Callable[[str | None], Parsed]
    to_columns: Callable[[Any], dict[str, Any]]
    output_columns: dict[str, pa.DataType]
    variables: dict[str, Any] = field(default_factory=dict)
    # A valid answer, for dry runs without a model (``--engine fixed --model builtin``)
    example_answer: str | None = None

    @property
    def prompt_version(self) -> str:
        return self.prompt.prompt_version

    @property
    def needs_image(self) -> bool:
        return "image" in self.prompt.inputs

    @property
    def needs_caption(self) -> bool:
        return "caption" in self.prompt.inputs

    def skip_reason(self, caption: str | None, image_error: str | None) -> str | None:
        """Why a row cannot be sent to the model (its image failed to decode, or it has no caption), else None."""
        if self.needs_image and image_error:
            return image_error
        if self.needs_caption and not (caption and caption.strip()):
            return "no caption: this task turns the caption into a graph and the row has none"
        return None

    def request(self, caption: str | None = None, image: Any = None) -> ChatRequest:
        """The model call for one row."""
        system, user = self.prompt.render({**self.variables, "caption": (caption or "").strip()})
        return ChatRequest(system, user, self.schema, self.name, image if self.needs_image else None)

    def parse(self, raw: str | None) -> Parsed:
        return self.parser(raw)

    def columns(self, value: Any) -> dict[str, Any]:
        return self.to_columns(value)


def _limit_variables(limits: Limits) -> dict[str, Any]:
    return {
        "max_objects": limits.max_objects,
        "max_relations": limits.max_relations,
        "max_attributes": limits.max_attributes,
    }


def _scene_graph_task(name: str, limits: Limits, vocabulary: Vocabulary | None = None) -> Task:
    variables = _limit_variables(limits)
    if vocabulary is not None:
        variables |= {"names": ", ".join(vocabulary.names), "predicates": ", ".join(vocabulary.predicates)}
    return Task(
        name=name,
        prompt=load_prompt(name, "v1"),
        schema=SceneGraph.json_schema(limits, vocabulary=vocabulary),
        parser=lambda raw: parse_scene_graph(raw, limits),
        to_columns=_scene_graph_columns,
        output_columns=SCENE_GRAPH_COLUMNS,
        variables=variables,
        example_answer='{"objects": [{"id": 0, "name": "object", "attributes": []}], "relations": []}',
    )


def _words_pattern(min_words: int, max_words: int) -> str:
    """A `pattern` for `min_words`..`max_words` words of `_WORD` separated by single spaces."""
    return f"^{_WORD}( {_WORD}){{{min_words - 1},{max_words - 1}}}$"


def _text_task(
    name: str, title: str, parser: Callable[[str | None], Parsed], variables: dict[str, Any], example: str
) -> Task:
    """A task whose answer is one string column `name`: ``{name: "<min_words..max_words words>"}``."""
    pattern = _words_pattern(variables.get("min_words", 1), variables["max_words"])
    return Task(
        name=name,
        prompt=load_prompt(name, "v1"),
        schema={
            "title": title,
            "type": "object",
            "properties": {name: {"type": "string", "pattern": pattern}},
            "required": [name],
            "additionalProperties": False,
        },
        parser=parser,
        to_columns=lambda text: {name: text},
        output_columns={name: pa.string()},
        variables=variables,
        example_answer=example,
    )


def _spatial_caption_task(limits: Limits) -> Task:
    del limits  # a caption has no graph limits
    max_words = SPATIAL_CAPTION_MAX_WORDS
    return _text_task(
        "spatial_caption",
        "SpatialCaption",
        lambda raw: parse_spatial_caption(raw, max_words),
        {"max_words": max_words},
        '{"spatial_caption": "an object in the center"}',
    )


def _paragraph_task(limits: Limits) -> Task:
    """ParaImage-style dense description: one paragraph of 100..300 words (`PARAGRAPH_*_WORDS`)."""
    del limits  # a paragraph has no graph limits
    min_words, max_words = PARAGRAPH_MIN_WORDS, PARAGRAPH_MAX_WORDS
    sentence = "A photograph of an object in the center of a plain grey room."
    example = " ".join([sentence] * -(-min_words // len(sentence.split())))  # the fewest repeats that suffice
    return _text_task(
        "paragraph",
        "Paragraph",
        lambda raw: parse_paragraph(raw, max_words),
        {"min_words": min_words, "max_words": max_words},
        json.dumps({"paragraph": example}),
    )


def judge_task(vocabulary: Vocabulary, limits: Limits = DEFAULT_LIMITS) -> Task:
    """``scene_graph`` restricted to a closed vocabulary (CompSG-Bench's judge: the intended graph's nouns and predicates)."""
    return _scene_graph_task("judge", limits, vocabulary)


_REGISTRY: dict[str, Callable[[Limits], Task]] = {
    "scene_graph": lambda limits: _scene_graph_task("scene_graph", limits),
    "text_to_graph": lambda limits: _scene_graph_task("text_to_graph", limits),
    "spatial_caption": _spatial_caption_task,
    "paragraph": _paragraph_task,
}


def register_task(name: str, factory: Callable[[Limits], Task]) -> None:
    """Make a task available by name (to `get_task`, the CLI and YAML configs)."""
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, limits: Limits = DEFAULT_LIMITS) -> Task:
    """The registered task `name`, with graph size limits `limits`."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None
    return factory(limits)
