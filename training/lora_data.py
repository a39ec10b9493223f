"""The data of `training.lora`: exported rows -> (image, caption) batches with SPRIGHT's caption recipe.

- **Rows**: any export `training.rows.find_splits` reads (only the train split is used). A row trains when it
  has an image (bytes or path) and a non-empty `caption`; no scene graph is needed, and a failed annotation
  only means there is no spatial caption. Rows whose image does not decode are skipped and counted
  (`rebatch`).
- **Caption** (`training.spatial_captions`): per epoch, `plan_captions` over the train split's keys gives the
  cut for which the share ``--spatial-probability`` (SPRIGHT: half) of the rows with a spatial caption train on it,
  exact to one row; rows without one (a null, empty or missing `spatial_caption`) train on their original caption
  and are counted (`CaptionPlan.fallback`).
  Every worker computes the plan itself from the ``key`` and ``spatial_caption`` columns, so it does not
  depend on the sharding or the data order.
- **Flip** (``--flip swap``): `sample_caption` decides the mirror (`is_flipped`: seed, epoch, key) and the
  caption together, and the caption of a mirrored image has left and right swapped (`swap_left_right`): never
  a mirrored image with an unmirrored caption (SPRIGHT's bug).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from training.bad_rows import Decoded
from training.image_transforms import ImageConfig, load_image, transform_image
from training.rows import _error, _key_of
from training.spatial_captions import (
    CaptionPlan,
    has_spatial_caption,
    plan_captions,
    sample_caption,
    uses_spatial,
)

__all__ = [
    "SPATIAL_COLUMN",
    "CaptionBatch",
    "CaptionCollator",
    "CaptionPlanner",
    "CaptionSample",
    "caption_row_problem",
]

SPATIAL_COLUMN = "spatial_caption"
CaptionSource = Literal["spatial", "original", "fallback"]


def caption_row_problem(row: Mapping[str, object]) -> str | None:
    """Why a row cannot train a caption LoRA (judged without decoding the image); None when it may."""
    image = row.get("image") or {}
    if not isinstance(image, Mapping) or not (image.get("bytes") or image.get("path")):
        return "no image (bytes and path are both empty)"
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        return "no caption"
    return None


@dataclass(frozen=True)
class CaptionSample:
    """One decoded row: pixels in [-1, 1], SDXL's time ids, the caption it trains with and where that came
    from."""

    key: str
    pixels: torch.Tensor
    time_ids: list[float]
    caption: str
    source: CaptionSource
    flipped: bool


@dataclass
class CaptionBatch:
    """Samples stacked for a training step."""

    keys: list[str]
    pixel_values: torch.Tensor  # (B, 3, R, R)
    time_ids: torch.Tensor  # (B, 6)
    captions: list[str]
    sources: list[CaptionSource]
    flipped: list[bool]

    @property
    def size(self) -> int:
        return len(self.keys)


class CaptionPlanner:
    """The caption plan of each epoch over the train split's keys (read once; plans cached by epoch)."""

    def __init__(self, files: Sequence[str | Path], seed: int, share: float = 0.5):
        import pyarrow.parquet as pq

        self.seed, self.share = seed, share
        self.keys: list[str] = []
        self.has_spatial: list[bool] = []
        for f in files:
            names = pq.read_schema(f).names
            table = pq.read_table(f, columns=[c for c in ("key", SPATIAL_COLUMN) if c in names])
            self.keys += [str(k) for k in table["key"].to_pylist()]
            spatial = (
                table[SPATIAL_COLUMN].to_pylist() if SPATIAL_COLUMN in names else [None] * table.num_rows
            )
            self.has_spatial += [has_spatial_caption(s) for s in spatial]
        self._plans: dict[int, CaptionPlan] = {}

    def plan(self, epoch: int) -> CaptionPlan:
        if epoch not in self._plans:
            self._plans[epoch] = plan_captions(self.keys, self.seed, epoch, self.has_spatial, self.share)
        return self._plans[epoch]


class CaptionCollator:
    """Raw rows -> `CaptionBatch` for one epoch (`cut` from that epoch's `CaptionPlan`). Thread-safe: `decode`
    runs in Ray Data's prefetch threads; tokenizing happens in the training step."""

    def __init__(self, config: ImageConfig, epoch: int, cut: int):
        self.config = config
        self.epoch = epoch
        self.cut = cut

    def _source(self, key: str, spatial: object) -> CaptionSource:
        if not has_spatial_caption(spatial):
            return "fallback"
        return "spatial" if uses_spatial(self.config.seed, self.epoch, key, self.cut) else "original"

    def decode(self, rows: Sequence[Mapping[str, object]]) -> Decoded:
        """Decode, resize, crop and maybe mirror every usable row, with its caption (`sample_caption`)."""
        out = Decoded(rows=len(rows))
        for index, row in enumerate(rows):
            key = _key_of(row)
            if problem := caption_row_problem(row):
                out.skip(index, key, problem)
                continue
            spatial = row.get(SPATIAL_COLUMN)
            flipped, caption = sample_caption(
                key, str(row["caption"]), spatial if isinstance(spatial, str) else None,
                seed=self.config.seed, epoch=self.epoch, cut=self.cut, flip=self.config.flip,
            )  # fmt: skip
            try:
                pixels, ids = transform_image(load_image(row["image"]), self.config, flipped)
            except (
                Exception
            ) as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
                out.skip(index, key, f"undecodable image ({_error(exc)})")
                continue
            out.keep(index, CaptionSample(key, pixels, ids, caption, self._source(key, spatial), flipped))
        return out

    def assemble(self, samples: Sequence[CaptionSample]) -> CaptionBatch:
        return CaptionBatch(
            keys=[s.key for s in samples],
            pixel_values=torch.stack([s.pixels for s in samples]),
            time_ids=torch.tensor([s.time_ids for s in samples]),
            captions=[s.caption for s in samples],
            sources=[s.source for s in samples],
            flipped=[s.flipped for s in samples],
        )
