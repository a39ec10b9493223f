"""The detection step of the spatial track: find the prompt's two objects in every generated image with an
open-vocabulary detector (OWLv2 by default), and turn the boxes into the items `benchmark.metrics.visor.visor`
scores.

What is queried. Each image is asked for its prompt's class names (``subject`` and ``object``), each written
into `DetectorSettings.query_template`, by default ``"a photo of a {}"``, the text VISOR's notebook
(``text2image_realtime_evaluate.ipynb``, github.com/microsoft/VISOR) gives OWL-ViT. Every box the model
predicts takes the query it scores highest on (transformers' post-processing); its label is that query's class
name, exactly as the prompt spells it (what `visor` compares).

Threshold. A box is kept when its score is strictly greater than `DetectorSettings.threshold`, 0.1 by default:
VISOR keeps OWL-ViT boxes with ``score > 0.1`` (its notebook, and its released results are named
``..._owlvit_0.1.json``); SPRIGHT reports VISOR's metric on OWL-ViT detections. VISOR used
``google/owlvit-base-patch32``; the default here is OWLv2 (``google/owlv2-base-patch16-ensemble``), so scores
are comparable in kind but not equal to VISOR's: `DetectorSettings.model` selects either family. Stored
detections are already thresholded.

Coordinates. A box is ``[x0, y0, x1, y1]`` in pixels of the decoded image (its display orientation, after EXIF
rotation; x grows rightward, y grows downward, ``(0, 0)`` the top-left corner), the convention `visor` expects.
OWLv2's processor pads an image at the bottom or right to a square before resizing it, so the model's
normalised boxes are fractions of the *longer* side; transformers' OWLv2 post-processing scales them by
``max(height, width)`` of the size it is given, which is right for that padding (OWL-ViT's processor stretches
instead, and its post-processing scales x by the width, y by the height; both are given the decoded size).
Corners are then clipped to the image, and a box with no area inside the image (one lying in the padding) is
dropped: what remains is a box of the image.

Decoding. Images go through `pipelines.images.prepare_image` (header check against decompression bombs, EXIF
orientation, RGB conversion) with bounds large enough (`DECODE_MAX_SIDE`) that generated images are never shrunk
before the processor resizes them to the model's input; the boxes are scaled to the decoded size in any case, so
a shrunk image would still get coordinates of the decoded one. An image that does not decode is never shown to
the model: it is stored with status ``failed``, no detections and the error ``"undecodable image: <reason>"``,
and `visor_items` gives it no detections, so it counts in every VISOR denominator as an image where nothing was
found (as the judge counts failed images as 0).

Storage. Detections are Parquet chunks (`DETECTIONS_SCHEMA`) under an out dir, one row per image (``key`` is
the prompt id, ``image_index`` the image's index), written and resumed as `benchmark.judge` does; each image is
one forward pass (batch of one), so results do not depend on chunking or on the number of actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmark.chunks import map_stored, read_stored
from benchmark.spatial.prompts import SpatialPrompt

__all__ = [
    "DECODE_MAX_SIDE",
    "DETECTIONS_SCHEMA",
    "DETECTION_TYPE",
    "DetectItem",
    "DetectorSettings",
    "ObjectDetector",
    "detect_images",
    "detect_items",
    "detections_from_outputs",
    "read_detections",
    "visor_items",
]

# prepare_image's bounds for detection: only absurd inputs are shrunk (the processor resizes to its own input)
DECODE_MAX_SIDE = 4096

DETECTION_TYPE = pa.struct(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("box", pa.list_(pa.float64(), 4), nullable=False),  # x0, y0, x1, y1 in pixels, y downward
    ]
)

DETECTIONS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("width", pa.int32()),  # of the decoded image; null when it did not decode
        pa.field("height", pa.int32()),
        pa.field("detections", pa.list_(DETECTION_TYPE)),  # null when the image failed
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class DetectorSettings:
    """Everything that determines the detections besides the images (the module docstring has the sources)."""

    model: str = "google/owlv2-base-patch16-ensemble"  # hub id or local directory
    threshold: float = 0.1  # keep boxes with score > threshold (VISOR: OWL-ViT, score > 0.1)
    query_template: str = "a photo of a {}"  # VISOR's query text for a class name
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class DetectItem:
    """One generated image and the class names to look for in it."""

    key: str
    image_index: int
    png: bytes
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError(f"{self.key}:{self.image_index}: no labels to detect")


def detections_from_outputs(
    processor: Any, outputs: Any, labels: Sequence[str], width: int, height: int, threshold: float
) -> list[dict[str, Any]]:
    """The detections of one image (model `outputs` of a batch of one, queries in `labels` order): boxes with
    score > `threshold`, in pixels of the `width` x `height` image (the processor's post-processing), clipped
    to the image, those without area inside it dropped; highest score first (ties in the model's order)."""
    # post-process in float32: half-precision boxes scaled to ~1000 px would be off by up to a pixel
    outputs = type(outputs)(logits=outputs.logits.float(), pred_boxes=outputs.pred_boxes.float())
    [result] = processor.post_process_grounded_object_detection(
        outputs, threshold=threshold, target_sizes=[(height, width)]
    )
    detections = []
    scores, indices, boxes = (result[name].tolist() for name in ("scores", "labels", "boxes"))
    for score, index, (x0, y0, x1, y1) in zip(scores, indices, boxes, strict=True):
        x0, x1 = (min(max(x, 0.0), float(width)) for x in (x0, x1))  # max(NaN, 0.0) is NaN: dropped below
        y0, y1 = (min(max(y, 0.0), float(height)) for y in (y0, y1))
        if x1 > x0 and y1 > y0:  # false for a box outside the image
            detections.append({"label": labels[index], "score": score, "box": [x0, y0, x1, y1]})
    return sorted(detections, key=lambda d: -d["score"])


class ObjectDetector:
    """Loads the detector once and finds each item's labels in its image (a chunk worker for `map_chunks`)."""

    def __init__(self, settings: DetectorSettings, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        remote = settings.trust_remote_code
        self.processor = AutoProcessor.from_pretrained(settings.model, trust_remote_code=remote)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
            settings.model, dtype=getattr(torch, settings.dtype), trust_remote_code=remote
        )
        self.model.to(self.device).eval()

    def __call__(self, items: Sequence[DetectItem]) -> list[dict[str, Any]]:
        return [self.detect(item) for item in items]

    def detect(self, item: DetectItem) -> dict[str, Any]:
        """The row of one image (`DETECTIONS_SCHEMA`)."""
        import torch

        from pipelines.images import prepare_image

        prepared = prepare_image(item.png, max_side=DECODE_MAX_SIDE, max_pixels=DECODE_MAX_SIDE**2)
        row = {"key": item.key, "image_index": item.image_index, "width": None, "height": None}
        if prepared.image is None:  # never ask the detector about an image it cannot see
            error = f"undecodable image: {prepared.error or 'no image'}"
            return row | {"detections": None, "status": "failed", "error": error}
        queries = [self.settings.query_template.format(label) for label in item.labels]
        with torch.inference_mode():
            inputs = self.processor(text=[queries], images=[prepared.image], return_tensors="pt")
            outputs = self.model(**inputs.to(self.device, dtype=self.model.dtype))
        detections = detections_from_outputs(
            self.processor, outputs, item.labels, prepared.width, prepared.height, self.settings.threshold
        )
        size = {"width": prepared.width, "height": prepared.height}
        return row | size | {"detections": detections, "status": "ok", "error": None}


def read_detections(out_dir: str | Path) -> pa.Table:
    """Every stored detection row under `out_dir`, sorted by (key, image_index)."""
    return read_stored(out_dir, DETECTIONS_SCHEMA)


def detect_items(
    images: Iterable[pa.Table], prompts_by_id: Mapping[str, SpatialPrompt]
) -> Iterator[DetectItem]:
    """The items of generated images (tables of key = prompt id, image_index, png, e.g.
    `benchmark.generate.iter_images`): each looks for its prompt's subject and object. Lazy, one table at a time."""
    for table in images:
        for r in table.select(["key", "image_index", "png"]).to_pylist():
            prompt = prompts_by_id[r["key"]]
            yield DetectItem(r["key"], r["image_index"], r["png"], (prompt.subject, prompt.object))


def detect_images(
    items: Iterable[DetectItem],
    settings: DetectorSettings,
    out_dir: str | Path,
    *,
    num_actors: int = 0,
    chunk_size: int = 8,
    device: str | None = None,
) -> pa.Table:
    """Detect in every item's image not yet stored under `out_dir` (by key, image_index); return all rows.
    `num_actors=0` runs in this process, otherwise on Ray actors. `items` is consumed lazily."""
    return map_stored(
        ObjectDetector,
        {"settings": settings, "device": device},
        items,
        DETECTIONS_SCHEMA,
        out_dir,
        num_actors=num_actors,
        chunk_size=chunk_size,
    )


def visor_items(prompts_by_id: Mapping[str, SpatialPrompt], detections: pa.Table) -> list[dict[str, Any]]:
    """The items `benchmark.metrics.visor.visor` takes, one per detection row (``key`` is the prompt id): the
    prompt's subject, relation and object, the image_index, and the stored (thresholded) detections as
    ``(label, score, (x0, y0, x1, y1))``; a failed image has none."""
    items = []
    for row in detections.sort_by([("key", "ascending"), ("image_index", "ascending")]).to_pylist():
        prompt = prompts_by_id.get(row["key"])
        if prompt is None:
            raise ValueError(f"detections of {row['key']}:{row['image_index']} name no known prompt")
        items.append(
            {
                "prompt_id": row["key"],
                "image_index": row["image_index"],
                "subject": prompt.subject,
                "relation": prompt.relation,
                "object": prompt.object,
                "detections": [(d["label"], d["score"], tuple(d["box"])) for d in row["detections"] or []],
            }
        )
    return items
