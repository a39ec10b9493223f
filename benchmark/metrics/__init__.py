"""CompSG-Bench metrics: FID, KID, CLIP-T, CLIP-I, CMMD and graph IoUs, each a `torchmetrics.Metric` class
(`update()` / `compute()` / `reset()`, distributed sync) beside its functional form.

`RECORD_METRICS` lists the classes whose values a result record holds, in leaderboard order; each names its record
keys and labels (`labels`), its `metric_details` group (`details_key`) and its better direction
(`higher_is_better`). torch and torchmetrics are imported here; open_clip and the Inception network only when a
model is built.
"""

from benchmark.metrics.base import BenchmarkMetric
from benchmark.metrics.clip_score import (
    CLIPEmbedder,
    CLIPImageScore,
    CLIPScore,
    clip_provenance,
    clip_t_scores,
    cosine_scores,
)
from benchmark.metrics.cmmd import CMMD, cmmd
from benchmark.metrics.fid import FID, KID, kernel_inception_distance
from benchmark.metrics.frechet import (
    covariance_factor,
    feature_stats,
    frechet_distance,
    sample_factor,
    trace_sqrt_product,
)
from benchmark.metrics.graph_iou import GraphIoU, graph_iou
from benchmark.metrics.inception import (
    InceptionFeatureExtractor,
    inception_provenance,
    load_inception,
)
from benchmark.metrics.precomputed import Precomputed

RECORD_METRICS: tuple[type[BenchmarkMetric], ...] = (GraphIoU, FID, KID, CLIPScore, CLIPImageScore, CMMD)

__all__ = [
    "RECORD_METRICS",
    "BenchmarkMetric",
    "CLIPEmbedder",
    "CLIPImageScore",
    "CLIPScore",
    "CMMD",
    "FID",
    "GraphIoU",
    "InceptionFeatureExtractor",
    "KID",
    "Precomputed",
    "clip_provenance",
    "clip_t_scores",
    "cmmd",
    "cosine_scores",
    "covariance_factor",
    "feature_stats",
    "frechet_distance",
    "graph_iou",
    "inception_provenance",
    "kernel_inception_distance",
    "load_inception",
    "sample_factor",
    "trace_sqrt_product",
]
