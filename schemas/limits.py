"""What a graph may hold: its size bounds (`Limits`) and the closed name and predicate sets of a judge
(`Vocabulary`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pydantic
from pydantic import ConfigDict, Field

if TYPE_CHECKING:
    from schemas.scene_graph import SceneGraph

__all__ = ["DEFAULT_LIMITS", "Limits", "Vocabulary"]


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
