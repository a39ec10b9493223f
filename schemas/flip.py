"""Operations on graphs: `flip_graph`, the graph of the mirrored image."""

from __future__ import annotations

import re

from schemas.scene_graph import SceneGraph, SGObject, SGRelation

__all__ = ["flip_graph"]

_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def flip_graph(graph: SceneGraph) -> SceneGraph:
    """The graph of the mirrored image: "left" and "right" swapped as whole words everywhere."""
    return SceneGraph(
        [SGObject(o.id, _swap_left_right(o.name), [_swap_left_right(a) for a in o.attributes]) for o in graph.objects],
        [SGRelation(r.subject, _swap_left_right(r.predicate), r.object) for r in graph.relations],
    )

