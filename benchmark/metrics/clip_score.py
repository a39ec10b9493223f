"""The CLIP-T / CLIP-I scores as torchmetrics classes, over `benchmark.metrics.clip_embedding`'s embeddings.

- CLIP-T: 100 · max(cos(image, text), 0) per pair, averaged (the per-pair clamp of Hessel et al.; torchmetrics
  clamps the mean instead, which differs only when some cosine is negative).
- CLIP-I: cos(generated image, reference image) per pair, averaged, reported on LAION-SG's 0..1 cosine scale.

Embeddings holding a NaN or an infinity are refused at `update_embeddings` (ValueError naming the side).
`CLIPScore` and `CLIPImageScore` are `torchmetrics.Metric` subclasses (`update` / `compute` / `reset`, distributed
sync); the functional forms are `clip_t_scores` and `cosine_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from benchmark.metrics.base import BenchmarkMetric, split_metric_kwargs, state_array, to_state
from benchmark.metrics.clip_embedding import CLIPEmbedder, clip_t_scores, cosine_scores
from benchmark.metrics.precomputed import Precomputed
from benchmark.metrics.validation import require_finite

__all__ = ["CLIPImageScore", "CLIPScore"]

class _PairedCLIPMetric(BenchmarkMetric):
    """Mean of a per-pair score over all pairs seen by `update`.

    The per-pair score (the functional form, `score`, on float64 embeddings) is taken as pairs arrive and kept in
    a list state of float64 values (one per pair, reduced by concatenation across processes); `compute()` gives
    their mean and (population) standard deviation. So the state is 8 bytes per pair instead of two embeddings,
    and the values are exactly those of the functional form on all pairs at once.
    """

    key: ClassVar[str]
    label: ClassVar[str]
    sides: ClassVar[tuple[str, str]]  # what the rows of `a` and `b` are, for error messages
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]
    count_key = "n_pairs"

    def __init__(self, embedder: CLIPEmbedder | Precomputed | None = None, **kwargs: Any) -> None:
        metric_kwargs, embedder_kwargs = split_metric_kwargs(kwargs)
        super().__init__(**metric_kwargs)
        self.embedder = embedder or CLIPEmbedder(**embedder_kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def _add_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        require_finite(self.label, **dict(zip(self.sides, (a, b), strict=True)))
        self.scores.append(to_state(self.score(a, b), np.float64, self.device))

    def update_embeddings(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add pairs given as embeddings (row i of `a` with row i of `b`); all values must be finite."""
        self.update(embeddings=(a, b))

    def per_pair(self) -> np.ndarray:
        """The score of every pair so far, in the order added (float64)."""
        scores = state_array(self.scores, np.float64)
        return np.zeros(0) if scores is None else scores

    def compute(self) -> dict[str, Any]:
        scores = self.per_pair()
        if not len(scores):
            raise RuntimeError(f"{type(self).__name__}.compute() before any update()")
        return {
            self.key: float(scores.mean()),
            f"{self.key}_std": float(scores.std()),
            "n_pairs": len(scores),
            **self.embedder.provenance,
        }


class CLIPScore(_PairedCLIPMetric):
    """CLIP-T: mean over (image, text) pairs of 100 · max(cos, 0)."""

    key = "clip_t"
    label = "CLIP-T"
    labels = {"clip_t": "CLIP-T"}
    details_key = "clip_t"
    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 100.0
    sides = ("generated_image", "text")
    score = staticmethod(clip_t_scores)

    def update(
        self,
        images: Sequence[Image.Image] | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        *,
        embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add (image, text) pairs, or (``embeddings=(image_embeddings, text_embeddings)``) their embeddings."""
        if embeddings is None:
            if len(images) != len(texts):
                raise ValueError(f"{len(images)} images but {len(texts)} texts")
            embeddings = self.embedder.embed_images(images), self.embedder.embed_texts(texts)
        self._add_pairs(*embeddings)


class CLIPImageScore(_PairedCLIPMetric):
    """CLIP-I: mean over (generated, reference) image pairs of the cosine similarity (0..1 scale)."""

    key = "clip_i"
    label = "CLIP-I"
    labels = {"clip_i": "CLIP-I"}
    details_key = "clip_i"
    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    sides = ("generated", "reference")
    score = staticmethod(cosine_scores)

    def update(
        self,
        images: Sequence[Image.Image] | np.ndarray | None = None,
        references: Sequence[Image.Image] | np.ndarray | None = None,
        *,
        embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add (generated, reference) image pairs, or (``embeddings=(generated, reference)``) their embeddings."""
        if embeddings is None:
            if len(images) != len(references):
                raise ValueError(f"{len(images)} images but {len(references)} reference images")
            embeddings = self.embedder.embed_images(images), self.embedder.embed_images(references)
        self._add_pairs(*embeddings)
