"""CMMD (Jayasumana et al. 2024): MMD between CLIP embedding sets with a Gaussian kernel.

    CMMD = 1000 · (mean Kxx + mean Kyy − 2 mean Kxy),  K(a, b) = exp(−‖a − b‖² / (2σ²)),  σ = 10

biased estimator (diagonals included), float64, deterministic. The reference uses CLIP ViT-L/14@336 embeddings,
hence the `CMMD` class default. Embeddings holding a NaN or an infinity are refused (ValueError naming the side).
`CMMD` is a `torchmetrics.Metric` (`update` / `compute` / `reset`, distributed sync); `cmmd` the functional form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from benchmark.metrics.base import BenchmarkMetric, split_metric_kwargs, state_array, to_state
from benchmark.metrics.clip_embedding import CLIPEmbedder
from benchmark.metrics.precomputed import Precomputed
from benchmark.metrics.validation import require_finite

__all__ = ["CMMD", "cmmd"]

CMMD_SCALE = 1000.0
_BLOCK = 4096  # rows per kernel block, so memory stays O(block · n)


def _mean_gaussian_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    total = 0.0
    b_sq = np.einsum("nd,nd->n", b, b)
    for start in range(0, len(a), _BLOCK):
        block = a[start : start + _BLOCK]
        sq_dist = np.einsum("nd,nd->n", block, block)[:, None] + b_sq[None, :] - 2.0 * block @ b.T
        total += np.exp(-np.maximum(sq_dist, 0.0) / (2.0 * sigma**2)).sum()
    return float(total / (len(a) * len(b)))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """Biased Gaussian-kernel MMD² between embedding sets x (n×d) and y (m×d), times 1000."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"need two non-empty (n, d) embedding sets, got {x.shape} and {y.shape}")
    require_finite("CMMD", x=x, y=y)
    kxx = _mean_gaussian_kernel(x, x, sigma)
    kyy = _mean_gaussian_kernel(y, y, sigma)
    kxy = _mean_gaussian_kernel(x, y, sigma)
    return float(CMMD_SCALE * (kxx + kyy - 2.0 * kxy))


class CMMD(BenchmarkMetric):
    """CMMD between real and generated images over L2-normalised CLIP image embeddings (float64 list states,
    reduced by concatenation across processes)."""

    higher_is_better = False
    plot_lower_bound = 0.0
    labels = {"cmmd": "CMMD"}
    details_key = "cmmd"

    def __init__(
        self,
        embedder: CLIPEmbedder | Precomputed | None = None,
        *,
        sigma: float = 10.0,
        model: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        **kwargs: Any,
    ) -> None:
        metric_kwargs, embedder_kwargs = split_metric_kwargs(kwargs)
        super().__init__(**metric_kwargs)
        self.embedder = embedder or CLIPEmbedder(model, pretrained, **embedder_kwargs)
        self.sigma = sigma
        self.add_state("real_embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("fake_embeddings", default=[], dist_reduce_fx="cat")

    def update(
        self,
        images: Sequence[Image.Image] | np.ndarray | None = None,
        real: bool | None = None,
        *,
        embeddings: np.ndarray | None = None,
    ) -> None:
        """Add images, or (``embeddings=``) precomputed embeddings from the same embedder, to the real
        (``real=True``) or the generated (``real=False``) set."""
        if real is None:
            raise TypeError("update() needs real=True (reference images) or real=False (generated images)")
        if embeddings is None:
            embeddings = self.embedder.embed_images(images)
        state = self.real_embeddings if real else self.fake_embeddings
        state.append(to_state(embeddings, np.float64, self.device))

    def update_embeddings(self, embeddings: np.ndarray, real: bool) -> None:
        """Add precomputed embeddings (from the same embedder) to the real or the generated set."""
        self.update(real=real, embeddings=embeddings)

    def compute(self) -> dict[str, Any]:
        real, fake = (
            state_array(self.real_embeddings, np.float64),
            state_array(self.fake_embeddings, np.float64),
        )
        if real is None or fake is None:
            raise RuntimeError("CMMD needs real and generated embeddings")
        require_finite("CMMD", reference=real, generated=fake)
        return {
            "cmmd": cmmd(real, fake, self.sigma),
            "cmmd_sigma": self.sigma,
            "n_real": len(real),
            "n_fake": len(fake),
            **self.embedder.provenance,
        }
