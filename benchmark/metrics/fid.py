"""FID and KID over Inception pool3 features, each a `torchmetrics.Metric` (`update()` / `compute()` / `reset()`,
distributed sync) that needs no Ray.

Both keep the per-image features (float32, 8 KiB per image) in list states and compute statistics in float64 at
`compute()`. `update_features()` (or ``update(features=...)``) takes features extracted elsewhere (a Ray actor, or
one extraction shared by FID and KID).
Features holding a NaN or an infinity are refused with a ValueError that names the metric, the side (reference
or generated) and the number of bad rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.metrics.base import BenchmarkMetric, state_array, to_state
from benchmark.metrics.frechet import feature_stats, frechet_distance, sample_factor
from benchmark.metrics.inception import FEATURE_DIM, ImageBatch, InceptionFeatureExtractor
from benchmark.metrics.precomputed import Precomputed
from benchmark.metrics.validation import require_finite

__all__ = ["FID", "KID", "kernel_inception_distance"]

KID_SEED = 2020  # torch-fidelity's default rng_seed (see `kernel_inception_distance` for when values agree)
_FULL_GRAM_MAX = 8192  # precompute all kernel values once when n_real + n_fake is at most this


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _unbiased_mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD² (diagonals of Kxx and Kyy dropped; all of Kxy kept), as in KID."""
    m = len(kxx)
    within = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
    return float(within / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = KID_SEED
) -> tuple[float, float]:
    """Mean and std over `subsets` random subsets of unbiased MMD² with the kernel (xᵀy/d + 1)³, float64.

    Subsets are drawn as torch-fidelity draws them: one ``RandomState(seed)``, and per subset first
    ``choice(len(x), m, replace=False)`` for `x`, then the same for `y`. So the result equals
    ``torch_fidelity.metric_kid.kid_features_to_metric(x, y, kid_subsets=subsets, kid_subset_size=m,
    rng_seed=seed)`` for the same argument order; the value depends on the order (the draws differ), which is why
    `KID` always passes (generated, reference), the order of torch-fidelity's
    ``calculate_metrics(input1=generated, input2=reference)``. `m` is `subset_size` capped at the smaller set
    (torch-fidelity refuses a larger one instead); `KID.compute` records the size used. Non-finite features are
    refused (ValueError).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    require_finite("KID", x=x, y=y)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    full = len(x) + len(y) <= _FULL_GRAM_MAX
    if full:
        kxx_all, kyy_all, kxy_all = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        i = rng.choice(len(x), m, replace=False)
        j = rng.choice(len(y), m, replace=False)
        if full:
            blocks = kxx_all[np.ix_(i, i)], kyy_all[np.ix_(j, j)], kxy_all[np.ix_(i, j)]
        else:
            blocks = _poly_kernel(x[i], x[i]), _poly_kernel(y[j], y[j]), _poly_kernel(x[i], y[j])
        values[s] = _unbiased_mmd2(*blocks)
    return float(values.mean()), float(values.std())


class _InceptionMetric(BenchmarkMetric):
    """Collects Inception features of real and generated ("fake") images in two list states (float32 rows, as the
    extractor gives them; reduced by concatenation across processes)."""

    def __init__(
        self,
        extractor: InceptionFeatureExtractor | Precomputed | None = None,
        *,
        weights_path: str | Path | None = None,
        allow_download: bool = False,
        device: str | None = None,
        **metric_kwargs: Any,
    ) -> None:
        super().__init__(**metric_kwargs)
        self.extractor = extractor or InceptionFeatureExtractor(
            weights_path, allow_download=allow_download, device=device
        )
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    def update(
        self, images: ImageBatch | None = None, real: bool | None = None, *, features: Any = None
    ) -> None:
        """Add PIL images or uint8 N×H×W×3 images, or (``features=``) precomputed N×2048 features from the same
        extractor, to the real (``real=True``) or the generated (``real=False``) set."""
        if real is None:
            raise TypeError("update() needs real=True (reference images) or real=False (generated images)")
        if features is None:
            features = self.extractor(images)
        features = np.asarray(
            features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float32
        )
        if features.ndim != 2 or features.shape[1] != FEATURE_DIM:
            raise ValueError(f"expected N x {FEATURE_DIM} features, got {features.shape}")
        (self.real_features if real else self.fake_features).append(
            to_state(features, np.float32, self.device)
        )

    def update_features(self, features: np.ndarray, real: bool) -> None:
        """Add precomputed N×2048 features (from the same extractor) to the real or the generated set."""
        self.update(real=real, features=features)

    def features(self, real: bool) -> np.ndarray:
        """The real or the generated set's features so far, float32 N×2048."""
        array = state_array(self.real_features if real else self.fake_features, np.float32)
        return np.zeros((0, FEATURE_DIM), np.float32) if array is None else array

    def _provenance(self, real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
        return {**self.extractor.provenance, "n_real": len(real), "n_fake": len(fake)}


class FID(_InceptionMetric):
    """Fréchet Inception Distance: |μr − μf|² + Tr(Σr + Σf − 2(Σr Σf)^½), float64 statistics."""

    higher_is_better = False
    plot_lower_bound = 0.0
    labels = {"fid": "FID"}
    details_key = "fid"

    def compute(self) -> dict[str, Any]:
        real, fake = self.features(True), self.features(False)
        require_finite("FID", reference=real, generated=fake)
        small, large = sorted((real, fake), key=len)  # the distance is symmetric; factor the smaller set
        mu_s, sigma_s = feature_stats(small)
        mu_l, sigma_l = feature_stats(large)
        factor = sample_factor(small) if len(small) < FEATURE_DIM else None
        fid = frechet_distance(mu_s, sigma_s, mu_l, sigma_l, factor1=factor)
        return {"fid": fid, **self._provenance(real, fake)}


class KID(_InceptionMetric):
    """Kernel Inception Distance: mean and std of unbiased polynomial-kernel MMD² over random subsets.

    Computed as ``kernel_inception_distance(generated, reference)``, which equals torch-fidelity's
    ``kid_features_to_metric(generated, reference)`` (its ``input1``/``input2`` order) with the same seed and
    subset size. `subset_size` is capped at the smaller set; the result records both the size asked for
    (``kid_subset_size_requested``) and the size used (``kid_subset_size``). The unbiased estimate can be
    negative, so it has no plot bounds.
    """

    higher_is_better = False
    labels = {"kid_mean": "KID"}
    details_key = "kid"

    def __init__(
        self,
        extractor: InceptionFeatureExtractor | Precomputed | None = None,
        *,
        subsets: int = 100,
        subset_size: int = 1000,
        seed: int = KID_SEED,
        **extractor_kwargs: Any,
    ) -> None:
        super().__init__(extractor, **extractor_kwargs)
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def compute(self) -> dict[str, Any]:
        real, fake = self.features(True), self.features(False)
        require_finite("KID", reference=real, generated=fake)
        mean, std = kernel_inception_distance(fake, real, self.subsets, self.subset_size, self.seed)
        return {
            "kid_mean": mean,
            "kid_std": std,
            "kid_subsets": self.subsets,
            "kid_subset_size": min(self.subset_size, len(real), len(fake)),
            "kid_subset_size_requested": self.subset_size,
            "kid_seed": self.seed,
            "kid_order": "generated, reference (torch-fidelity input1, input2)",
            **self._provenance(real, fake),
        }
