"""The pure-python graph matching behind SG-IoU, Entity-IoU and Relation-IoU (no torch, no torchmetrics).

The judge's Ray actors and anything else that only compares graphs import this module; the accumulating
`torchmetrics` class, `GraphIoU`, lives in `benchmark.metrics.graph_iou` and re-exports these names. The metric
definitions (sets, empty-set conventions, text normalisation) are documented there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from schemas import SceneGraph, normalize_text

__all__ = ["IOU_KEYS", "graph_iou", "normalize_name", "set_iou", "singular"]

IOU_KEYS = ("sg_iou", "entity_iou", "relation_iou")

# Irregular plurals, and regular-looking ones the suffix rules below would get wrong.
_IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "buses": "bus",
    "leaves": "leaf",
    "knives": "knife",
    "wives": "wife",
    "shelves": "shelf",
    "wolves": "wolf",
    "halves": "half",
    "loaves": "loaf",
}


def singular(word: str) -> str:
    """The singular of an English noun by a small rule set (first matching rule wins).

    1. irregulars: people→person, men→man, women→woman, children→child, feet→foot, teeth→tooth, mice→mouse,
       geese→goose, oxen→ox, buses→bus, and a few "-ves" nouns (leaves→leaf, knives→knife, shelves→shelf, ...);
    2. "-ies" → "-y" for words longer than four letters (puppies→puppy; "ties" falls through to rule 4);
    3. "-sses", "-xes", "-ches", "-shes", "-zzes" → drop "es" (glasses→glass, boxes→box, benches→bench);
    4. a trailing "s" is dropped unless the word ends in "ss", "us" or "is", or has three letters or fewer
       (cats→cat, horses→horse; glass, bus, tennis, gas unchanged).
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def normalize_name(name: str) -> str:
    """`normalize_text`, then the last word singularised ("Young  Men" → "young man")."""
    words = normalize_text(name).split(" ")
    return " ".join([*words[:-1], singular(words[-1])])


def set_iou(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|; 1.0 when both are empty, 0.0 when exactly one is."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


@dataclass(frozen=True)
class _Synonyms:
    """The synonyms map in the two normalised forms: for object names and for predicates."""

    names: dict[str, str]
    predicates: dict[str, str]

    @classmethod
    def of(cls, synonyms: Mapping[str, str] | None) -> _Synonyms:
        pairs = (synonyms or {}).items()
        return cls(
            names={normalize_name(k): normalize_name(v) for k, v in pairs},
            predicates={normalize_text(k): normalize_text(v) for k, v in pairs},
        )


def _sets(graph: SceneGraph, synonyms: _Synonyms) -> tuple[set, set, set]:
    def name(text: str) -> str:
        term = normalize_name(text)
        return synonyms.names.get(term, term)

    def predicate(text: str) -> str:
        term = normalize_text(text)
        return synonyms.predicates.get(term, term)

    names = {o.id: name(o.name) for o in graph.objects}
    triples = {
        (names[r.subject], predicate(r.predicate), names[r.object])
        for r in graph.relations
        if r.subject in names and r.object in names
    }
    return triples, set(names.values()), {predicate(r.predicate) for r in graph.relations}


def _iou(predicted: SceneGraph, target: SceneGraph, synonyms: _Synonyms) -> dict[str, float]:
    pred_sets = _sets(predicted, synonyms)
    target_sets = _sets(target, synonyms)
    return {key: set_iou(p, t) for key, p, t in zip(IOU_KEYS, pred_sets, target_sets, strict=True)}


def graph_iou(
    predicted: SceneGraph, target: SceneGraph, synonyms: Mapping[str, str] | None = None
) -> dict[str, float]:
    """``{"sg_iou", "entity_iou", "relation_iou"}`` of one predicted graph against the intended one.

    Relations whose endpoints are not objects of their graph are ignored (they name nothing).
    """
    return _iou(predicted, target, _Synonyms.of(synonyms))
