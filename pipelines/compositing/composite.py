"""The compositing and repainting steps: cutouts pasted into their boxes on a background, then the background and
the seams repainted with SDXL inpainting (Gen4Gen's ``s2_llm_guided_object_composition.py``). Here:

Placement (`fit_box`)
    A `Box` is on pixel edges with float coordinates (see `layout`); pasting needs whole pixels. Each coordinate is
    rounded **half up**, ``floor(v + 0.5)``, giving the box's *rounded extent* (widened to 1 pixel where it would
    be empty). The cutout is scaled by ``s = min(extent width / cutout width, extent height / cutout height)``,
    its aspect ratio kept and as large as fits, each side rounded half up and kept within ``[1, extent side]``,
    then centred: the offset is ``(extent side - side) // 2``, so an odd leftover pixel goes right or down.

Object mask (`paste_concepts`)
    The pixels where a pasted cutout (after resizing) has alpha >= 128, for any cutout: the concept pixels.

Repaint mask (`repaint_mask`)
    What the inpainting pipeline may change (255): everything but the *kept* pixels, the object mask eroded by
    ``seam`` pixels with a 3 x 3 square structuring element applied ``seam`` times (a pixel is kept when every
    pixel within Chebyshev distance ``seam`` is an object pixel). The image edge counts as object
    (``border_value=1``): only where a pasted edge meets the background is there a seam to blend, and an object
    touching the image edge keeps its pixels there.

Compose (`Compositor.compose`)
    composite -> inpaint everything outside the kept pixels with the prompt -> the kept pixels put back from the
    composite. Deterministic on CPU: the same inputs and seed give identical bytes (a ``torch.Generator("cpu")``
    seeded with ``seed`` draws all the noise; CUDA kernels may not be bit-reproducible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pydantic
from PIL import Image
from pydantic import ConfigDict, Field
from scipy.ndimage import binary_erosion

from pipelines.compositing.layout import Box

__all__ = ["Compositor", "CompositorSettings", "fit_box", "paste_concepts", "repaint_mask"]

ALPHA_THRESHOLD = 128  # alpha at or above it is an object pixel
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _round(value: float) -> int:
    """Round half up (``floor(v + 0.5)``), not Python's round-half-to-even."""
    return math.floor(value + 0.5)


def fit_box(size: tuple[int, int], box: Box) -> tuple[int, int, int, int]:
    """Where a cutout of ``size`` (w, h) goes in ``box``: ``(x, y, w, h)`` in whole pixels, scaled to fit inside the
    box's rounded extent with its aspect ratio kept (as large as fits), centred; at least 1 x 1 and never outside
    the rounded extent. Rounding: half up, for the box's coordinates and the scaled sides (module docstring)."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"cutout size must be at least 1 x 1, got {size!r}")
    x0, y0 = _round(box.x0), _round(box.y0)
    box_w, box_h = max(_round(box.x1) - x0, 1), max(_round(box.y1) - y0, 1)
    scale = min(box_w / width, box_h / height)
    w = min(max(_round(width * scale), 1), box_w)
    h = min(max(_round(height * scale), 1), box_h)
    return x0 + (box_w - w) // 2, y0 + (box_h - h) // 2, w, h


def paste_concepts(
    background: Image.Image, cutouts: Sequence[Image.Image], boxes: Sequence[Box]
) -> tuple[Image.Image, np.ndarray]:
    """The composite (RGB, ``background``'s size) with each RGBA cutout resized (LANCZOS) into `fit_box` of its box
    and alpha-composited in order (later ones on top), and the union object mask (bool H x W: alpha >= 128 of any
    pasted cutout). Boxes are in pixels of the background; a placement outside it raises ValueError."""
    if len(cutouts) != len(boxes):
        raise ValueError(f"{len(cutouts)} cutouts for {len(boxes)} boxes: need one box per cutout")
    canvas = background.convert("RGBA")
    mask = np.zeros((canvas.height, canvas.width), dtype=bool)
    for cutout, box in zip(cutouts, boxes, strict=True):
        x, y, w, h = fit_box(cutout.size, box)
        if x < 0 or y < 0 or x + w > canvas.width or y + h > canvas.height:
            raise ValueError(
                f"{box.concept!r} is placed at {(x, y, w, h)} (x, y, w, h), outside the "
                f"{canvas.width}x{canvas.height} background"
            )
        resized = cutout.convert("RGBA").resize((w, h), Image.Resampling.LANCZOS)
        canvas.alpha_composite(resized, dest=(x, y))
        mask[y : y + h, x : x + w] |= np.asarray(resized.getchannel("A")) >= ALPHA_THRESHOLD
    return canvas.convert("RGB"), mask


def _kept(object_mask: np.ndarray, seam: int) -> np.ndarray:
    """The object pixels at least ``seam`` px inside the objects' border (module docstring: *Repaint mask*)."""
    if isinstance(seam, bool) or not isinstance(seam, int) or seam < 0:
        raise ValueError(f"seam must be an integer >= 0, got {seam!r}")
    mask = np.asarray(object_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"object_mask must be 2-D (H x W), got shape {mask.shape}")
    if seam == 0:  # binary_erosion's iterations=0 would mean "until nothing changes"
        return mask.copy()
    return binary_erosion(mask, structure=np.ones((3, 3), dtype=bool), iterations=seam, border_value=1)


def repaint_mask(object_mask: np.ndarray, seam: int) -> Image.Image:
    """The inpainting mask ("L", 255 = repaint): everything except the objects eroded by ``seam`` pixels, i.e. the
    background plus a band ``seam`` px wide inside each object's border. ``seam=0`` repaints exactly the
    background. Structuring element: 3 x 3 square (module docstring)."""
    return Image.fromarray(np.where(_kept(object_mask, seam), 0, 255).astype(np.uint8))


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CompositorSettings:
    """The SDXL models and sampling settings of `Compositor` (also the compositing job's ``--compositor.*``
    flags). ``inpaint_model=None`` builds the inpainting pipeline from the base model's components (shared, not
    copied); ``dtype="auto"`` is bfloat16 on CUDA and float32 on CPU."""

    model: str = Field(
        "stabilityai/stable-diffusion-xl-base-1.0",
        pattern=r"\S",
        description="SDXL for the backgrounds (text-to-image): hub id or local directory",
    )
    inpaint_model: str | None = Field(
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        pattern=r"\S",
        description="SDXL inpainting model: hub id or local directory (None: the base model's components)",
    )
    size: int = Field(1024, ge=8, multiple_of=8, description="square output side in pixels (a multiple of 8)")
    steps: int = Field(30, ge=1, description="denoising steps of background generation and of inpainting")
    guidance_scale: float = Field(5.0, ge=0, allow_inf_nan=False, description="classifier-free guidance scale")
    strength: float = Field(
        0.99, gt=0, le=1, description="inpainting strength (how far the repainted region is re-noised)"
    )
    seam: int = Field(8, ge=0, description="pixels inside each pasted concept's border that are repainted too")
    dtype: Literal[DTYPES] = Field("auto", description="auto (bfloat16 on CUDA, float32 on CPU) or a torch dtype")  # type: ignore[valid-type]

    def __post_init__(self) -> None:
        if int(self.steps * self.strength) < 1:  # diffusers runs int(steps * strength) inpainting steps
            raise ValueError(f"strength: {self.steps} steps x strength {self.strength} leaves no inpainting step")


class Compositor:
    """Loads the SDXL text-to-image pipeline (backgrounds) and the SDXL inpainting pipeline once."""

    def __init__(self, settings: CompositorSettings, device: str | None = None) -> None:
        import torch
        from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if settings.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, settings.dtype)
        # No invisible watermark: SDXL adds one only when the optional package is installed; outputs must not vary.
        options = {"dtype": dtype, "use_safetensors": True, "add_watermarker": False}
        self.base = StableDiffusionXLPipeline.from_pretrained(settings.model, **options).to(self.device)
        if settings.inpaint_model is None:
            # from_pipe shares the modules and casts them to its dtype (float32 when not given).
            self.inpaint = StableDiffusionXLInpaintPipeline.from_pipe(
                self.base, dtype=dtype, add_watermarker=False
            )
        else:
            self.inpaint = StableDiffusionXLInpaintPipeline.from_pretrained(settings.inpaint_model, **options)
            self.inpaint.to(self.device)
        for pipe in (self.base, self.inpaint):
            pipe.set_progress_bar_config(disable=True)

    def _generator(self, seed: int) -> Any:
        import torch

        return torch.Generator("cpu").manual_seed(seed)

    def background(self, prompt: str, seed: int) -> Image.Image:
        """A ``size x size`` background generated from ``prompt`` with noise seeded by ``seed``."""
        s = self.settings
        return self.base(
            prompt=prompt,
            height=s.size,
            width=s.size,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            generator=self._generator(seed),
        ).images[0]

    def compose(
        self,
        background: Image.Image,
        cutouts: Sequence[Image.Image],
        boxes: Sequence[Box],
        prompt: str,
        seed: int,
    ) -> Image.Image:
        """``background`` resized (LANCZOS) to ``size x size`` if it is not already -> `paste_concepts` (boxes in
        pixels of the output) -> inpaint `repaint_mask` (``seam``) with ``prompt`` -> the kept object pixels (the
        object mask eroded by ``seam``) put back from the composite. Put back because the inpainting pipeline
        returns the whole image through the VAE (and a 4-channel UNet only blends latents), which changes every
        pixel slightly; the concepts must keep the reference images' exact pixels, which is what CP-CLIP compares
        them against."""
        size = self.settings.size
        background = background.convert("RGB")
        if background.size != (size, size):
            background = background.resize((size, size), Image.Resampling.LANCZOS)
        composite, objects = paste_concepts(background, cutouts, boxes)
        mask = repaint_mask(objects, self.settings.seam)
        repainted = self.inpaint(
            prompt=prompt,
            image=composite,
            mask_image=mask,
            height=size,
            width=size,
            strength=self.settings.strength,
            num_inference_steps=self.settings.steps,
            guidance_scale=self.settings.guidance_scale,
            generator=self._generator(seed),
        ).images[0]
        pixels = np.array(repainted.convert("RGB"))
        kept = np.asarray(mask) == 0
        pixels[kept] = np.asarray(composite)[kept]
        return Image.fromarray(pixels)
