"""The Arrow schema of one dataset row, and the Hugging Face `features` metadata that goes with it.

The schema carries a ``huggingface`` metadata entry, so `datasets.load_dataset("parquet", ...)` decodes the
`image` column as a PIL image and `scene_graph` as nested lists/dicts without any loading script.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa

from schemas.scene_graph import SceneGraph, SGObject, SGRelation

__all__ = [
    "ANNOTATION_TYPE",
    "IMAGE_TYPE",
    "SCENE_GRAPH_TYPE",
    "STATUSES",
    "UPSTREAM_FIELDS",
    "Status",
    "annotation_record",
    "hf_features",
    "row_key",
    "row_schema",
    "scene_graph_from_arrow",
    "scene_graph_to_arrow",
    "with_hf_metadata",
]

Status = Literal["ok", "repaired", "failed"]
STATUSES: tuple[Status, ...] = ("ok", "repaired", "failed")

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

SCENE_GRAPH_TYPE = pa.struct(
    [
        (
            "objects",
            pa.list_(pa.struct([("id", pa.int32()), ("name", pa.string()), ("attributes", pa.list_(pa.string()))])),
        ),
        (
            "relations",
            pa.list_(pa.struct([("subject", pa.int32()), ("predicate", pa.string()), ("object", pa.int32())])),
        ),
    ]
)

ANNOTATION_TYPE = pa.struct(
    [
        ("model", pa.string()),
        ("engine", pa.string()),
        ("task", pa.string()),
        ("prompt_version", pa.string()),
        ("raw_output", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("seconds", pa.float64()),
    ]
)

# Upstream metadata kept for curation (null where the input has none): the original size before img2dataset
# resized the image (`width`/`height` are the stored image's), LAION's scores, and img2dataset's own key and
# sha256 of the downloaded bytes.
UPSTREAM_FIELDS: tuple[pa.Field, ...] = (
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("punsafe", pa.float32()),
    pa.field("pwatermark", pa.float32()),
    pa.field("similarity", pa.float32()),
    pa.field("sha256", pa.string()),
    pa.field("source_key", pa.string()),
)

_BASE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string()),
    pa.field("url", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("aesthetic_score", pa.float32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    *UPSTREAM_FIELDS,
    pa.field("image", IMAGE_TYPE),
    pa.field("scene_graph", SCENE_GRAPH_TYPE),
    pa.field("sg_text", pa.string()),
    pa.field("annotation", ANNOTATION_TYPE),
]


def row_schema(extra_columns: Mapping[str, pa.DataType] | None = None, with_image: bool = True) -> pa.Schema:
    """The dataset row schema with Hugging Face metadata.

    `extra_columns` are the output columns of other annotation tasks (e.g. ``{"spatial_caption": pa.string()}``);
    `with_image=False` leaves the image out (annotation output that references images by key only).
    """
    fields = [f for f in _BASE_FIELDS if with_image or f.name != "image"]
    fields += [pa.field(name, dtype) for name, dtype in (extra_columns or {}).items()]
    return with_hf_metadata(pa.schema(fields))


def _feature(dtype: pa.DataType, name: str) -> Any:
    if name == "image" and dtype.equals(IMAGE_TYPE):
        return {"_type": "Image"}
    if pa.types.is_struct(dtype):
        return {dtype.field(i).name: _feature(dtype.field(i).type, dtype.field(i).name) for i in range(dtype.num_fields)}
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return {"feature": _feature(dtype.value_type, ""), "_type": "LargeList" if pa.types.is_large_list(dtype) else "List"}
    value = {pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary"}.get(dtype, str(dtype))
    return {"dtype": {"float": "float32", "double": "float64", "halffloat": "float16"}.get(value, value), "_type": "Value"}


def hf_features(schema: pa.Schema) -> dict[str, Any]:
    """The `datasets.Features.to_dict()` form of `schema`; a column named ``image`` with the image struct is an `Image`."""
    return {f.name: _feature(f.type, f.name) for f in schema}


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    """`schema` with the ``huggingface`` metadata entry that `datasets` reads features from."""
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": hf_features(schema)}}).encode()
    return schema.with_metadata(metadata)


def row_key(url: str | None = None, image_bytes: bytes | None = None, caption: str | None = None) -> str:
    """The stable `key` of a row: sha1 of the URL when there is one, else of the image bytes, else (a text-only
    row, e.g. a Parquet of prompts) of the caption."""
    if url:
        return hashlib.sha1(url.encode("utf-8")).hexdigest()
    if image_bytes is not None:
        return hashlib.sha1(image_bytes).hexdigest()
    if caption and caption.strip():
        return hashlib.sha1(caption.encode("utf-8")).hexdigest()
    raise ValueError("a row key needs a URL, the image bytes or a caption")


def scene_graph_to_arrow(graph: SceneGraph | None) -> dict[str, Any] | None:
    """A graph as the Python value of a `SCENE_GRAPH_TYPE` cell."""
    return None if graph is None else graph.to_dict()


def scene_graph_from_arrow(value: Mapping[str, Any] | None) -> SceneGraph | None:
    """A `SCENE_GRAPH_TYPE` cell (as returned by pyarrow, Ray Data or `datasets`) back to a graph.

    `datasets` returns lists of structs either as lists of dicts or as dicts of lists; both are accepted.
    """
    if value is None:
        return None

    def rows(column: Any) -> list[dict[str, Any]]:
        if isinstance(column, Mapping):
            keys = list(column)
            return [dict(zip(keys, values, strict=True)) for values in zip(*(column[k] for k in keys), strict=True)]
        return list(column or [])

    return SceneGraph(
        [SGObject(int(o["id"]), o["name"], list(o["attributes"] or [])) for o in rows(value["objects"])],
        [SGRelation(int(r["subject"]), r["predicate"], int(r["object"])) for r in rows(value["relations"])],
    )


def annotation_record(
    *,
    model: str,
    engine: str,
    task: str,
    prompt_version: str,
    status: Status,
    raw_output: str | None = None,
    error: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """The `annotation` struct of a row; `status` is one of ok / repaired / failed."""
    if status not in STATUSES:
        raise ValueError(f"annotation status must be one of {STATUSES}, got {status!r}")
    if status == "failed" and not error:
        raise ValueError("a failed annotation needs an error reason")
    return {
        "model": model,
        "engine": engine,
        "task": task,
        "prompt_version": prompt_version,
        "raw_output": raw_output,
        "status": status,
        "error": error,
        "seconds": seconds,
    }
