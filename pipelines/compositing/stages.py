"""The model stages of the compositing job, each a Ray Data actor over rows of `STAGE_SCHEMA`: `Segment` (step 2,
each concept's reference image -> its masked cutout) and `Compose` (step 3, background, paste, inpaint -> the
composite). A row that fails keeps its ``stage`` and ``error``; later stages pass it through.

Reference and background images are read with `read_image` (`pipelines.images.prepare_image`: bounded, and a
corrupt file or a decompression bomb gives a reason instead of an exception).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.compositing.composite import Compositor, CompositorSettings
from pipelines.compositing.layout import Box
from pipelines.compositing.masks import ConceptSegmenter, MaskSettings, cutout, mask_problem
from pipelines.images import prepare_image

__all__ = [
    "BOX_TYPE",
    "DECODE_MAX_SIDE",
    "STAGE_SCHEMA",
    "Compose",
    "Segment",
    "arrow_table",
    "png",
    "read_image",
]

DECODE_MAX_SIDE = 2048  # reference and background images are decoded within this side (larger gains nothing)
BOX_TYPE = pa.struct(
    [
        ("concept", pa.string()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
    ]
)
STAGE_SCHEMA = pa.schema(  # the rows of the mask and composite stages
    [
        pa.field("key", pa.string()),
        pa.field("references", pa.list_(pa.string())),
        pa.field("phrases", pa.list_(pa.string())),
        pa.field("boxes", pa.list_(BOX_TYPE)),
        pa.field("caption", pa.string()),
        pa.field("background_prompt", pa.string()),
        pa.field("background_image", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("cutouts", pa.list_(pa.binary())),
        pa.field("png", pa.binary()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
    ]
)


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_image(path: str) -> tuple[Any, str | None]:
    """A reference or background image as bounded RGB (`pipelines.images.prepare_image`: corrupt files and
    decompression bombs give a reason, never an exception), or (None, why)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    prepared = prepare_image(data, max_side=DECODE_MAX_SIDE, max_pixels=DECODE_MAX_SIDE**2)
    return prepared.image, prepared.error


def arrow_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)


class Segment:
    """The mask stage (a Ray Data actor): each concept's reference image -> its masked cutout (RGBA PNG)."""

    def __init__(self, settings: MaskSettings, cpus: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.settings = settings
        self.segmenter = ConceptSegmenter(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            decoded = [(path, *read_image(path)) for path in row["references"]]
            if bad := next(((path, error) for path, image, error in decoded if image is None), None):
                row |= {"stage": "mask", "error": f"unreadable reference image {Path(bad[0]).name}: {bad[1]}"}
                continue
            images = [image for _, image, _ in decoded]
            cutouts = []
            for image, phrase, mask in zip(
                images, row["phrases"], self.segmenter.masks(images, row["phrases"]), strict=True
            ):
                if problem := mask_problem(mask, self.settings):
                    row |= {"stage": "mask", "error": f"{problem} ({phrase})"}
                    break
                cutouts.append(png(cutout(image, mask)))
            else:
                row["cutouts"] = cutouts
        return arrow_table(rows, STAGE_SCHEMA)


class Compose:
    """The composite stage (a Ray Data actor): background, paste, inpaint -> the composite (PNG)."""

    def __init__(self, settings: CompositorSettings, cpus: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.compositor = Compositor(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from PIL import Image

        rows = batch.to_pylist()
        for row in rows:
            if row["error"] is not None:
                continue
            if row["background_image"] is not None:
                background, error = read_image(row["background_image"])
                if background is None:
                    row |= {"stage": "composite", "error": f"unreadable background image: {error}"}
                    continue
            else:
                background = self.compositor.background(row["background_prompt"], row["seed"])
            cutouts = [Image.open(io.BytesIO(data)) for data in row["cutouts"]]  # our own PNGs
            try:  # a placement the paste refuses fails its row; a model error stops the job
                image = self.compositor.compose(
                    background, cutouts, [Box(**box) for box in row["boxes"]], row["caption"], row["seed"]
                )
            except ValueError as exc:
                row |= {"stage": "composite", "error": f"{type(exc).__name__}: {exc}"}
                continue
            row["png"] = png(image)
        return arrow_table(rows, STAGE_SCHEMA).drop_columns(["cutouts"])
