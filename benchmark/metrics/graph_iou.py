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

The functional form (`graph_iou`, `singular`, `normalize_name`, `set_iou`, `IOU_KEYS`) lives in
`benchmark.metrics.graph_match`, which imports neither torch nor torchmetrics (the judge's actors use it); it is
re-exported here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from benchmark.metrics.base import BenchmarkMetric, state_array
from benchmark.metrics.graph_match import (
    IOU_KEYS,
    _iou,
    _Synonyms,
    graph_iou,
    normalize_name,
    set_iou,
    singular,
)
from schemas import SceneGraph

__all__ = ["IOU_KEYS", "GraphIoU", "graph_iou", "normalize_name", "set_iou", "singular"]


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
