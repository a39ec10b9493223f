"""Converters between `SceneGraph` and the formats of the reference systems.

- LAION-SG records: ``items[{item_id,label,attributes,global_item_id}]``, ``relations[{triple_id,item1,relation,item2}]``.
- Visual Genome ``scene_graphs.json`` entries: ``objects[{object_id,names|name,attributes?}]``,
  ``relationships[{relationship_id,subject_id,predicate,object_id}]``.
- sg2im JSON: ``{"objects": [names], "relationships": [[s, "pred", o]]}`` with positional indices, no attributes.
- The VLM raw shape of LAION-SG's GPT-4o output: ``{"items": ["person_0"], "attributes": [[0, "young"]],
  "relations": [[0, "holding", 1]]}``.

Every `from_*` converter returns a VALID graph (`SceneGraph.validate()` passes) or raises `RecordError` naming the
record and the field. A record that is structurally broken (a missing key, a wrong type, a duplicate id) raises; the
near-misses of real data (upper case, stray spaces, self-loops, duplicate triples, text that breaks the character
rule, a relation to an id that is not there) are repaired with `SceneGraph.repair()`, which drops what it cannot
fix. A graph that is valid as read is returned unchanged (ids included). Pass a list as ``changes`` to receive the
repair notes (empty when nothing was changed); a record whose objects are all dropped raises. The `to_*`
functions write what they are given.

`as_scene_graph` takes any `GraphLike` (a `SceneGraph`, our JSON as text or mapping, a LAION-SG record, sg2im JSON)
and tells the format by its keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.errors import RecordError
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.record_fields import (
    _field,
    _require_int,
    _require_list,
    _require_mapping,
    _require_mappings,
    _require_str,
    _require_str_list,
)
from schemas.scene_graph import SceneGraph, SGObject, SGRelation

__all__ = [
    "GraphLike",
    "as_scene_graph",
    "from_laion_sg",
    "from_sg2im",
    "from_visual_genome",
    "from_vlm_raw",
    "to_laion_sg",
    "to_sg2im",
    "to_visual_genome",
    "to_vlm_raw",
]


def _record_name(key: str, value: Any) -> str:
    """``img_id=123`` for messages; a hostile id is cut short."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"{key}=<an integer of {value.bit_length()} bits>"
    return f"{key}={value!s:.40}"


def _optional_list(mapping: Mapping[str, Any], key: str, record: str, where: str) -> Sequence[Any]:
    """An optional list: missing or null is empty, anything else must be a list."""
    value = mapping.get(key)
    return [] if value is None else _require_list(value, record, where)


def _valid(
    graph: SceneGraph, record: str, field: str, note: str, limits: Limits, changes: list[str] | None
) -> SceneGraph:
    """`graph` when valid, else its repair; raises when a record with objects keeps none of them."""
    if graph.is_valid(limits):
        return graph
    repaired, made = graph.repair(limits)
    if graph.objects and not repaired.objects:
        raise RecordError(record, field, f"no usable object after repair ({note}): " + "; ".join(made))
    if changes is not None:
        changes.extend(made)
    return repaired


def _decode(obj: Mapping[str, Any] | str | bytes, record: str) -> Mapping[str, Any]:
    if isinstance(obj, str | bytes):
        try:
            obj = json.loads(obj)
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            raise RecordError(record, "<json>", f"invalid JSON: {exc}") from None
    return _require_mapping(obj, record, "<root>")


# ---------------------------------------------------------------------- LAION-SG


def from_laion_sg(
    record: Mapping[str, Any], *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
) -> SceneGraph:
    """A LAION-SG record (their JSON layout) to a valid graph; item ids become object ids (see the module doc)."""
    record = _require_mapping(record, "<laion_sg>", "<root>")
    name = _record_name("img_id", record.get("img_id", "?"))
    objects = [
        SGObject(
            id=_require_int(_field(item, "item_id", name, f"items[{i}]"), name, f"items[{i}].item_id"),
            name=_require_str(_field(item, "label", name, f"items[{i}]"), name, f"items[{i}].label"),
            attributes=_require_str_list(
                _optional_list(item, "attributes", name, f"items[{i}].attributes"), name, f"items[{i}].attributes"
            ),
        )
        for i, item in enumerate(_require_mappings(_field(record, "items", name, "<root>"), name, "items"))
    ]
    relations = [
        SGRelation(
            subject=_require_int(_field(rel, "item1", name, f"relations[{i}]"), name, f"relations[{i}].item1"),
            predicate=_require_str(_field(rel, "relation", name, f"relations[{i}]"), name, f"relations[{i}].relation"),
            object=_require_int(_field(rel, "item2", name, f"relations[{i}]"), name, f"relations[{i}].item2"),
        )
        for i, rel in enumerate(
            _require_mappings(_optional_list(record, "relations", name, "relations"), name, "relations")
        )
    ]
    return _valid(SceneGraph(objects, relations), name, "items", "objects[i] is items[i]", limits, changes)


def to_laion_sg(
    graph: SceneGraph,
    img_id: str = "",
    name: str = "",
    caption: str = "",
    score: float | str | None = None,
    url: str = "",
    global_item_offset: int = 0,
    global_relation_offset: int = 0,
) -> dict[str, Any]:
    """A graph to a LAION-SG record. Global ids are running counters starting at the given offsets."""
    return {
        "img_id": img_id,
        "name": name,
        "caption_ori": caption,
        "score": "" if score is None else str(score),
        "url": url,
        "items": [
            {"item_id": o.id, "label": o.name, "attributes": list(o.attributes), "global_item_id": global_item_offset + i}
            for i, o in enumerate(graph.objects)
        ],
        "relations": [
            {
                "triple_id": i,
                "item1": r.subject,
                "relation": r.predicate,
                "item2": r.object,
                "global_relation_id": global_relation_offset + i,
            }
            for i, r in enumerate(graph.relations)
        ],
    }


# ---------------------------------------------------------------------- Visual Genome


def from_visual_genome(
    entry: Mapping[str, Any], *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
) -> SceneGraph:
    """A Visual Genome ``scene_graphs.json`` entry to a valid graph with dense ids (VG ids are global, large ints).

    The first of ``names`` is the object's name (older dumps use ``name``); ``attributes`` is read when present.
    Raw VG text ("ON", "Man ") is normalised; self-loops and duplicate triples are dropped (see the module doc).
    """
    entry = _require_mapping(entry, "<visual_genome>", "<root>")
    name = _record_name("image_id", entry.get("image_id", "?"))
    objects: list[SGObject] = []
    dense: dict[int, int] = {}
    for i, obj in enumerate(_require_mappings(_field(entry, "objects", name, "<root>"), name, "objects")):
        vg_id = _require_int(_field(obj, "object_id", name, f"objects[{i}]"), name, f"objects[{i}].object_id")
        if "names" in obj:
            names = _require_str_list(obj["names"], name, f"objects[{i}].names")
            if not names:
                raise RecordError(name, f"objects[{i}].names", "empty list")
            label = names[0]
        else:
            label = _require_str(_field(obj, "name", name, f"objects[{i}]"), name, f"objects[{i}].name")
        attributes = _require_str_list(
            _optional_list(obj, "attributes", name, f"objects[{i}].attributes"), name, f"objects[{i}].attributes"
        )
        if vg_id in dense:
            raise RecordError(name, f"objects[{i}].object_id", f"duplicate object_id {vg_id}")
        dense[vg_id] = len(objects)
        objects.append(SGObject(dense[vg_id], label, attributes))
    relations = []
    for i, rel in enumerate(
        _require_mappings(_optional_list(entry, "relationships", name, "relationships"), name, "relationships")
    ):
        ends = []
        for end in ("subject_id", "object_id"):
            vg_id = _require_int(_field(rel, end, name, f"relationships[{i}]"), name, f"relationships[{i}].{end}")
            if vg_id not in dense:
                raise RecordError(name, f"relationships[{i}].{end}", f"object {vg_id} is not in objects")
            ends.append(dense[vg_id])
        predicate = _require_str(_field(rel, "predicate", name, f"relationships[{i}]"), name, f"relationships[{i}].predicate")
        relations.append(SGRelation(ends[0], predicate, ends[1]))
    graph = SceneGraph(objects, relations)
    return _valid(graph, name, "objects", "relations[i] is relationships[i]", limits, changes)


def to_visual_genome(graph: SceneGraph, image_id: int = 0) -> dict[str, Any]:
    """A graph to a Visual Genome entry (no boxes or synsets: the graph has none)."""
    return {
        "image_id": image_id,
        "objects": [{"object_id": o.id, "names": [o.name], "attributes": list(o.attributes)} for o in graph.objects],
        "relationships": [
            {"relationship_id": i, "subject_id": r.subject, "predicate": r.predicate, "object_id": r.object}
            for i, r in enumerate(graph.relations)
        ],
    }


# ---------------------------------------------------------------------- sg2im


def from_sg2im(
    obj: Mapping[str, Any] | str, *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
) -> SceneGraph:
    """sg2im JSON (positional object indices, no attributes) to a valid graph; ids are the positions."""
    record = "<sg2im>"
    data = _decode(obj, record)
    names = _require_str_list(_field(data, "objects", record, "<root>"), record, "objects")
    relations = []
    for i, triple in enumerate(_optional_list(data, "relationships", record, "relationships")):
        triple = _require_list(triple, record, f"relationships[{i}]")
        if len(triple) != 3:
            raise RecordError(record, f"relationships[{i}]", f"expected [subject, predicate, object], got {len(triple)} items")
        s = _require_int(triple[0], record, f"relationships[{i}][0]")
        o = _require_int(triple[2], record, f"relationships[{i}][2]")
        for pos, index in ((0, s), (2, o)):
            if not 0 <= index < len(names):
                raise RecordError(record, f"relationships[{i}][{pos}]", f"index {index} outside objects[0..{len(names) - 1}]")
        relations.append(SGRelation(s, _require_str(triple[1], record, f"relationships[{i}][1]"), o))
    graph = SceneGraph([SGObject(i, n) for i, n in enumerate(names)], relations)
    return _valid(graph, record, "objects", "relations[i] is relationships[i]", limits, changes)


def to_sg2im(graph: SceneGraph) -> dict[str, Any]:
    """A graph to sg2im JSON. Attributes are dropped: sg2im has none."""
    position = {o.id: i for i, o in enumerate(graph.objects)}
    return {
        "objects": [o.name for o in graph.objects],
        "relationships": [[position[r.subject], r.predicate, position[r.object]] for r in graph.relations],
    }


# ---------------------------------------------------------------------- VLM raw (LAION-SG's GPT-4o output)


def _split_item(item: str, index: int, record: str) -> tuple[str, int]:
    """``"person_0"`` -> ("person", 0); an item without a numeric suffix takes its position as id."""
    item = item.strip()
    stem, sep, suffix = item.rpartition("_")
    if sep and suffix.isascii() and suffix.isdigit() and len(suffix) <= 9:
        return stem, int(suffix)
    if not item:
        raise RecordError(record, f"items[{index}]", "empty item name")
    return item, index


def from_vlm_raw(
    obj: Mapping[str, Any] | str, *, limits: Limits = DEFAULT_LIMITS, changes: list[str] | None = None
) -> SceneGraph:
    """LAION-SG's raw model shape to a valid graph. Ids are the numeric suffixes of the item names."""
    record = "<vlm_raw>"
    data = _decode(obj, record)
    objects: list[SGObject] = []
    by_id: dict[int, SGObject] = {}
    for i, item in enumerate(_require_str_list(_field(data, "items", record, "<root>"), record, "items")):
        name, object_id = _split_item(item, i, record)
        if object_id in by_id:
            raise RecordError(record, f"items[{i}]", f"duplicate id {object_id}")
        by_id[object_id] = SGObject(object_id, name)
        objects.append(by_id[object_id])
    for i, entry in enumerate(_optional_list(data, "attributes", record, "attributes")):
        entry = _require_list(entry, record, f"attributes[{i}]")
        if not entry:
            raise RecordError(record, f"attributes[{i}]", "expected [id, attribute, ...], got []")
        object_id = _require_int(entry[0], record, f"attributes[{i}][0]")
        if object_id not in by_id:
            raise RecordError(record, f"attributes[{i}][0]", f"id {object_id} is not an item")
        by_id[object_id].attributes.extend(
            _require_str(value, record, f"attributes[{i}][{j}]") for j, value in enumerate(entry[1:], start=1)
        )
    relations = []
    for i, triple in enumerate(_optional_list(data, "relations", record, "relations")):
        triple = _require_list(triple, record, f"relations[{i}]")
        if len(triple) != 3:
            raise RecordError(record, f"relations[{i}]", f"expected [subject, predicate, object], got {len(triple)} items")
        relations.append(
            SGRelation(
                _require_int(triple[0], record, f"relations[{i}][0]"),
                _require_str(triple[1], record, f"relations[{i}][1]"),
                _require_int(triple[2], record, f"relations[{i}][2]"),
            )
        )
    return _valid(SceneGraph(objects, relations), record, "items", "objects[i] is items[i]", limits, changes)


def to_vlm_raw(graph: SceneGraph) -> dict[str, Any]:
    """A graph to LAION-SG's raw model shape."""
    return {
        "items": [f"{o.name}_{o.id}" for o in graph.objects],
        "attributes": [[o.id, *o.attributes] for o in graph.objects if o.attributes],
        "relations": [[r.subject, r.predicate, r.object] for r in graph.relations],
    }


# ---------------------------------------------------------------------- any of the above, told by its keys

GraphLike = SceneGraph | str | bytes | Mapping[str, Any]


def as_scene_graph(value: GraphLike) -> SceneGraph:
    """A validated `SceneGraph` from a graph, our JSON, a LAION-SG record or sg2im JSON.

    A mapping (or JSON text of one) with ``relationships`` is sg2im JSON, one with ``items`` and no ``objects`` is a
    LAION-SG record, anything else is our JSON (`SceneGraph.from_json`; a VLM's answer may carry extra keys, an
    ``items`` list among them). Raises `json.JSONDecodeError` for text that is not JSON,
    `TypeError` for a value that is not a mapping, and `RecordError` or `SceneGraphError` for an invalid graph."""
    if isinstance(value, SceneGraph):
        graph = value
    else:
        data = json.loads(value) if isinstance(value, str | bytes) else value
        if not isinstance(data, Mapping):
            raise TypeError(f"a scene graph must be a SceneGraph, JSON object or mapping, got {type(data).__name__}")
        if "relationships" in data:
            graph = from_sg2im(data)
        elif "items" in data and "objects" not in data:
            graph = from_laion_sg(data)
        else:
            graph = SceneGraph.from_json(data)
    return graph.validate()
