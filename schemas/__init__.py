"""The data contract shared by every part of the package (no heavy dependencies: dataclasses, pydantic, pyarrow)."""

from schemas.converters import GraphLike, as_scene_graph
from schemas.errors import RecordError, SceneGraphError
from schemas.flip import flip_graph
from schemas.graph_text import normalize_text
from schemas.limits import DEFAULT_LIMITS, Limits, Vocabulary
from schemas.results import (
    BenchmarkInfo,
    BenchmarkResult,
    GenerationSettings,
    ModelInfo,
    Provenance,
    json_kind,
)
from schemas.rows import (
    ANNOTATION_TYPE,
    IMAGE_TYPE,
    SCENE_GRAPH_TYPE,
    STATUSES,
    UPSTREAM_FIELDS,
    Status,
    annotation_record,
    hf_features,
    row_key,
    row_schema,
    scene_graph_from_arrow,
    scene_graph_to_arrow,
    with_hf_metadata,
)
from schemas.scene_graph import SceneGraph, SGObject, SGRelation

__all__ = [
    "ANNOTATION_TYPE",
    "DEFAULT_LIMITS",
    "IMAGE_TYPE",
    "SCENE_GRAPH_TYPE",
    "STATUSES",
    "UPSTREAM_FIELDS",
    "BenchmarkInfo",
    "BenchmarkResult",
    "GenerationSettings",
    "GraphLike",
    "Limits",
    "ModelInfo",
    "Provenance",
    "RecordError",
    "SGObject",
    "SGRelation",
    "SceneGraph",
    "SceneGraphError",
    "Status",
    "Vocabulary",
    "annotation_record",
    "as_scene_graph",
    "flip_graph",
    "hf_features",
    "json_kind",
    "normalize_text",
    "row_key",
    "row_schema",
    "scene_graph_from_arrow",
    "scene_graph_to_arrow",
    "with_hf_metadata",
]
