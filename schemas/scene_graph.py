"""The scene graph: objects with attributes, and relations between them.

`SceneGraph` is the one representation every part of the package exchanges. It is a plain dataclass so that it
is cheap to build per row; parsing from untrusted JSON goes through `from_json`, which reports the exact field
that is wrong. Invariants are checked by `validate()`, among them the character rule of graph text (text is data,
not markup: see `TEXT_PUNCTUATION`); `repair()` turns a near-miss (model output, old data) into a valid graph and
lists the changes it made (a bounded list), without ever inventing content. `flip_graph` gives the graph of the
mirrored image.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import ConfigDict, Field

__all__ = [
    "Limits",
    "RecordError",
    "SGObject",
    "SGRelation",
    "SceneGraph",
    "SceneGraphError",
    "TEXT_PUNCTUATION",
    "Vocabulary",
    "flip_graph",
    "normalize_text",
    "text_rule_problem",
]

_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The one allow-list of graph text (names, attributes, predicates): text is data, not markup. Besides letters
# (Unicode categories L*), combining marks (M*) and decimal digits (Nd), only these characters may appear, and
# text must begin with a letter or a digit. It admits real labels ("man's shirt", "t-shirt", "no. 5",
# "frisbee/disc", "wii controller (white)", "café", "日本語") and excludes markup and code: < > " ` = { } [ ] \\ ;
# & $ % # * + | ! ? : @ ^ ~, quotes other than the apostrophe (' and ’), control and format characters
# (zero-width, bidirectional overrides). `Limits.text_pattern`, the grammar of constrained decoding, emits a subset
# (tests/test_hostile_graphs.py checks it). Deliberately not a `Limits` field: a config cannot loosen it.
TEXT_PUNCTUATION = frozenset(" -'\u2019.,/()")
_PLAIN_TEXT = re.compile(r"[a-z0-9][a-z0-9 \-'.,/()]*")  # fast path: the common ASCII case
_SHOWN = 40  # at most this many characters of a bad value appear in a message
_MAX_CHANGE_LINES = 20  # repair() lists this many per-item changes, then counts the rest
_MAX_ID = 2**31 - 1  # ids are stored as int32
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")  # an id written as text: ASCII digits, short enough for int()


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Limits:
    """Size bounds of a graph: generous next to LAION-SG's average of 6.4 objects per image.

    A validated dataclass: the annotate job's ``--limits.*`` flags are these fields, with these checks."""

    max_objects: int = Field(64, ge=1, description="objects per graph at most")
    max_relations: int = Field(128, ge=0, description="relations per graph at most")
    max_attributes: int = Field(8, ge=0, description="attributes per object at most")
    max_text_length: int = Field(64, ge=1, description="characters per name, predicate or attribute at most")
    # The pattern handed to constrained decoding for names, predicates and attributes. Without it a random
    # or weak model emits control characters inside strings (measured with xgrammar 0.2.8). It must only admit
    # text that keeps the character rule of `validate()` (`TEXT_PUNCTUATION`); it is not checked on parse.
    text_pattern: str = Field(
        r"^[a-z][a-z -]{0,23}$",
        description="regular expression of names, predicates and attributes for constrained decoding",
    )


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Vocabulary:
    """Closed sets of object names and predicates, used to restrict a judge VLM to the intended graph."""

    names: tuple[str, ...]
    predicates: tuple[str, ...]

    @classmethod
    def of(cls, graph: SceneGraph) -> Vocabulary:
        """The names and predicates used by `graph`, sorted."""
        return cls(
            names=tuple(sorted({o.name for o in graph.objects})),
            predicates=tuple(sorted({r.predicate for r in graph.relations})),
        )


class SceneGraphError(ValueError):
    """A graph breaks an invariant. `problems` lists every violation found, each naming its field."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:_MAX_CHANGE_LINES]
        more = len(self.problems) - len(shown)
        super().__init__(
            "invalid scene graph: " + "; ".join(shown) + (f"; ... and {more} more problems" if more else "")
        )


class RecordError(ValueError):
    """A source record (LAION-SG, Visual Genome, sg2im, VLM output) is malformed.

    `record` identifies the record (e.g. ``img_id=123``), `field` is the path of the offending field.
    """

    def __init__(self, record: str, field: str, reason: str):
        record = record if len(record) <= 64 else record[:61] + "..."  # a hostile record id stays short
        self.record = record
        self.field = field
        self.reason = reason
        super().__init__(f"record {record}: field {field!r}: {reason}")


def normalize_text(text: str) -> str:
    """Lower-case, trim, and collapse runs of whitespace (and underscores) to one space."""
    return _WHITESPACE.sub(" ", text.replace("_", " ")).strip().lower()


@dataclass
class SGObject:
    """One object node. `id` is unique within its graph; repeated objects share a name, not an id."""

    id: int
    name: str
    attributes: list[str] = field(default_factory=list)


@dataclass
class SGRelation:
    """A directed edge ``subject --predicate--> object`` between object ids."""

    subject: int
    predicate: str
    object: int


def _allowed(char: str) -> bool:
    return char in TEXT_PUNCTUATION or char.isalpha() or char.isdecimal() or unicodedata.category(char)[0] == "M"


def text_rule_problem(text: str) -> str | None:
    """Why `text` breaks the character rule of graph text (see `TEXT_PUNCTUATION`), or None when it keeps it.

    Case and whitespace are not part of this rule (`normalize_text` handles them).
    """
    if _PLAIN_TEXT.fullmatch(text):
        return None
    bad: list[str] = []
    for char in text:
        if not _allowed(char) and char not in bad:
            bad.append(char)
            if len(bad) == 8:
                break
    if bad:
        return "characters not allowed in graph text: " + ", ".join(repr(c) for c in bad)
    if text and not (text[0].isalpha() or text[0].isdecimal()):
        return "must begin with a letter or digit"
    return None


def _text_problem(value: Any, where: str, limits: Limits) -> str | None:
    if not isinstance(value, str):
        return f"{where}: expected a string, got {type(value).__name__}"
    if not value:
        return f"{where} is empty"
    if len(value) > limits.max_text_length:
        return f"{where} is longer than {limits.max_text_length} characters"
    if _CONTROL.search(value):
        return f"{where} {value!r:.{_SHOWN}} contains control characters"
    normal = normalize_text(value)
    if problem := text_rule_problem(normal):  # the rule holds for the normalised text, as in repair()
        return f"{where} {value!r:.{_SHOWN}}: {problem}"
    if value != normal:
        return f"{where} {value!r:.{_SHOWN}} is not normalised (lower-case, trimmed, single spaces, no underscores)"
    return None


def _id_problem(value: Any, where: str) -> str | None:
    if not _is_id(value):
        return f"{where}: expected an integer, got {type(value).__name__}"
    if not 0 <= value <= _MAX_ID:
        return f"{where}: id {_show_id(value)} outside 0..{_MAX_ID}"
    return None


class _Changes:
    """The change list of `repair()`: per-item lines up to a cap, then a count; summaries are always kept."""

    def __init__(self, cap: int = _MAX_CHANGE_LINES):
        self.lines: list[str] = []
        self.cap = cap
        self.items = 0
        self.omitted = 0

    def add(self, line: str) -> None:
        if self.items < self.cap:
            self.lines.append(line)
            self.items += 1
        else:
            self.omitted += 1

    def summary(self, line: str) -> None:
        self.lines.append(line)

    def result(self) -> list[str]:
        return self.lines + ([f"... and {self.omitted} more changes"] if self.omitted else [])


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show_id(value: int) -> str:
    """An id for a message; a hostile id of thousands of digits is not printed (nor can `str` print it)."""
    return str(value) if abs(value) < 10**30 else f"of {value.bit_length()} bits"


def _over_limit(count: int, first: int, last: int, what: str, where: str, limit: int) -> str:
    span = f"{where}[{first}]" if first == last else f"{where}[{first}..{last}]"
    return f"dropped {count} {what} ({span}): over the limit of {limit} {what}"


@dataclass
class SceneGraph:
    """Objects and relations of one image or prompt."""

    objects: list[SGObject] = field(default_factory=list)
    relations: list[SGRelation] = field(default_factory=list)

    # ------------------------------------------------------------------ invariants

    def problems(self, limits: Limits = DEFAULT_LIMITS) -> list[str]:
        """Every invariant violation, each naming its field; empty when the graph is valid.

        Values appear in the messages cut to 40 characters; `SceneGraphError` shows the first 20 problems.
        """
        found: list[str] = []
        if len(self.objects) > limits.max_objects:
            found.append(f"objects: {len(self.objects)} objects exceed the limit of {limits.max_objects}")
        if len(self.relations) > limits.max_relations:
            found.append(f"relations: {len(self.relations)} relations exceed the limit of {limits.max_relations}")
        ids: set[int] = set()
        for i, obj in enumerate(self.objects):
            if problem := _id_problem(obj.id, f"objects[{i}].id"):
                found.append(problem)
            if _is_id(obj.id):
                if obj.id in ids:
                    found.append(f"objects[{i}].id: duplicate id {_show_id(obj.id)}")
                ids.add(obj.id)
            if problem := _text_problem(obj.name, f"objects[{i}].name", limits):
                found.append(problem)
            if not isinstance(obj.attributes, list):
                found.append(f"objects[{i}].attributes: expected a list, got {type(obj.attributes).__name__}")
                continue
            if len(obj.attributes) > limits.max_attributes:
                found.append(f"objects[{i}].attributes: more than {limits.max_attributes} attributes")
            strings = [a for a in obj.attributes if isinstance(a, str)]
            if len(set(strings)) != len(strings):
                found.append(f"objects[{i}].attributes: duplicate attributes")
            for j, attr in enumerate(obj.attributes):
                if problem := _text_problem(attr, f"objects[{i}].attributes[{j}]", limits):
                    found.append(problem)
        triples: set[tuple[int, str, int]] = set()
        for i, rel in enumerate(self.relations):
            for end in ("subject", "object"):
                value = getattr(rel, end)
                if not _is_id(value) or value not in ids:
                    shown = _show_id(value) if _is_id(value) else f"{value!r:.{_SHOWN}}"
                    found.append(f"relations[{i}].{end}: id {shown} is not an object id")
            if rel.subject == rel.object and _is_id(rel.subject):
                found.append(f"relations[{i}]: self-loop on object {_show_id(rel.subject)}")
            if problem := _text_problem(rel.predicate, f"relations[{i}].predicate", limits):
                found.append(problem)
                continue
            if not (_is_id(rel.subject) and _is_id(rel.object)):
                continue
            triple = (rel.subject, rel.predicate, rel.object)
            if triple in triples:
                shown = f"({_show_id(rel.subject)}, {rel.predicate!r}, {_show_id(rel.object)})"
                found.append(f"relations[{i}]: duplicate relation {shown}")
            triples.add(triple)
        return found

    def validate(self, limits: Limits = DEFAULT_LIMITS) -> SceneGraph:
        """Raise `SceneGraphError` listing every violation; return self when valid."""
        if found := self.problems(limits):
            raise SceneGraphError(found)
        return self

    def is_valid(self, limits: Limits = DEFAULT_LIMITS) -> bool:
        return not self.problems(limits)

    def repair(self, limits: Limits = DEFAULT_LIMITS) -> tuple[SceneGraph, list[str]]:
        """Return a valid copy and the list of changes made. Never invents objects, names or relations.

        Fixes: text normalisation (case, whitespace, underscores, control characters), text that is empty, too
        long or breaks the character rule (`text_rule_problem`) after normalisation (the object, attribute or
        relation is dropped; characters are never cut out of a word), duplicate ids (later duplicates dropped),
        duplicate or surplus attributes, dangling, self-loop and duplicate relations, size limits (the first
        items are kept) and sparse or out-of-range ids (renumbered densely 0..n-1 in order).

        The change list stays small whatever the input: values are cut to 40 characters, items over a size limit
        are summarised in one line each, and after 20 per-item lines the rest are counted ("... and N more").
        """
        changes = _Changes()

        def clean(value: Any, where: str) -> str | None:
            if not isinstance(value, str):
                changes.add(f"dropped {where}: expected a string, got {type(value).__name__}")
                return None
            text = normalize_text(_CONTROL.sub(" ", value))
            if not text:
                changes.add(f"dropped {where}: empty")
                return None
            if len(text) > limits.max_text_length:
                changes.add(f"dropped {where}: longer than {limits.max_text_length} characters")
                return None
            if problem := text_rule_problem(text):
                changes.add(f"dropped {where} {value!r:.{_SHOWN}}: {problem}")
                return None
            if text != value:
                changes.add(f"normalised {where}: {value!r:.{_SHOWN}} -> {text!r:.{_SHOWN}}")
            return text

        kept: list[SGObject] = []
        seen_ids: set[int] = set()
        over: list[int] = []
        for i, obj in enumerate(self.objects):
            if len(kept) >= limits.max_objects:
                over.append(i)
                continue
            if not _is_id(obj.id):
                changes.add(f"dropped objects[{i}]: id is not an integer ({type(obj.id).__name__})")
                continue
            if obj.id in seen_ids:
                changes.add(f"dropped objects[{i}]: duplicate id {_show_id(obj.id)}")
                continue
            name = clean(obj.name, f"objects[{i}].name")
            if name is None:
                changes.add(f"dropped objects[{i}] (id {_show_id(obj.id)}): no usable name")
                continue
            seen_ids.add(obj.id)
            attributes: list[str] = []
            raw_attributes = obj.attributes if isinstance(obj.attributes, list | tuple) else []
            if raw_attributes is not obj.attributes:
                changes.add(f"dropped objects[{i}].attributes: expected a list, got {type(obj.attributes).__name__}")
            over_attributes: list[int] = []
            for j, attr in enumerate(raw_attributes):
                if len(attributes) >= limits.max_attributes:
                    over_attributes.append(j)
                    continue
                text = clean(attr, f"objects[{i}].attributes[{j}]")
                if text is None:
                    continue
                if text in attributes:
                    changes.add(f"dropped objects[{i}].attributes[{j}]: duplicate {text!r:.{_SHOWN}}")
                else:
                    attributes.append(text)
            if over_attributes:
                n = len(over_attributes)
                changes.add(
                    _over_limit(n, over_attributes[0], over_attributes[-1], "attributes", f"objects[{i}].attributes",
                                limits.max_attributes)
                )
            kept.append(SGObject(obj.id, name, attributes))
        if over:
            changes.summary(_over_limit(len(over), over[0], over[-1], "objects", "objects", limits.max_objects))

        new_id = {obj.id: n for n, obj in enumerate(kept)}
        moved = [(o, n) for o, n in new_id.items() if o != n]
        if moved:
            shown = ", ".join(f"{_show_id(o)}->{n}" for o, n in moved[:10])
            more = f", ... ({len(moved)} ids in all)" if len(moved) > 10 else ""
            changes.add(f"renumbered object ids densely: {shown}{more}")
        objects = [SGObject(new_id[o.id], o.name, o.attributes) for o in kept]

        relations: list[SGRelation] = []
        triples: set[tuple[int, str, int]] = set()
        over = []
        for i, rel in enumerate(self.relations):
            where = f"relations[{i}]"
            if len(relations) >= limits.max_relations:
                over.append(i)
                continue
            dangling = [
                end for end in ("subject", "object") if not _is_id(getattr(rel, end)) or getattr(rel, end) not in new_id
            ]
            if dangling:
                changes.add(f"dropped {where}: {' and '.join(dangling)} id not among the objects")
                continue
            if rel.subject == rel.object:
                changes.add(f"dropped {where}: self-loop on object {_show_id(rel.subject)}")
                continue
            predicate = clean(rel.predicate, f"{where}.predicate")
            if predicate is None:
                changes.add(f"dropped {where}: no usable predicate")
                continue
            triple = (new_id[rel.subject], predicate, new_id[rel.object])
            if triple in triples:
                changes.add(f"dropped {where}: duplicate relation")
                continue
            triples.add(triple)
            relations.append(SGRelation(*triple))
        if over:
            changes.summary(_over_limit(len(over), over[0], over[-1], "relations", "relations", limits.max_relations))
        return SceneGraph(objects, relations), changes.result()

    # ------------------------------------------------------------------ text and JSON

    def to_text(self) -> str:
        """Canonical text: one clause per relation, then isolated objects, joined by ", ".

        A clause is "attrs subject predicate attrs object", e.g. "young man holding red umbrella". Relations keep
        their order; isolated objects follow in object order. This is the prompt of caption-style baselines and
        the text SDXL-SG encodes.
        """
        by_id = {o.id: o for o in self.objects}

        def phrase(obj: SGObject) -> str:
            return " ".join([*obj.attributes, obj.name])

        clauses = [
            f"{phrase(by_id[r.subject])} {r.predicate} {phrase(by_id[r.object])}"
            for r in self.relations
            if r.subject in by_id and r.object in by_id
        ]
        linked = {r.subject for r in self.relations} | {r.object for r in self.relations}
        clauses += [phrase(o) for o in self.objects if o.id not in linked]
        return ", ".join(clauses)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [{"id": o.id, "name": o.name, "attributes": list(o.attributes)} for o in self.objects],
            "relations": [{"subject": r.subject, "predicate": r.predicate, "object": r.object} for r in self.relations],
        }

    def to_json(self) -> str:
        """Compact JSON of `to_dict()`; `from_json(to_json())` gives an equal graph."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], record: str = "<scene_graph>") -> SceneGraph:
        """Parse our own JSON shape (a string or an already decoded dict). Raises `RecordError` naming the field."""
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
                raise RecordError(record, "<json>", f"invalid JSON: {exc}") from None
        obj = _require_mapping(data, record, "<root>")
        objects = [
            SGObject(
                id=_require_int(_field(o, "id", record, f"objects[{i}]"), record, f"objects[{i}].id"),
                name=_require_str(_field(o, "name", record, f"objects[{i}]"), record, f"objects[{i}].name"),
                attributes=_require_str_list(o.get("attributes", []), record, f"objects[{i}].attributes"),
            )
            for i, o in enumerate(_require_mappings(obj.get("objects", []), record, "objects"))
        ]
        relations = [
            SGRelation(
                subject=_require_int(_field(r, "subject", record, f"relations[{i}]"), record, f"relations[{i}].subject"),
                predicate=_require_str(_field(r, "predicate", record, f"relations[{i}]"), record, f"relations[{i}].predicate"),
                object=_require_int(_field(r, "object", record, f"relations[{i}]"), record, f"relations[{i}].object"),
            )
            for i, r in enumerate(_require_mappings(obj.get("relations", []), record, "relations"))
        ]
        return cls(objects, relations)

    @classmethod
    def json_schema(cls, limits: Limits = DEFAULT_LIMITS, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
        """The JSON Schema of `to_dict()` handed to constrained decoding (the same in every engine).

        Strings carry `text_pattern`, ids are bounded and arrays have `maxItems`: all three are needed for a
        grammar-constrained model to terminate. With a `vocabulary`, names and predicates become enums (the
        judge of CompSG-Bench, as LAION-SG restricted its judge to the intended graph's nouns and predicates).
        """
        text = {"type": "string", "pattern": limits.text_pattern}
        name = {"type": "string", "enum": list(vocabulary.names)} if vocabulary and vocabulary.names else text
        predicate = (
            {"type": "string", "enum": list(vocabulary.predicates)} if vocabulary and vocabulary.predicates else text
        )
        object_id = {"type": "integer", "minimum": 0, "maximum": limits.max_objects - 1}
        return {
            "title": "SceneGraph",
            "type": "object",
            "properties": {
                "objects": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_objects,
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": object_id,
                            "name": name,
                            "attributes": {"type": "array", "maxItems": limits.max_attributes, "items": text},
                        },
                        "required": ["id", "name", "attributes"],
                        "additionalProperties": False,
                    },
                },
                "relations": {
                    "type": "array",
                    "maxItems": limits.max_relations,
                    "items": {
                        "type": "object",
                        "properties": {"subject": object_id, "predicate": predicate, "object": object_id},
                        "required": ["subject", "predicate", "object"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["objects", "relations"],
            "additionalProperties": False,
        }

    # ------------------------------------------------------------------ converters (see schemas.converters)

    @classmethod
    def from_laion_sg(
        cls, record: Mapping[str, Any], *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
    ) -> SceneGraph:
        """See `schemas.converters.from_laion_sg`: a valid graph, or `RecordError` naming the field."""
        from schemas import converters

        return converters.from_laion_sg(record, limits=limits, changes=changes)

    def to_laion_sg(self, **metadata: Any) -> dict[str, Any]:
        from schemas import converters

        return converters.to_laion_sg(self, **metadata)

    @classmethod
    def from_visual_genome(
        cls, entry: Mapping[str, Any], *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
    ) -> SceneGraph:
        """See `schemas.converters.from_visual_genome`: a valid graph, or `RecordError` naming the field."""
        from schemas import converters

        return converters.from_visual_genome(entry, limits=limits, changes=changes)

    def to_visual_genome(self, image_id: int = 0) -> dict[str, Any]:
        from schemas import converters

        return converters.to_visual_genome(self, image_id=image_id)

    @classmethod
    def from_sg2im(
        cls, obj: Mapping[str, Any] | str, *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
    ) -> SceneGraph:
        """See `schemas.converters.from_sg2im`: a valid graph, or `RecordError` naming the field."""
        from schemas import converters

        return converters.from_sg2im(obj, limits=limits, changes=changes)

    def to_sg2im(self) -> dict[str, Any]:
        from schemas import converters

        return converters.to_sg2im(self)

    @classmethod
    def from_vlm_raw(
        cls, obj: Mapping[str, Any] | str, *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
    ) -> SceneGraph:
        """See `schemas.converters.from_vlm_raw`: a valid graph, or `RecordError` naming the field."""
        from schemas import converters

        return converters.from_vlm_raw(obj, limits=limits, changes=changes)

    def to_vlm_raw(self) -> dict[str, Any]:
        from schemas import converters

        return converters.to_vlm_raw(self)


# ---------------------------------------------------------------------- graph operations

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def flip_graph(graph: SceneGraph) -> SceneGraph:
    """The graph of the mirrored image: "left" and "right" swapped as whole words everywhere."""
    return SceneGraph(
        [SGObject(o.id, _swap_left_right(o.name), [_swap_left_right(a) for a in o.attributes]) for o in graph.objects],
        [SGRelation(r.subject, _swap_left_right(r.predicate), r.object) for r in graph.relations],
    )


# ---------------------------------------------------------------------- typed field access with precise errors


def _field(mapping: Mapping[str, Any], key: str, record: str, where: str) -> Any:
    if key not in mapping:
        raise RecordError(record, f"{where}.{key}", "missing")
    return mapping[key]


def _require_mapping(value: Any, record: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(record, where, f"expected an object, got {type(value).__name__}")
    return value


def _require_list(value: Any, record: str, where: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise RecordError(record, where, f"expected a list, got {type(value).__name__}")
    return value


def _require_mappings(value: Any, record: str, where: str) -> list[Mapping[str, Any]]:
    return [_require_mapping(v, record, f"{where}[{i}]") for i, v in enumerate(_require_list(value, record, where))]


def _require_int(value: Any, record: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        integral = isinstance(value, float) and value.is_integer()
        if integral or (isinstance(value, str) and _INT_TEXT.fullmatch(value.strip())):
            value = int(value)
        else:
            raise RecordError(record, where, f"expected an integer, got {type(value).__name__} {value!r:.40}")
    if not -(2**63) <= value < 2**63:
        raise RecordError(record, where, f"integer of {value.bit_length()} bits is out of range")
    return value


def _require_str(value: Any, record: str, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(record, where, f"expected a string, got {type(value).__name__} {value!r:.40}")
    return value


def _require_str_list(value: Any, record: str, where: str) -> list[str]:
    return [_require_str(v, record, f"{where}[{i}]") for i, v in enumerate(_require_list(value, record, where))]
