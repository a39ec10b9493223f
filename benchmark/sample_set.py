"""The frozen CompSG-Bench file: its schema, its samples, its canonical content hash and its manifest.

The file holds ``key, caption, scene_graph, sg_text, image`` (reference image bytes; null in a reference-free set)
sorted by key, with the Hugging Face features metadata, and a manifest ``<name>.manifest.json`` beside it. The
content hash is canonical (independent of the Parquet encoding): the sha256 of one JSON line per row, in key
order, ``[key, caption, scene_graph, sg_text, sha256(image bytes) or null]``. `load_benchmark` recomputes it and
refuses a file that does not match. `benchmark.dataset` writes such files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import (
    IMAGE_TYPE,
    SCENE_GRAPH_TYPE,
    BenchmarkInfo,
    SceneGraph,
    scene_graph_from_arrow,
    with_hf_metadata,
)

__all__ = [
    "BENCHMARK_SCHEMA",
    "BenchmarkHashError",
    "BenchmarkSample",
    "BenchmarkSet",
    "content_hash",
    "load_benchmark",
    "manifest_path",
    "subset_rank",
]

HASH_RULE = "sha256 of JSON lines [key, caption, scene_graph, sg_text, sha256(image bytes)] in key order"
REFERENCE_FREE_HASH_RULE = "sha256 of JSON lines [key, caption, scene_graph, sg_text, null] in key order (no images)"

BENCHMARK_SCHEMA = with_hf_metadata(
    pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("caption", pa.string()),
            pa.field("scene_graph", SCENE_GRAPH_TYPE),
            pa.field("sg_text", pa.string()),
            pa.field("image", IMAGE_TYPE),
        ]
    )
)


class BenchmarkHashError(ValueError):
    """The benchmark file does not match the content hash of its manifest."""


@dataclass(frozen=True)
class BenchmarkSample:
    """One prompt of the benchmark: what to generate from, and the real image to compare with (None in a
    reference-free set)."""

    key: str
    caption: str
    scene_graph: SceneGraph
    sg_text: str
    image: bytes | None


@dataclass(frozen=True)
class BenchmarkSet:
    """A loaded, hash-verified benchmark file and its manifest."""

    path: Path
    manifest: dict[str, Any]
    samples: tuple[BenchmarkSample, ...]

    @property
    def reference_free(self) -> bool:
        """Whether the set has no reference images (frozen with ``--reference-free``)."""
        return bool(self.manifest.get("reference_free", False))

    def info(self) -> BenchmarkInfo:
        """The `benchmark` part of a result record."""
        return BenchmarkInfo(
            name=self.manifest["name"],
            version=self.manifest["version"],
            content_hash=self.manifest["content_hash"],
            n_samples=len(self.samples),
        )


def manifest_path(bench_path: str | Path) -> Path:
    """``bench.parquet`` → ``bench.manifest.json`` (same directory)."""
    path = Path(bench_path)
    return path.with_name(path.stem + ".manifest.json")


def subset_rank(key: str, seed: int) -> str:
    """The sort key of the stable subset: sha256 of ``"{seed}:{key}"``."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def content_hash(rows: Iterable[dict[str, Any]]) -> str:
    """The canonical hash of benchmark rows (dicts with key, caption, scene_graph, sg_text, image), in key order;
    a row without an image (a reference-free set) has null in the image hash's place."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        graph = scene_graph_from_arrow(row["scene_graph"])
        image = (row["image"] or {}).get("bytes")
        image_hash = None if image is None else hashlib.sha256(image).hexdigest()
        line = [row["key"], row["caption"], graph.to_dict(), row["sg_text"], image_hash]
        digest.update(json.dumps(line, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def load_benchmark(path: str | Path) -> BenchmarkSet:
    """Read a frozen benchmark file, check it against its manifest's content hash, and return its samples."""
    path = Path(path)
    manifest = json.loads(manifest_path(path).read_text())
    rows = pq.read_table(path, schema=BENCHMARK_SCHEMA).to_pylist()
    found = content_hash(rows)
    if found != manifest["content_hash"]:
        raise BenchmarkHashError(
            f"{path}: content hash {found} does not match the manifest's {manifest['content_hash']}"
        )
    samples = tuple(
        BenchmarkSample(
            key=r["key"],
            caption=r["caption"],
            scene_graph=scene_graph_from_arrow(r["scene_graph"]),
            sg_text=r["sg_text"],
            image=(r["image"] or {}).get("bytes"),
        )
        for r in sorted(rows, key=lambda r: r["key"])
    )
    return BenchmarkSet(path=path, manifest=manifest, samples=samples)
