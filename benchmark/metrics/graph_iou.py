"""SG-IoU, Entity-IoU and Relation-IoU: set overlap between a predicted and an intended scene graph.

Following CompSG-Bench (LAION-SG), three sets are built from each graph and compared with the set IoU
``|A ∩ B| / |A ∪ B|``:

- SG-IoU: triples ``(subject name, predicate, object name)``;
- Entity-IoU: object names;
- Relation-IoU: predicates.

Object ids are ignored (two "person" nodes are one entity "person"), and repeated items collapse because sets are
compared. Empty sets, per metric (each of the three sets on its own): if the predicted and the intended set are
both empty the IoU is 1.0 (nothing was asked and nothing was found); if exactly one is empty it is 0.0. So two
empty graphs score 1.0 on all three, and two graphs with objects but no relations score 1.0 on SG-IoU and
Relation-IoU. A failed judgement (no graph at all: undecodable image, unparseable answer) is not an empty graph:
`GraphIoU.update_failed` counts it in the means with 0.0 on all three, whatever the intended graph.

Text is normalised before comparison: `schemas.normalize_text` (case, whitespace, underscores), then the last word
of an object name is singularised (`singular`), then the optional `synonyms` map (applied to object names and
predicates; its keys and values are normalised the same way as the term they replace) replaces a term by its canonical form. Predicates are
not singularised ("sits on" stays a verb form).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.metrics.base import BenchmarkMetric, state_array
from schemas import SceneGraph, normalize_text

__all__ = ["IOU_KEYS", "GraphIoU", "graph_iou", "normalize_name", "set_iou", "singular"]

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


class GraphIoU(BenchmarkMetric):
    """Accumulates `graph_iou` over samples; `compute()` gives the mean of each IoU (a `torchmetrics.Metric`).

    State: ``scores``, one float64 row (SG-IoU, Entity-IoU, Relation-IoU) per item, reduced by concatenation
    across processes, so ``len(metric.scores)`` is the number of items; ``failed``, the number of items that could
    not be judged (a sum). `update` returns the item's IoUs (torchmetrics' `update` returns nothing; this class
    keeps the value of its own).
    """

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    labels = {"sg_iou": "SG-IoU", "entity_iou": "Entity-IoU", "relation_iou": "Relation-IoU"}
    details_key = "graph_iou"
    count_key = "n_images"

    def __init__(self, synonyms: Mapping[str, str] | None = None, **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.synonyms = synonyms
        self._synonyms = _Synonyms.of(synonyms)
        self._last: dict[str, float] = {}
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("failed", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _wrap_update(self, update: Callable[..., None]) -> Callable[..., dict[str, float]]:
        """torchmetrics' update wrapper (cache invalidation, update count), returning this item's IoUs."""
        wrapped = super()._wrap_update(update)

        @functools.wraps(update)
        def returning(*args: Any, **kwargs: Any) -> dict[str, float]:
            wrapped(*args, **kwargs)
            return self._last

        return returning

    def update(self, predicted: SceneGraph | None, target: SceneGraph | None) -> dict[str, float]:
        """Score one pair, remember it, and return its IoUs. ``predicted=None`` is an item that could not be judged
        (no graph at all): 0.0 on every IoU, whatever `target`, kept in the means (see `update_failed`)."""
        if predicted is None:
            score = dict.fromkeys(IOU_KEYS, 0.0)
            self.failed += 1
        else:
            score = _iou(predicted, target, self._synonyms)
        row = torch.tensor([[score[key] for key in IOU_KEYS]], dtype=torch.float64, device=self.device)
        self.scores.append(row)
        self._last = score
        return score

    def update_failed(self) -> dict[str, float]:
        """Count an item that could not be judged (no predicted graph): 0.0 on every IoU, kept in the means."""
        return self.update(None, None)

    def per_item(self) -> list[dict[str, float]]:
        """The IoUs of every item so far, in the order added."""
        rows = state_array(self.scores, np.float64)
        return [] if rows is None else [dict(zip(IOU_KEYS, row, strict=True)) for row in rows.tolist()]

    def compute(self) -> dict[str, float]:
        """Mean SG-IoU, Entity-IoU and Relation-IoU over all updates, failed items (0.0) included."""
        items = self.per_item()
        if not items:
            raise ValueError("GraphIoU.compute() needs at least one update()")
        return {key: sum(s[key] for s in items) / len(items) for key in IOU_KEYS}

    def compute_std(self) -> dict[str, float]:
        """The (population) standard deviation over items of each IoU, under the keys ``sg_iou_std``, ...: with
        the item count it gives a confidence interval of the means."""
        rows = state_array(self.scores, np.float64)
        if rows is None:
            raise ValueError("GraphIoU.compute_std() needs at least one update()")
        return {f"{key}_std": float(rows[:, i].std()) for i, key in enumerate(IOU_KEYS)}
