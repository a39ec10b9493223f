"""Gen4Gen's CP-CLIP and TI-CLIP as `torchmetrics.Metric` classes (track ``compositing``: scores of a compositing
output, `benchmark.compositing`; not columns of CompSG-Bench records).

`update` takes per-image embeddings, which the functional forms of `benchmark.metrics.concept_clip`
(`cp_clip_scores`, `ti_clip_scores`, where the definitions are) turn into float64 scores kept in list states
(reduced by concatenation, so `merge_state` and the distributed sync work); `compute()` averages them as `cp_clip`
and `ti_clip` define a set's score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.metrics.base import BenchmarkMetric, state_array, to_state
from benchmark.metrics.concept_clip import cp_clip_scores, ti_clip_scores

__all__ = ["CPCLIPScore", "TICLIPScore"]


class CPCLIPScore(BenchmarkMetric):
    """CP-CLIP of a set of images: `update(regions, references)` scores one image (the arguments of
    `cp_clip_scores`: one region embedding or None per concept, each concept's reference embeddings);
    `compute()` gives the mean over images of each image's `cp_clip` (the mean of its concepts' scores, an
    undetected concept counting 0), whatever the split into updates, instances or processes.

    States (reduced by concatenation): ``concept_scores``, every concept's ``s_c`` (float64), image after
    image; ``detected``, whether each concept had a region (int64 0/1); ``concepts_per_image`` (int64), which
    splits the first two into images."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    labels = {"cp_clip": "CP-CLIP"}
    details_key = "cp_clip"
    count_key = "n_images"
    track = "compositing"

    def __init__(self, **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.add_state("concept_scores", default=[], dist_reduce_fx="cat")
        self.add_state("detected", default=[], dist_reduce_fx="cat")
        self.add_state("concepts_per_image", default=[], dist_reduce_fx="cat")

    def update(self, regions: Sequence[np.ndarray | None], references: Sequence[np.ndarray]) -> None:
        """Score one image: ``regions[c]`` is concept c's region embedding or None (not detected),
        ``references[c]`` its reference embeddings (`cp_clip_scores`)."""
        scores = cp_clip_scores(regions, references)
        self.concept_scores.append(to_state(scores, np.float64, self.device))
        self.detected.append(to_state([r is not None for r in regions], np.int64, self.device))
        self.concepts_per_image.append(to_state([len(scores)], np.int64, self.device))

    def per_concept(self) -> list[np.ndarray]:
        """Each image's per-concept scores ``s_c`` (float64), in the order added."""
        scores = state_array(self.concept_scores, np.float64)
        counts = state_array(self.concepts_per_image, np.int64)
        if scores is None or counts is None:
            return []
        if int(counts.sum()) != len(scores):
            raise ValueError("CP-CLIP: the states disagree on the number of concepts")
        return np.split(scores, np.cumsum(counts)[:-1])

    def per_image(self) -> np.ndarray:
        """Each image's CP-CLIP (the mean of its concepts' scores, as `cp_clip`), in the order added."""
        return np.array([float(np.mean(s)) for s in self.per_concept()], dtype=np.float64)

    def compute(self) -> dict[str, Any]:
        """``cp_clip`` (the mean over images), ``cp_clip_std`` (population), ``n_images``, ``n_concepts``
        (concept occurrences), ``n_detected`` and ``detection_rate`` (their ratio)."""
        per_image = self.per_image()
        if not len(per_image):
            raise RuntimeError("CPCLIPScore.compute() before any update()")
        detected = state_array(self.detected, np.int64)
        n_concepts = len(detected)
        return {
            "cp_clip": float(per_image.mean()),
            "cp_clip_std": float(per_image.std()),
            "n_images": len(per_image),
            "n_concepts": n_concepts,
            "n_detected": int(detected.sum()),
            "detection_rate": float(detected.sum() / n_concepts),
        }


class TICLIPScore(BenchmarkMetric):
    """TI-CLIP of a set of (image, prompt) pairs: `update(image_embeddings, prompt_embeddings)` adds pairs
    (row i with row i; a single D-vector each is one pair) scored by `ti_clip_scores`; `compute()` gives their
    mean (`ti_clip` of all pairs). State: ``scores``, one float64 cosine per pair, reduced by concatenation."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    labels = {"ti_clip": "TI-CLIP"}
    details_key = "ti_clip"
    count_key = "n_pairs"
    track = "compositing"

    def __init__(self, **metric_kwargs: Any) -> None:
        super().__init__(**metric_kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, image_embeddings: np.ndarray, prompt_embeddings: np.ndarray) -> None:
        """Add pairs: ``cos(image_i, prompt_i)`` (`ti_clip_scores`)."""
        self.scores.append(
            to_state(ti_clip_scores(image_embeddings, prompt_embeddings), np.float64, self.device)
        )

    def per_pair(self) -> np.ndarray:
        """Every pair's cosine, in the order added (float64)."""
        scores = state_array(self.scores, np.float64)
        return np.zeros(0) if scores is None else scores

    def compute(self) -> dict[str, Any]:
        """``ti_clip`` (the mean over pairs), ``ti_clip_std`` (population) and ``n_pairs``."""
        scores = self.per_pair()
        if not len(scores):
            raise RuntimeError("TICLIPScore.compute() before any update()")
        return {
            "ti_clip": float(scores.mean()),
            "ti_clip_std": float(scores.std()),
            "n_pairs": len(scores),
        }
