"""The JSON Schema of a scene graph that the annotation engines hand to constrained decoding."""

from __future__ import annotations

from typing import Any

from schemas.limits import DEFAULT_LIMITS, Limits, Vocabulary

__all__ = ["scene_graph_json_schema"]


def scene_graph_json_schema(limits: Limits = DEFAULT_LIMITS, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
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

