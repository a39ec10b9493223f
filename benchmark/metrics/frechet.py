"""The Fréchet distance between two Gaussians, in float64, without `scipy.linalg.sqrtm`.

    d² = |μ1 − μ2|² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1 Σ2)^½

With any factor Σ1 = A Aᵀ, Σ1 Σ2 is similar to the symmetric PSD matrix M = Aᵀ Σ2 A, so
Tr (Σ1 Σ2)^½ = Σ √λ(M). A is the Cholesky factor (one cheap factorisation, then a single values-only
`eigvalsh`); a covariance that is not positive definite (fewer samples than dimensions) falls back to
A = V diag(√max(w, 0)) from `eigh`. Both paths stay real and finite where `sqrtm` goes complex, and the factor
of a fixed reference set can be computed once and passed as `factor1`.

A factor need not be square: for a set of n < d samples the centred data itself, Xᵀ/√(n−1) (d×n), is one,
and M shrinks to n×n (`sample_factor`); this is exact and far cheaper for small sets.
"""

from __future__ import annotations

import numpy as np

from benchmark.metrics.validation import require_finite

__all__ = ["covariance_factor", "feature_stats", "frechet_distance", "sample_factor", "trace_sqrt_product"]


def covariance_factor(sigma: np.ndarray) -> np.ndarray:
    """A with A Aᵀ = sigma: the Cholesky factor, or the clipped eigen-factor if sigma is not positive definite."""
    sigma = np.asarray(sigma, dtype=np.float64)
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = np.linalg.eigh(sigma)
        return eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None = None) -> float:
    """Tr (Σ1 Σ2)^½ for symmetric PSD Σ1, Σ2; `factor1` is a precomputed `covariance_factor(sigma1)`."""
    a = covariance_factor(sigma1) if factor1 is None else np.asarray(factor1, dtype=np.float64)
    m = a.T @ (np.asarray(sigma2, dtype=np.float64) @ a)
    eigenvalues = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    factor1: np.ndarray | None = None,
) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2); finite and ≥ 0 for rank-deficient covariances."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}"
        )
    diff = mu1 - mu2
    distance = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, factor1)
    )
    return max(float(distance), 0.0)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of an (n >= 2, d) feature array of finite values."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need an (n >= 2, d) feature array, got shape {features.shape}")
    require_finite("feature_stats", features=features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def sample_factor(features: np.ndarray) -> np.ndarray:
    """A (d×n) with A Aᵀ = the unbiased covariance of an (n, d) feature array: the centred data / √(n−1)."""
    features = np.asarray(features, dtype=np.float64)
    return (features - features.mean(axis=0)).T / np.sqrt(len(features) - 1)
