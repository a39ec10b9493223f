"""Which split each exported row goes to.

The rule, in two steps:

1. Keyed assignment (`assign_splits`): sha256(seed, key) read as a number in [0, 1) (the row's *point*) is
   placed on the cumulative proportions. A row's split depends only on its key, the seed and the proportions,
   so it is stable across re-runs, input sharding, row order and dataset growth.
2. No empty split on small data (`fill_empty_splits`): if a split with a positive proportion got no row, the
   row whose point lies nearest to that split's interval moves into it, taken from a split that keeps at least
   one row. Empty splits are filled largest proportion first (ties in `SPLITS` order), one row each, while a
   split with two or more rows remains; so with n rows and k positive proportions, every one of them gets a
   row when n >= k, and min(n, k) splits have rows otherwise. The moved rows are chosen by their points only,
   so the result depends on the set of keys, never on their order; on data large enough that no split is empty
   (the usual case), step 2 changes nothing and step 1 alone decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_PROPORTIONS",
    "SPLITS",
    "assign_splits",
    "balanced_splits",
    "check_proportions",
    "fill_empty_splits",
    "key_digests",
    "points_of_digests",
    "split_points",
    "splits_of_points",
]

SPLITS = ("train", "validation", "test")
# LAION-SG: 480,005 train / 10,000 validation / 50,000 test of the 540,005 downloadable images.
DEFAULT_PROPORTIONS = (480_005, 10_000, 50_000)


def check_proportions(proportions: Sequence[float]) -> None:
    if len(proportions) != len(SPLITS) or any(p < 0 for p in proportions) or sum(proportions) <= 0:
        raise ValueError(
            f"proportions must be {len(SPLITS)} non-negative numbers (train, validation, test), got {proportions}"
        )


def _bounds(proportions: Sequence[float]) -> np.ndarray:
    """The cumulative proportions as fractions: split i covers [bounds[i], bounds[i + 1])."""
    return np.concatenate([[0.0], np.cumsum(proportions) / float(sum(proportions))])


def key_digests(keys: Sequence[str | None], seed: int = 0) -> np.ndarray:
    """The first 16 bytes of sha256(f"{seed}:{key}") of each key, as an (n, 2) array of unsigned 64-bit numbers
    (big-endian halves). The first half places the row (`split_points`); both halves identify the key in the
    export's duplicate detection, 16 bytes per row whatever the key's length."""
    digests = b"".join(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:16] for key in keys)
    return np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)


def points_of_digests(digests: np.ndarray) -> np.ndarray:
    """The `split_points` of keys from their `key_digests`: the first half over 2**64."""
    return digests[:, 0].astype(np.float64) / 2.0**64


def split_points(keys: Sequence[str], seed: int = 0) -> np.ndarray:
    """Each key's point in [0, 1): the first 8 bytes of sha256(f"{seed}:{key}") over 2**64."""
    return points_of_digests(key_digests(keys, seed))


def splits_of_points(points: np.ndarray, proportions: Sequence[float] = DEFAULT_PROPORTIONS) -> np.ndarray:
    """The split index (into `SPLITS`) of each point: the interval of the cumulative `proportions` it lies in."""
    check_proportions(proportions)
    return np.searchsorted(_bounds(proportions)[1:-1], points, side="right").astype(np.int8)


def assign_splits(
    keys: Sequence[str], proportions: Sequence[float] = DEFAULT_PROPORTIONS, seed: int = 0
) -> np.ndarray:
    """The split index (into `SPLITS`) of each key: its `split_points` value placed on the cumulative
    `proportions`. Depends on nothing but the key, the seed and the proportions."""
    check_proportions(proportions)
    return splits_of_points(split_points(keys, seed), proportions)


def fill_empty_splits(points: np.ndarray, splits: np.ndarray, proportions: Sequence[float]) -> np.ndarray:
    """`splits` (indices into `SPLITS`, one per row with its point in `points`) with every empty split of positive
    proportion given one row, as the module docstring says; a new array, `splits` is left as it is."""
    check_proportions(proportions)
    points = np.asarray(points, dtype=np.float64)
    out = np.array(splits, dtype=np.int8, copy=True)
    bounds = _bounds(proportions)
    wanted = sorted((i for i, p in enumerate(proportions) if p > 0), key=lambda i: (-proportions[i], i))
    for target in wanted:
        counts = np.bincount(out, minlength=len(SPLITS))
        if counts[target]:
            continue
        donors = np.flatnonzero(counts[out] >= 2)  # rows whose split keeps a row after giving this one
        if donors.size == 0:
            break
        low, high = bounds[target], bounds[target + 1]
        distance = np.maximum(low - points[donors], 0.0) + np.maximum(points[donors] - high, 0.0)
        # nearest to the interval; among equals the lowest point (a function of the keys, not of their order)
        order = np.lexsort((points[donors], distance))
        out[donors[order[0]]] = target
    return out


def balanced_splits(
    keys: Sequence[str], proportions: Sequence[float] = DEFAULT_PROPORTIONS, seed: int = 0
) -> np.ndarray:
    """`assign_splits` of the whole set of `keys`, then `fill_empty_splits`."""
    return fill_empty_splits(split_points(keys, seed), assign_splits(keys, proportions, seed), proportions)
