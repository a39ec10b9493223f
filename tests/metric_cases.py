"""Inputs for the metric classes, split in two parts, and each class's value by its functional form (the oracle):
shared by the in-process tests (tests/test_metrics_image.py) and the two-process test
(tests/test_metrics_distributed.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmark.metrics import (
    CMMD,
    FID,
    KID,
    CLIPImageScore,
    CLIPScore,
    GraphIoU,
    Precomputed,
    clip_t_scores,
    cmmd,
    cosine_scores,
    feature_stats,
    frechet_distance,
    graph_iou,
    kernel_inception_distance,
    sample_factor,
)
from benchmark.metrics.graph_iou import IOU_KEYS
from schemas import SceneGraph


@dataclass(frozen=True)
class Case:
    """`make()` a metric, `feed(metric, part)` it part 0 or 1 of the inputs; `expected`: the functional form on
    all inputs; `value(result)`: what to compare of `compute()`."""

    name: str
    make: Callable[[], Any]
    feed: Callable[[Any, int], None]
    expected: Any
    value: Callable[[Any], Any]


def _graph(objects: list[str], relations: list[tuple[int, str, int]]) -> SceneGraph:
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n} for i, n in enumerate(objects)],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    )


def cases() -> list[Case]:
    rng = np.random.default_rng(31)
    real = rng.standard_normal((24, 2048)).astype(np.float32)
    fake = (rng.standard_normal((20, 2048)) * 1.1 + 0.3).astype(np.float32)
    real_split, fake_split = 9, 13  # uneven parts, different for the two sets
    emb_real, emb_fake = rng.standard_normal((11, 16)), rng.standard_normal((7, 16)) + 0.4
    a, b = rng.standard_normal((10, 16)), rng.standard_normal((10, 16)) + 0.5 * rng.standard_normal((10, 16))
    pair_split = 4

    def inception_feed(metric: Any, part: int) -> None:
        metric.update_features(real[:real_split] if part == 0 else real[real_split:], real=True)
        metric.update_features(fake[:fake_split] if part == 0 else fake[fake_split:], real=False)

    def cmmd_feed(metric: Any, part: int) -> None:
        metric.update_embeddings(emb_real[:6] if part == 0 else emb_real[6:], real=True)
        metric.update_embeddings(emb_fake[:2] if part == 0 else emb_fake[2:], real=False)

    def pair_feed(metric: Any, part: int) -> None:
        rows = slice(0, pair_split) if part == 0 else slice(pair_split, None)
        metric.update_embeddings(a[rows], b[rows])

    target = _graph(["man", "horse", "hat"], [(0, "riding", 1), (0, "wearing", 2)])
    predictions = [
        _graph(["man", "horse"], [(0, "riding", 1)]),
        None,  # a failed judgement
        _graph(["men", "dog", "hat"], [(0, "wearing", 2), (1, "near", 0)]),
        _graph([], []),
        _graph(["man", "horse", "hat"], [(0, "riding", 1), (0, "wearing", 2)]),
    ]

    def iou_feed(metric: Any, part: int) -> None:
        for predicted in predictions[:2] if part == 0 else predictions[2:]:
            if predicted is None:
                metric.update_failed()
            else:
                metric.update(predicted, target)

    scores = [dict.fromkeys(IOU_KEYS, 0.0) if p is None else graph_iou(p, target) for p in predictions]
    mu_f, sigma_f = feature_stats(fake)
    mu_r, sigma_r = feature_stats(real)
    clip_t, clip_i = clip_t_scores(a, b), cosine_scores(a, b)
    return [
        # FID factors the smaller set (the 20 generated rows), as the functional call here does
        Case(
            "FID",
            lambda: FID(Precomputed()),
            inception_feed,
            frechet_distance(mu_f, sigma_f, mu_r, sigma_r, factor1=sample_factor(fake)),
            lambda out: out["fid"],
        ),
        Case(
            "KID",
            lambda: KID(Precomputed(), subsets=6, subset_size=8, seed=3),
            inception_feed,
            kernel_inception_distance(fake, real, subsets=6, subset_size=8, seed=3),
            lambda out: (out["kid_mean"], out["kid_std"]),
        ),
        Case(
            "CMMD",
            lambda: CMMD(Precomputed(), sigma=3.0),
            cmmd_feed,
            cmmd(emb_real, emb_fake, sigma=3.0),
            lambda out: out["cmmd"],
        ),
        Case(
            "CLIPScore",
            lambda: CLIPScore(Precomputed()),
            pair_feed,
            (float(clip_t.mean()), float(clip_t.std()), 10),
            lambda out: (out["clip_t"], out["clip_t_std"], out["n_pairs"]),
        ),
        Case(
            "CLIPImageScore",
            lambda: CLIPImageScore(Precomputed()),
            pair_feed,
            (float(clip_i.mean()), float(clip_i.std()), 10),
            lambda out: (out["clip_i"], out["clip_i_std"], out["n_pairs"]),
        ),
        Case(
            "GraphIoU",
            GraphIoU,
            iou_feed,
            {key: sum(s[key] for s in scores) / len(scores) for key in IOU_KEYS},
            lambda out: out,
        ),
    ]
