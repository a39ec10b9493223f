"""Annotation tasks as data: a prompt template, an output JSON schema, a parser and output columns.

A `Task` is everything an engine needs to know about *what* to ask and how to read the answer; engines only call
`task.request(...)`, read `request.schema`, and hand raw text back to `task.parse(...)`. Registering a new task
(`register_task`) therefore never touches engine code. The prompts are `pipelines.prompting`'s published
Markdown files; the parsers are `pipelines.answers`'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipelines.answers import (
    PARAGRAPH_MAX_WORDS,
    PARAGRAPH_MIN_WORDS,
    SPATIAL_CAPTION_MAX_WORDS,
    Parsed,
    parse_paragraph,
    parse_scene_graph,
    parse_spatial_caption,
)
from pipelines.prompting import ChatRequest, PromptTemplate, load_prompt
from schemas import (
    DEFAULT_LIMITS,
    SCENE_GRAPH_TYPE,
    Limits,
    SceneGraph,
    Vocabulary,
    scene_graph_to_arrow,
)

__all__ = ["Task", "get_task", "judge_task", "register_task", "task_names", "words_pattern"]

# Words of printable characters (no quotes, backslashes or control characters) separated by single spaces, the
# length bound inside the pattern: xgrammar 0.2.8 ignores `maxLength` next to a `pattern`, and fails to compile
# one long bounded repetition such as ``[...]{1,600}`` (it compiles the paragraph's {99,299} repetition of
# `_WORD` in under a second).
_WORD = "[A-Za-z0-9,.;:!?'()-]{1,24}"


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


def words_pattern(min_words: int, max_words: int) -> str:
    """A JSON-schema `pattern` for `min_words`..`max_words` words of `_WORD` separated by single spaces."""
    return f"^{_WORD}( {_WORD}){{{min_words - 1},{max_words - 1}}}$"


def _text_task(
    name: str, title: str, parser: Callable[[str | None], Parsed], variables: dict[str, Any], example: str
) -> Task:
    """A task whose answer is one string column `name`: ``{name: "<min_words..max_words words>"}``."""
    pattern = words_pattern(variables.get("min_words", 1), variables["max_words"])
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
