"""The chunk workers of the compositing scores (`benchmark.compositing`), kept free of torchmetrics so that a Ray
actor importing them loads only the detector and CLIP.

`CompositingWorker` (one pass over both kinds of items, rows of `STORED_SCHEMA`):
- a `ReferenceItem`, one reference image of a concept: its CLIP image embedding;
- a `CompositeItem`, one composite: the detector's highest-scoring box of each concept phrase, the CLIP embedding
  of each box's crop (`crop_box`), of the whole image and of the caption.

Each item is decoded as the detector decodes it (`pipelines.images.prepare_image`, bounds
`benchmark.spatial.detect.DECODE_MAX_SIDE`) and embedded on its own (a batch of one), so the stored rows do not
depend on chunking or on the number of actors.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from PIL import Image

from benchmark.spatial.detect import DECODE_MAX_SIDE, DetectItem, DetectorSettings, ObjectDetector

__all__ = [
    "REGION_TYPE",
    "STORED_SCHEMA",
    "CompositeItem",
    "CompositingWorker",
    "ReferenceItem",
    "crop_box",
    "decode",
]

_EMBEDDING = pa.list_(pa.float64())

REGION_TYPE = pa.struct(
    [
        pa.field("label", pa.string(), nullable=False),  # the concept's phrase
        pa.field("score", pa.float64(), nullable=False),
        # the box in pixels of the decoded image, y downward (no fixed-size list: null regions would not read back)
        *(pa.field(name, pa.float64(), nullable=False) for name in ("x0", "y0", "x1", "y1")),
        pa.field("embedding", _EMBEDDING, nullable=False),  # CLIP image embedding of the crop
    ]
)

STORED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # reference/<scene>/<concept>/<file> or composite/<key>
        pa.field("image_index", pa.int32(), nullable=False),  # always 0
        pa.field("kind", pa.string(), nullable=False),  # "reference" or "composite"
        pa.field("sha256", pa.string(), nullable=False),  # of the image file's bytes
        pa.field("width", pa.int32()),  # of the decoded image; null when it did not decode
        pa.field("height", pa.int32()),
        pa.field("image_embedding", _EMBEDDING),  # CLIP embedding of the whole image
        # composites only: one per concept (composition order), a null item when undetected
        pa.field("regions", pa.list_(REGION_TYPE)),
        pa.field("caption_embedding", _EMBEDDING),  # composites only
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class ReferenceItem:
    """One reference image of a concept."""

    key: str
    data: bytes
    image_index: int = 0


@dataclass(frozen=True)
class CompositeItem:
    """One composite: its PNG, its concepts' phrases (composition order) and its caption."""

    key: str
    png: bytes
    phrases: tuple[str, ...]
    caption: str
    image_index: int = 0


def decode(data: bytes) -> tuple[Image.Image | None, str | None]:
    """The RGB image the detector sees (`prepare_image` with the detector's bounds), or (None, reason)."""
    from pipelines.images import prepare_image

    prepared = prepare_image(data, max_side=DECODE_MAX_SIDE, max_pixels=DECODE_MAX_SIDE**2)
    return prepared.image, prepared.error


def crop_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The pixels of `box` (x0, y0, x1, y1 in pixels): the smallest whole-pixel box holding it, ``(floor(x0),
    floor(y0), ceil(x1), ceil(y1))``, clipped to the image (at least one pixel)."""
    x0, y0, x1, y1 = box
    left, top = min(max(math.floor(x0), 0), image.width - 1), min(max(math.floor(y0), 0), image.height - 1)
    right, bottom = (
        min(max(math.ceil(x1), left + 1), image.width),
        min(max(math.ceil(y1), top + 1), image.height),
    )
    return image.crop((left, top, right, bottom))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CompositingWorker:
    """Loads the detector and CLIP once; embeds each reference image and finds and embeds each composite's
    concepts (a chunk worker for `benchmark.chunks.map_stored`; one pass over both kinds of items, so a Ray actor
    loads its models once)."""

    def __init__(
        self,
        detector: DetectorSettings,
        clip_model: str,
        clip_pretrained: str | None,
        device: str | None = None,
    ) -> None:
        from benchmark.metrics.clip_embedding import CLIPEmbedder

        self.detector = ObjectDetector(detector, device=device)
        self.embedder = CLIPEmbedder(clip_model, clip_pretrained, device=device)

    def __call__(self, items: Sequence[ReferenceItem | CompositeItem]) -> list[dict[str, Any]]:
        return [self.score(item) if isinstance(item, CompositeItem) else self.embed(item) for item in items]

    def embed(self, item: ReferenceItem) -> dict[str, Any]:
        """The row of one reference image (`STORED_SCHEMA`, kind ``reference``)."""
        row = {
            "key": item.key,
            "image_index": item.image_index,
            "kind": "reference",
            "sha256": _sha256(item.data),
        }
        row |= {"regions": None, "caption_embedding": None}
        image, error = decode(item.data)
        if image is None:
            undecodable = {"width": None, "height": None, "image_embedding": None}
            return row | undecodable | {"status": "failed", "error": f"undecodable image: {error}"}
        embedding = self.embedder.embed_images([image])[0].tolist()
        return row | {"width": image.width, "height": image.height, "image_embedding": embedding} | _OK

    def score(self, item: CompositeItem) -> dict[str, Any]:
        """The row of one composite (`STORED_SCHEMA`, kind ``composite``). Every distinct phrase is one query of
        one detector pass; each concept takes the highest-scoring kept box labelled with its phrase (none:
        undetected)."""
        row = {
            "key": item.key,
            "image_index": item.image_index,
            "kind": "composite",
            "sha256": _sha256(item.png),
        }
        image, error = decode(item.png)
        if image is None:
            empty = dict.fromkeys(("width", "height", "regions", "image_embedding", "caption_embedding"))
            return row | empty | {"status": "failed", "error": f"undecodable image: {error}"}
        labels = tuple(dict.fromkeys(item.phrases))
        detected = self.detector.detect(DetectItem(item.key, item.image_index, item.png, labels))
        best: dict[str, dict[str, Any]] = {}
        for detection in detected["detections"]:  # highest score first
            best.setdefault(detection["label"], detection)
        regions = []
        for phrase in item.phrases:
            if (detection := best.get(phrase)) is None:
                regions.append(None)
                continue
            embedding = self.embedder.embed_images([crop_box(image, detection["box"])])[0]
            box = dict(zip(("x0", "y0", "x1", "y1"), detection["box"], strict=True))
            regions.append(
                {"label": phrase, "score": detection["score"], **box, "embedding": embedding.tolist()}
            )
        return (
            row
            | _OK
            | {
                "width": image.width,
                "height": image.height,
                "regions": regions,
                "image_embedding": self.embedder.embed_images([image])[0].tolist(),
                "caption_embedding": self.embedder.embed_texts([item.caption])[0].tolist(),
            }
        )


_OK = {"status": "ok", "error": None}
