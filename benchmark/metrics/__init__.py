"""CompSG-Bench metrics: FID, KID, CLIP-T, CLIP-I, CMMD, graph IoUs, the question track's scores and the spatial
track's VISOR (`VISORScore`), each a `torchmetrics.Metric` class (`update()` / `compute()` / `reset()`, distributed
sync) beside its functional form (`visor`, `visor_details`: torch-free); and Gen4Gen's `cp_clip` / `ti_clip`
(torch-free) with their classes `CPCLIPScore` / `TICLIPScore` (track ``compositing``: they score a compositing
output, `benchmark.compositing`; not columns of result records, so not in `RECORD_METRICS`).

`RECORD_METRICS` lists the classes whose values a result record holds, in leaderboard order; each names its record
keys and labels (`labels`), its `metric_details` group (`details_key`) and its better direction
(`higher_is_better`).

Every name here is imported on first use (PEP 562), from the module named in `_LAZY`, so that importing one
metric module, or `benchmark.metrics.graph_match` (the pure-python graph IoUs the judge's actors use), does not
import the others nor torchmetrics (about ten seconds: it imports all its domains). The metric classes import
torch and torchmetrics; open_clip and the Inception network are imported only when a model is built.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmark.metrics.base import BenchmarkMetric
    from benchmark.metrics.clip_embedding import CLIPEmbedder, clip_provenance, clip_t_scores, cosine_scores
    from benchmark.metrics.clip_score import CLIPImageScore, CLIPScore
    from benchmark.metrics.cmmd import CMMD, cmmd
    from benchmark.metrics.concept_clip import cp_clip, cp_clip_scores, ti_clip, ti_clip_scores
    from benchmark.metrics.concept_clip_score import CPCLIPScore, TICLIPScore
    from benchmark.metrics.fid import FID, KID, kernel_inception_distance
    from benchmark.metrics.frechet import (
        covariance_factor,
        feature_stats,
        frechet_distance,
        sample_factor,
        trace_sqrt_product,
    )
    from benchmark.metrics.graph_iou import GraphIoU
    from benchmark.metrics.graph_match import graph_iou
    from benchmark.metrics.inception import (
        InceptionFeatureExtractor,
        inception_provenance,
        load_inception,
    )
    from benchmark.metrics.precomputed import Precomputed
    from benchmark.metrics.question_score import QuestionScore
    from benchmark.metrics.visor import visor, visor_details
    from benchmark.metrics.visor_score import VISORScore

    RECORD_METRICS: tuple[type[BenchmarkMetric], ...]

__all__ = [
    "RECORD_METRICS",
    "BenchmarkMetric",
    "CLIPEmbedder",
    "CLIPImageScore",
    "CLIPScore",
    "CMMD",
    "CPCLIPScore",
    "FID",
    "GraphIoU",
    "InceptionFeatureExtractor",
    "KID",
    "Precomputed",
    "QuestionScore",
    "TICLIPScore",
    "VISORScore",
    "clip_provenance",
    "clip_t_scores",
    "cmmd",
    "cosine_scores",
    "covariance_factor",
    "cp_clip",
    "cp_clip_scores",
    "feature_stats",
    "frechet_distance",
    "graph_iou",
    "inception_provenance",
    "kernel_inception_distance",
    "load_inception",
    "sample_factor",
    "ti_clip",
    "ti_clip_scores",
    "trace_sqrt_product",
    "visor",
    "visor_details",
]

# public name -> the module that defines it
_LAZY = {
    "BenchmarkMetric": "benchmark.metrics.base",
    "CLIPEmbedder": "benchmark.metrics.clip_embedding",
    "CLIPImageScore": "benchmark.metrics.clip_score",
    "CLIPScore": "benchmark.metrics.clip_score",
    "clip_provenance": "benchmark.metrics.clip_embedding",
    "clip_t_scores": "benchmark.metrics.clip_embedding",
    "cosine_scores": "benchmark.metrics.clip_embedding",
    "CMMD": "benchmark.metrics.cmmd",
    "cmmd": "benchmark.metrics.cmmd",
    "CPCLIPScore": "benchmark.metrics.concept_clip_score",
    "TICLIPScore": "benchmark.metrics.concept_clip_score",
    "cp_clip": "benchmark.metrics.concept_clip",
    "cp_clip_scores": "benchmark.metrics.concept_clip",
    "ti_clip": "benchmark.metrics.concept_clip",
    "ti_clip_scores": "benchmark.metrics.concept_clip",
    "FID": "benchmark.metrics.fid",
    "KID": "benchmark.metrics.fid",
    "kernel_inception_distance": "benchmark.metrics.fid",
    "covariance_factor": "benchmark.metrics.frechet",
    "feature_stats": "benchmark.metrics.frechet",
    "frechet_distance": "benchmark.metrics.frechet",
    "sample_factor": "benchmark.metrics.frechet",
    "trace_sqrt_product": "benchmark.metrics.frechet",
    "GraphIoU": "benchmark.metrics.graph_iou",
    "graph_iou": "benchmark.metrics.graph_match",
    "InceptionFeatureExtractor": "benchmark.metrics.inception",
    "inception_provenance": "benchmark.metrics.inception",
    "load_inception": "benchmark.metrics.inception",
    "Precomputed": "benchmark.metrics.precomputed",
    "QuestionScore": "benchmark.metrics.question_score",
    "visor": "benchmark.metrics.visor",
    "visor_details": "benchmark.metrics.visor",
    "VISORScore": "benchmark.metrics.visor_score",
}

# the classes of RECORD_METRICS, in leaderboard order
_RECORD_METRICS = ("GraphIoU", "FID", "KID", "CLIPScore", "CLIPImageScore", "CMMD", "QuestionScore", "VISORScore")


def __getattr__(name: str) -> Any:
    if name == "RECORD_METRICS":
        value: Any = tuple(__getattr__(class_name) for class_name in _RECORD_METRICS)
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # cached: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps the public names `cmmd`, `graph_iou` and `visor` the functions. Importing the submodule of the same name
    (`benchmark.metrics.cmmd`, `benchmark.metrics.graph_iou`) makes Python set the package attribute to that
    module; the eager package bound the functions over them after its imports, and so it stays here."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
