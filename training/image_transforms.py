"""How an image becomes a training input: loaded, resized and cropped to a square, maybe mirrored.

- Crop: ``crop="center"`` (default) resizes the shorter side to the resolution and center-crops, as SDXL was
  trained; ``crop="none"`` squashes the whole image to a square, as LAION-SG trained at 512² "without crop" (the
  aspect ratio is lost, and SDXL's conditioning has no term for it). Either way the micro-conditioning is
  ``(original height, original width, crop top, crop left, target height, target width)`` (SDXL's `add_time_ids`),
  crop coordinates in the resized image.
- Flip: off by default. When on, an image is mirrored with probability 1/2, decided by a hash of
  (seed, epoch, row key), and the words "left" and "right" are swapped in every name, attribute and predicate of
  its graph, so that "cup left of plate" stays true. The cache is written without flips; training from a cache
  with flips on is refused (the mirrored latents and texts would have to be cached too).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ImageConfig", "is_flipped", "load_image", "transform_image"]


@dataclass(frozen=True)
class ImageConfig:
    """How images become training inputs (see the module docstring for the crop and flip decisions)."""

    resolution: int = 512
    crop: str = "center"  # "center" | "none"
    flip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop not in {"center", "none"}:
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE factor), got {self.resolution}")


def load_image(cell: Mapping[str, Any]):
    """The image of an `image` struct cell (bytes, else path) as an RGB PIL image, EXIF orientation applied."""
    from PIL import Image, ImageOps

    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def transform_image(image, config: ImageConfig, flip: bool) -> tuple[torch.Tensor, list[float]]:
    """Resize (+ center crop) to the square resolution, optionally mirror; pixels in [-1, 1] and SDXL's time ids."""
    from PIL import Image, ImageOps

    size = config.resolution
    width, height = image.size
    if config.crop == "center":
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        new_w = size
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        top = left = 0
    if flip:
        image = ImageOps.mirror(image)
        left = new_w - size - left
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return pixels, [float(height), float(width), float(top), float(left), float(size), float(size)]


def is_flipped(seed: int, epoch: int, key: str) -> bool:
    """The flip decision of one row in one epoch: independent of worker count, batch size and data order."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()
    return bool(digest[0] & 1)
