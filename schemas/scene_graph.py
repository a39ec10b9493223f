"""The scene graph: objects with attributes, and relations between them.

`SceneGraph` is the one representation every part of the package exchanges. It is a plain dataclass so that it
is cheap to build per row; parsing from untrusted JSON goes through `from_json`, which reports the exact field
that is wrong. Invariants are checked by `validate()`, among them the character rule of graph text (text is data,
not markup: see `schemas.graph_text`); `repair()` turns a near-miss (model output, old data) into a valid graph
and lists the changes it made (a bounded list), without ever inventing content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import RecordError, SceneGraphError
from schemas.graph_text import _CONTROL, normalize_text, text_rule_problem
from schemas.json_schema import scene_graph_json_schema
from schemas.limits import DEFAULT_LIMITS, Limits, Vocabulary
from schemas.record_fields import (
    _field,
    _require_int,
    _require_mapping,
    _require_mappings,
    _require_str,
    _require_str_list,
)
from schemas.validation import _SHOWN, _Changes, _id_problem, _is_id, _over_limit, _show_id, _text_problem

__all__ = ["SGObject", "SGRelation", "SceneGraph"]


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
        """See `schemas.json_schema.scene_graph_json_schema`: the JSON Schema of `to_dict()` for constrained
        decoding."""
        return scene_graph_json_schema(limits, vocabulary)

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
