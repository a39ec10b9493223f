"""Image features for CompSG-Bench's image metrics, extracted on Ray actors (one GPU each on a GPU cluster) or in
this process, and stored under ``RUN_DIR/features/{settings digest}/`` as Parquet chunks, resumable like the images
and judgements (`benchmark.chunks`).

One row per image: ``key``, ``image_index`` (`REFERENCE_INDEX` for the benchmark's real image of the key), the
Inception pool3 features (FID, KID), the CLIP image embedding (CLIP-T, CLIP-I), the CMMD CLIP embedding and, on
reference rows, the CLIP embedding of the sample's text (CLIP-T). A chunk is `FeatureSettings.batch_size` items
in the order given, fixed by neither the number of actors nor what is already stored, and a worker embeds a chunk
as one batch with one thread, so the features do not depend on how many actors ran or on interruptions (batch
composition changes float results, which is why the batch size is a setting of the folder). A change of metric
settings gets its own folder.

For a reference-free set (`FeatureSettings.reference_images` False) only CLIP is loaded: generated rows get their
CLIP image embedding, reference rows are text-only (no image: the key's text embedding, for CLIP-T), and the
Inception and CMMD columns (and a text-only row's ``clip``) hold empty lists.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from benchmark.chunks import chunk_name, iter_chunks, map_chunks, write_chunk

__all__ = [
    "FEATURES_SCHEMA",
    "REFERENCE_INDEX",
    "FeatureItem",
    "FeatureSettings",
    "ImageFeaturizer",
    "StoredFeatures",
    "extract_features",
]

REFERENCE_INDEX = -1
_EMBEDDINGS = ("inception", "clip", "cmmd", "text_clip")
FEATURES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("inception", pa.list_(pa.float32()), nullable=False),
        pa.field("clip", pa.list_(pa.float64()), nullable=False),
        pa.field("cmmd", pa.list_(pa.float64()), nullable=False),
        pa.field("text_clip", pa.list_(pa.float64())),
    ]
)


@dataclass(frozen=True)
class FeatureSettings:
    """The feature networks; `digest()` names the folder their features are stored in."""

    inception_weights: str | None
    allow_download: bool
    clip_model: str
    clip_pretrained: str | None
    cmmd_clip_model: str
    cmmd_clip_pretrained: str | None
    batch_size: int = 32
    reference_images: bool = True  # False: a reference-free set, CLIP only (CLIP-T)

    @property
    def same_cmmd_model(self) -> bool:
        return (self.cmmd_clip_model, self.cmmd_clip_pretrained) == (self.clip_model, self.clip_pretrained)

    def provenance(self) -> dict[str, dict[str, Any]]:
        """The provenance of each feature kind, computed without loading any network (CLIP's only, without
        reference images: the Inception weights need not be there)."""
        from benchmark.metrics import clip_provenance, inception_provenance

        if not self.reference_images:
            return {"clip": clip_provenance(self.clip_model, self.clip_pretrained)}
        return {
            "inception": inception_provenance(self.inception_weights, self.allow_download),
            "clip": clip_provenance(self.clip_model, self.clip_pretrained),
            "cmmd": clip_provenance(self.cmmd_clip_model, self.cmmd_clip_pretrained),
        }

    def digest(self, provenance: dict[str, dict[str, Any]], texts: Sequence[str]) -> str:
        """16 hex digits over the networks (`provenance()`, with their weights' sha256), the batch size and the
        texts CLIP-T compares with."""
        identity: dict[str, Any] = {"provenance": provenance, "batch_size": self.batch_size, "texts": list(texts)}
        if not self.reference_images:  # only then, so that the folders of sets with references keep their names
            identity["reference_images"] = False
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureItem:
    """One image to featurise; `text` (reference items only) is the text that CLIP-T compares generated images
    of this key with; `image` is None for the text-only reference item of a reference-free set."""

    key: str
    image_index: int
    image: bytes | None
    text: str | None = None


def _decode(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class ImageFeaturizer:
    """Loads the Inception and CLIP networks once and featurises chunks of `FeatureItem` (a chunk worker)."""

    def __init__(self, settings: FeatureSettings, device: str | None = None) -> None:
        from benchmark.metrics import CLIPEmbedder, InceptionFeatureExtractor

        batch = {"device": device, "batch_size": settings.batch_size}
        self.clip = CLIPEmbedder(settings.clip_model, settings.clip_pretrained, **batch)
        self.inception = self.cmmd_clip = None  # a reference-free set: CLIP only
        if settings.reference_images:
            self.inception = InceptionFeatureExtractor(
                settings.inception_weights, allow_download=settings.allow_download, **batch
            )
            self.cmmd_clip = (
                self.clip
                if settings.same_cmmd_model
                else CLIPEmbedder(settings.cmmd_clip_model, settings.cmmd_clip_pretrained, **batch)
            )

    def __call__(self, items: Sequence[FeatureItem]) -> list[dict[str, Any]]:
        with_image = [i for i, item in enumerate(items) if item.image is not None]
        images = [_decode(items[i].image) for i in with_image]

        def by_item(found: Any) -> dict[int, Any]:
            return dict(zip(with_image, found, strict=True))

        clip = by_item(self.clip.embed_images(images)) if images else {}
        inception = by_item(self.inception(images)) if self.inception is not None and images else {}
        if self.cmmd_clip is self.clip:
            cmmd = clip
        else:
            cmmd = by_item(self.cmmd_clip.embed_images(images)) if self.cmmd_clip is not None and images else {}
        texts = [item.text for item in items if item.text is not None]
        text_embeddings = iter(self.clip.embed_texts(texts) if texts else ())
        return [
            {
                "key": item.key,
                "image_index": item.image_index,
                "inception": inception.get(i, []),
                "clip": clip.get(i, []),
                "cmmd": cmmd.get(i, []),
                "text_clip": None if item.text is None else next(text_embeddings),
            }
            for i, item in enumerate(items)
        ]


class StoredFeatures:
    """Every stored feature row, looked up as N×D arrays in the order of the ids asked for."""

    def __init__(self, table: pa.Table) -> None:
        ids = zip(table.column("key").to_pylist(), table.column("image_index").to_pylist(), strict=True)
        self.row = {item_id: i for i, item_id in enumerate(ids)}
        self.table = table

    def array(self, name: str, ids: Sequence[tuple[str, int]]) -> np.ndarray:
        """Column `name` of rows `ids` as an N×D array."""
        if name not in _EMBEDDINGS:
            raise KeyError(name)
        rows = self.table.column(name).take(pa.array([self.row[i] for i in ids], pa.int64()))
        values = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
        return values.flatten().to_numpy().reshape(len(ids), -1)


def _chunks(items: Iterable[FeatureItem], chunk_size: int) -> Iterator[tuple[str, list[FeatureItem]]]:
    remaining = iter(items)
    while chunk := list(itertools.islice(remaining, chunk_size)):
        yield chunk_name([f"{i.key}:{i.image_index}" for i in chunk]), chunk


def extract_features(
    items: Iterable[FeatureItem],
    settings: FeatureSettings,
    out_dir: str | Path,
    *,
    num_actors: int = 0,
    device: str | None = None,
) -> StoredFeatures:
    """Featurise every chunk of `items` whose file is not under `out_dir` yet; return all stored features.
    `items` is consumed lazily (one chunk per actor in flight), so the driver never holds all the images."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = (chunk for chunk in _chunks(items, settings.batch_size) if not (out / f"part-{chunk[0]}.parquet").exists())
    map_chunks(
        ImageFeaturizer,
        {"settings": settings, "device": device},
        todo,
        lambda name, rows: write_chunk(out, name, rows, FEATURES_SCHEMA),
        num_actors=num_actors,
    )
    return StoredFeatures(pa.concat_tables([FEATURES_SCHEMA.empty_table(), *iter_chunks(out, FEATURES_SCHEMA)]))

