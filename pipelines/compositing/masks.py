"""The mask step of compositing: a foreground mask of each concept image, checked, and the concept cut out.

Gen4Gen segments each concept image with DIS (a class-agnostic background-removal model) before pasting the
object into its box. Here the segmenter is CLIPSeg (``CIDAS/clipseg-rd64-refined`` by default, or any
checkpoint or local directory of transformers' `CLIPSegForImageSegmentation`): a native transformers model,
prompted with the concept's name, so it segments *the named concept* rather than whatever is salient.

Mask
    A boolean ``H x W`` array at the concept image's own size (``mask[y, x]``, row 0 at the top, as
    ``np.asarray(image)``), True on the concept. CLIPSeg's processor stretches the image to a square (352 px
    for the hub's checkpoints) and the model returns one logit per pixel of that square; the logits go through
    a sigmoid, the probabilities are resized to ``(H, W)`` (bilinear, ``align_corners=False``, which undoes
    the stretch) and a pixel is foreground when its probability is strictly greater than
    `MaskSettings.threshold`.
    Thresholding after the resize, on probabilities, gives a smooth boundary at the image's resolution.
    Every image is one forward pass (batch of one), so a mask does not depend on the images sent with it.

Checks (`mask_problem`: None when the mask is usable, else a reason)
    The *fraction* of a mask is its number of foreground pixels over its number of pixels.
    - *empty mask*: the fraction is below ``min_fraction`` (or no pixel at all is foreground): the concept
      was not found, or is too small to paste;
    - *whole frame*: the fraction is above ``max_fraction``: the model found no boundary between the concept
      and the background, and pasting the "cut-out" would paste the background with it.
    A fraction equal to a bound is usable.

Cut-out (`cutout`)
    The concept as an RGBA image cropped to the mask's bounding box (the smallest pixel rectangle holding
    every foreground pixel): RGB from the image, alpha 255 on the mask and 0 off it.

Reasons start with their category followed by a colon, as `pipelines.answers.failure_reason` expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pydantic
from PIL import Image
from pydantic import ConfigDict, Field

__all__ = ["DEFAULT_SEGMENTER", "ConceptSegmenter", "MaskSettings", "cutout", "mask_problem"]

DEFAULT_SEGMENTER = "CIDAS/clipseg-rd64-refined"
_DTYPES = ("float32", "float16", "bfloat16")


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class MaskSettings:
    """What determines the masks and their checks, besides the images and phrases (see the module); also the
    compositing job's ``--masks.*`` flags."""

    model: str = Field(DEFAULT_SEGMENTER, pattern=r"\S", description="CLIPSeg checkpoint: hub id or local directory")
    threshold: float = Field(0.5, gt=0, lt=1, description="a pixel is foreground when sigmoid(logit) > threshold")
    min_fraction: float = Field(0.01, ge=0, lt=1, description="a mask covering less of the image is 'empty'")
    max_fraction: float = Field(
        0.95, gt=0, le=1, description="a mask covering more is 'whole frame' (no object boundary found)"
    )
    dtype: Literal[_DTYPES] = Field("float32", description="the segmenter's weight dtype")  # type: ignore[valid-type]

    def __post_init__(self) -> None:
        if not self.min_fraction < self.max_fraction:
            raise ValueError(f"max_fraction must be above min_fraction ({self.min_fraction!r}), got {self.max_fraction!r}")


class ConceptSegmenter:
    """Loads CLIPSeg once and segments concept images by the concept's name."""

    def __init__(self, settings: MaskSettings, device: str | None = None) -> None:
        import torch
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = CLIPSegProcessor.from_pretrained(settings.model)
        self.model = CLIPSegForImageSegmentation.from_pretrained(
            settings.model, dtype=getattr(torch, settings.dtype)
        )
        self.model.to(self.device).eval()

    def masks(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> list[np.ndarray]:
        """One boolean H x W mask per image, at the image's own size: CLIPSeg's logits for the phrase,
        sigmoid, resized (bilinear, on probabilities) to the image size, then > threshold."""
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrases")
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise ValueError(f"a phrase must be a non-empty string, got {phrase!r:.40}")
        return [self._mask(image, phrase) for image, phrase in zip(images, phrases, strict=True)]

    def _mask(self, image: Image.Image, phrase: str) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = self.processor(
                text=[phrase], images=[image.convert("RGB")], truncation=True, return_tensors="pt"
            )
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            logits = self.model(**inputs.to(self.device)).logits.float()
            if logits.ndim == 2:  # some transformers versions squeeze a batch of one to (h, w)
                logits = logits[None]
            probabilities = torch.nn.functional.interpolate(
                torch.sigmoid(logits)[None],
                size=(image.height, image.width),
                mode="bilinear",
                align_corners=False,
            )
            return (probabilities[0, 0] > self.settings.threshold).cpu().numpy()


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2 or mask.size == 0:
        raise ValueError(
            f"a mask must be a non-empty 2-D boolean array, got {mask.dtype} of shape {mask.shape}"
        )
    return mask


def mask_problem(mask: np.ndarray, settings: MaskSettings) -> str | None:
    """None when usable, else a reason starting with its category and a colon: "empty mask: ..." (fraction
    below min_fraction, including all-False) or "whole frame: ..." (above max_fraction); the message gives the
    fraction."""
    mask = _check_mask(mask)
    foreground = int(np.count_nonzero(mask))
    fraction = foreground / mask.size
    if foreground == 0 or fraction < settings.min_fraction:
        return (
            f"empty mask: {foreground} of {mask.size} pixels are foreground (fraction {fraction:.4g}),"
            f" below min_fraction {settings.min_fraction:g}"
        )
    if fraction > settings.max_fraction:
        return (
            f"whole frame: {foreground} of {mask.size} pixels are foreground (fraction {fraction:.4g}),"
            f" above max_fraction {settings.max_fraction:g}"
        )
    return None


def cutout(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The masked concept as an RGBA image cropped to the mask's bounding box (alpha 255 inside the mask, 0
    outside). ValueError on an empty mask or a mask whose shape is not the image's (H, W)."""
    mask = _check_mask(mask)
    if mask.shape != (image.height, image.width):
        raise ValueError(
            f"the mask's shape {mask.shape} is not the image's (H, W) = {(image.height, image.width)}"
        )
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask: no foreground pixel to cut out")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    rgb = np.asarray(image.convert("RGB"))[y0:y1, x0:x1]
    alpha = np.where(mask[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]))
