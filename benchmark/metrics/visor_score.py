"""The spatial track's VISOR scores as a `torchmetrics.Metric`: `update` judges images (`visor`'s items) and keeps
one row per image, `compute` gives what `benchmark.metrics.visor.visor_details` gives for all of them.

Record keys: ``visor_uncond`` (VISOR), ``visor_cond``, ``oa``, ``visor_1`` … ``visor_4``; the counts
(``n_images``, ``n_both``, ``n_right``, ``n_prompts``, ``n_prompts_short``) are details.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from benchmark.metrics.base import BenchmarkMetric, state_array
from benchmark.metrics.visor import IMAGES_PER_PROMPT, judge_prompts, judgement_details

__all__ = ["VISORScore"]

# the columns of a stored row (int64 each)
PROMPT, TRIPLE, IMAGE, BOTH, RIGHT = range(5)


def _stable_hash(value: Any) -> int:
    """A signed int64 of ``sha256(repr(value))`` (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:8], "big", signed=True)


class VISORScore(BenchmarkMetric):
    """Accumulates judged images; `compute()` gives `visor_details` of all of them (the scores of `visor` and the
    counts behind them), whatever the split into updates or processes.

    State: ``rows``, one int64 row per image (hash of the prompt id, hash of its (subject, relation, object),
    image index, both detected, relation right), reduced by concatenation. An item without ``image_index`` takes
    its position among its prompt's items of the same `update`, so a prompt's images spread over several updates
    need their ``image_index``; `compute` refuses a repeated (prompt, image index) and a prompt whose items
    disagree on subject, relation or object."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    labels = {
        "visor_uncond": "VISOR",
        "visor_cond": "VISOR-cond",
        "oa": "OA",
        **{f"visor_{n}": f"VISOR-{n}" for n in range(1, IMAGES_PER_PROMPT + 1)},
    }
    details_key = "visor"
    track = "spatial"

    def __init__(self, **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def update(self, items: Iterable[Mapping[str, Any]]) -> None:
        """Judge some images (items as `benchmark.metrics.visor.visor` takes them) and keep their judgements."""
        items = list(items)
        if not items:
            return
        rows = [
            [
                _stable_hash(prompt_id),
                _stable_hash((item["subject"], item["relation"], item["object"])),
                int(item.get("image_index", position)),
                both,
                right,
            ]
            for prompt_id, judged in judge_prompts(items).items()
            for position, (item, both, right) in enumerate(judged)
        ]
        self.rows.append(torch.tensor(rows, dtype=torch.int64, device=self.device))

    def compute(self) -> dict[str, float | int]:
        """`visor_details` of every image added: the record keys and ``n_images``, ``n_both``, ``n_right``,
        ``n_prompts``, ``n_prompts_short``."""
        rows = state_array(self.rows, np.int64)
        if rows is None:
            raise ValueError("visor: no items to score")
        rows = rows[np.lexsort((rows[:, IMAGE], rows[:, PROMPT]))]
        same_prompt = rows[1:, PROMPT] == rows[:-1, PROMPT]
        if np.any(same_prompt & (rows[1:, IMAGE] == rows[:-1, IMAGE])):
            raise ValueError("visor: a prompt has a repeated image_index across updates")
        if np.any(same_prompt & (rows[1:, TRIPLE] != rows[:-1, TRIPLE])):
            raise ValueError("visor: the items of a prompt disagree on subject, relation or object across updates")
        starts = np.flatnonzero(np.r_[True, ~same_prompt])
        return judgement_details(np.split(rows[:, [BOTH, RIGHT]], starts[1:]))  # per prompt, in image order
