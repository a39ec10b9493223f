"""The question track's scores as a `torchmetrics.Metric`: the mean of per-item dependency-aware yes/no scores
(entity, attribute, relation, overall), DSG's rule (`benchmark.questions.score`).

Record keys: ``question_score`` (overall), ``question_entity``, ``question_attribute``, ``question_relation``;
a key is left out of a record when no item has a question of its kind (`compute` gives None for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmark.metrics.base import BenchmarkMetric, state_array
from benchmark.questions.score import SCORE_KEYS, ItemScore

__all__ = ["QUESTION_KEYS", "QuestionScore"]

# record key -> `ItemScore` field
QUESTION_KEYS = {
    "question_score": "overall",
    "question_entity": "entity",
    "question_attribute": "attribute",
    "question_relation": "relation",
}


class QuestionScore(BenchmarkMetric):
    """Accumulates `ItemScore`s; `compute()` gives their means per key, each over the items where it is defined,
    the same numbers as `benchmark.questions.score.average_scores`.

    State: ``scores``, one float64 row per item (entity, attribute, relation, overall; NaN where undefined),
    reduced by concatenation; ``counts``, (questions, invalid answers, skipped answers) summed."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    labels = {
        "question_score": "Q-Score",
        "question_entity": "Q-Entity",
        "question_attribute": "Q-Attribute",
        "question_relation": "Q-Relation",
    }
    details_key = "questions"
    track = "questions"

    def __init__(self, **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("counts", default=torch.zeros(3, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, items: Sequence[ItemScore]) -> None:
        """Add the scores of some items (one image against its graph's questions each)."""
        if not items:
            return
        rows = [[np.nan if (v := getattr(item, key)) is None else v for key in SCORE_KEYS] for item in items]
        self.scores.append(torch.tensor(rows, dtype=torch.float64, device=self.device))
        counts = [[item.n_questions, item.n_invalid, item.n_skipped] for item in items]
        self.counts += torch.tensor(counts, dtype=torch.int64, device=self.device).sum(dim=0)

    def compute(self) -> dict[str, Any]:
        """The record keys' means (None where no item defines them) and details: ``n_items``, ``n_scored`` (per
        `ItemScore` field), ``n_questions``, ``n_invalid``, ``n_skipped``."""
        rows = state_array(self.scores, np.float64)
        if rows is None:
            raise ValueError("QuestionScore.compute() needs at least one item")
        column = {key: rows[:, i] for i, key in enumerate(SCORE_KEYS)}
        defined = {key: values[~np.isnan(values)] for key, values in column.items()}
        means = {
            record_key: float(defined[field].mean()) if defined[field].size else None
            for record_key, field in QUESTION_KEYS.items()
        }
        n_questions, n_invalid, n_skipped = (int(n) for n in self.counts.tolist())
        return means | {
            "n_items": len(rows),
            "n_scored": {key: int(values.size) for key, values in defined.items()},
            "n_questions": n_questions,
            "n_invalid": n_invalid,
            "n_skipped": n_skipped,
        }
