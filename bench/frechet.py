"""Time the Fréchet distance at 2048-d: ours vs scipy `sqrtm` vs eigenvalues of Σ1Σ2, and check equal values.

    .venv/bin/python bench/frechet.py [--dim 2048] [--samples 3000] [--repeats 3]

Covariances are the sample covariances of two correlated Gaussian sets (SPD for samples > dim). Each method is
run once untimed (library warm-up), then timed `--repeats` times (scipy `sqrtm` once); the best time is shown.
Exits non-zero if any method's value differs from ours by more than 1e-6 (relative).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torchmetrics.image.fid import _compute_fid

from benchmark.metrics import covariance_factor, feature_stats, frechet_distance

Stats = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _scipy_sqrtm(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """pytorch-fid / clean-fid: Tr sqrtm(Σ1Σ2), real part."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def _eigvals_numpy(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """torch-fidelity: Σ √eigvals(Σ1Σ2) with numpy."""
    return fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)[KEY_METRIC_FID]


def _eigvals_torch(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """torchmetrics: Σ √eigvals(Σ1Σ2) with torch.linalg, float64."""
    return float(_compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))))


def _symmetric_eigh(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Σ √eigvalsh(√Σ1 Σ2 √Σ1) with √Σ1 from eigh: two eigendecompositions."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    diff = mu1 - mu2
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr)


def _statistics(dim: int, samples: int, seed: int = 0) -> Stats:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim) + np.eye(dim)
    mu1, s1 = feature_stats(rng.standard_normal((samples, dim)) @ mixing)
    mu2, s2 = feature_stats(rng.standard_normal((samples, dim)) @ (mixing * 1.05) + 0.1)
    return mu1, s1, mu2, s2


def _best_time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    times, value = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    stats = _statistics(args.dim, args.samples)
    factor = covariance_factor(stats[1])
    methods: list[tuple[str, Callable[[], float], int]] = [
        ("ours: Cholesky(Σ1) + eigvalsh", lambda: frechet_distance(*stats), args.repeats),
        ("ours, Σ1 factor cached", lambda: frechet_distance(*stats, factor1=factor), args.repeats),
        ("symmetric: eigh √Σ1, eigvalsh", lambda: _symmetric_eigh(*stats), args.repeats),
        ("eigvals(Σ1Σ2) torch (torchmetrics)", lambda: _eigvals_torch(*stats), args.repeats),
        ("eigvals(Σ1Σ2) numpy (torch-fidelity)", lambda: _eigvals_numpy(*stats), args.repeats),
        ("scipy sqrtm (pytorch-fid, clean-fid)", lambda: _scipy_sqrtm(*stats), 1),
    ]
    small = _statistics(64, 200, seed=1)
    for fn in (frechet_distance, _symmetric_eigh, _eigvals_torch, _eigvals_numpy, _scipy_sqrtm):
        fn(*small)  # warm up thread pools and LAPACK

    print(
        f"Fréchet distance, d={args.dim}, covariances of {args.samples} samples, {torch.get_num_threads()} threads"
    )
    rows = [(name, *_best_time(fn, repeats)) for name, fn, repeats in methods]
    ours_time, ours_value = rows[0][1], rows[0][2]
    print(f"{'method':40s} {'seconds':>9s} {'× ours':>8s} {'FID':>16s} {'rel. diff':>10s}")
    ok = True
    for name, seconds, value in rows:
        rel = abs(value - ours_value) / abs(ours_value)
        ok &= rel <= 1e-6
        print(f"{name:40s} {seconds:9.3f} {seconds / ours_time:8.2f} {value:16.6f} {rel:10.1e}")
    print("values agree within 1e-6" if ok else "VALUES DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
