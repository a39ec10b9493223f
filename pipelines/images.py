"""CPU image normalisation: untrusted bytes -> a bounded RGB image, or an error that says why not.

`prepare_image` never raises. It checks the pixel count from the header before decoding (decompression bombs),
applies the EXIF orientation, flattens transparency onto white, converts CMYK, 16-bit and float images to 8-bit
RGB, keeps the first frame of animations, and shrinks the image (never enlarges it) so that its longest side and
its pixel count are bounded: the number of vision tokens a VLM spends on it is bounded too.

`prepare_batch` applies it to a Ray Data / pyarrow batch and re-encodes the result as JPEG, which keeps the
object store small (a 896x896 JPEG is ~150 kB, the same pixels as an array 2.4 MB).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "BOMB_PIXELS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "PreparedImage",
    "bounded_size",
    "encode_jpeg",
    "image_size",
    "prepare_batch",
    "prepare_image",
]

MAX_SIDE = 1024
# 448*448*4 = 1024 * 28*28: at most 1024 merged vision tokens for Qwen2-VL / Qwen2.5-VL (14 px patches, 2x2 merge).
MAX_PIXELS = 448 * 448 * 4
# Pillow's own default `Image.MAX_IMAGE_PIXELS` (a 250 MB RGB image).
BOMB_PIXELS = 89_478_485

_WHITE = (255, 255, 255)
# EXIF orientations that transpose the image (width and height swap).
_QUARTER_TURNS = {5, 6, 7, 8}


@dataclass
class PreparedImage:
    """The outcome of `prepare_image`.

    `image` is an RGB image within the size bounds, or None when `error` says why the input is unusable.
    `width`/`height` are the original size (before resizing, in display orientation after EXIF rotation);
    None when the header could not be read. `unchanged` is true when `image` equals the decoded input exactly
    (an RGB JPEG, upright, within the bounds), so the input bytes can stand for it without re-encoding.
    """

    image: Image.Image | None
    width: int | None
    height: int | None
    error: str | None = None
    unchanged: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def bounded_size(
    width: int, height: int, max_side: int = MAX_SIDE, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """The largest size with the same aspect ratio within both bounds, never larger than the input."""
    scale = min(1.0, max_side / max(width, height), math.sqrt(max_pixels / (width * height)))
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _flatten_alpha(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grayscale are scaled from the 16-bit range; float images are min-max stretched."""
    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    else:
        scaled = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L").convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        return _flatten_alpha(im) if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten_alpha(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _high_depth_to_rgb(im)
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, ...


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    if isinstance(exc, OSError) and "truncated" in message.lower():
        return f"truncated image: {message}"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _open(data: bytes, bomb_pixels: int) -> tuple[Image.Image | None, str | None]:
    """Open (header only) and check the pixel count against `bomb_pixels` before anything is decoded."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            # Pillow warns above its global cap; this function applies its own cap below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:256].lstrip().lower()
        kind = " (looks like HTML/XML text)" if head.startswith((b"<", b"<!doctype")) else ""
        return None, f"cannot identify image file{kind}"
    except Image.DecompressionBombError as exc:
        return None, f"decompression bomb: {exc}"
    except Exception as exc:  # any decoder failure is a reason, not a crash
        return None, _describe(exc)
    width, height = im.size
    if width <= 0 or height <= 0:
        return None, f"invalid image size {width}x{height}"
    if width * height > bomb_pixels:
        return None, f"decompression bomb: {width}x{height} exceeds {bomb_pixels} pixels"
    return im, None


def image_size(data: bytes) -> tuple[int, int] | None:
    """The display size (after EXIF rotation) read from the header only.

    None when the header is unreadable, or the size is beyond twice Pillow's `Image.MAX_IMAGE_PIXELS`.

    Only EXIF that precedes the pixel data is consulted (JPEG, WebP, TIFF): the header is never decoded past.
    """
    im, _ = _open(data, bomb_pixels=2**62)
    if im is None:
        return None
    width, height = im.size
    exif = Image.Exif()
    try:
        exif.load(im.info.get("exif") or b"")
    except Exception:  # unreadable EXIF means no rotation
        return width, height
    return (height, width) if exif.get(ExifTags.Base.Orientation) in _QUARTER_TURNS else (width, height)


def prepare_image(
    data: bytes,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    bomb_pixels: int = BOMB_PIXELS,
) -> PreparedImage:
    """Decode `data` into an RGB image with longest side <= `max_side` and at most `max_pixels` pixels.

    Never raises: an unusable input gives ``PreparedImage(image=None, error=reason)``.
    """
    im, error = _open(data, bomb_pixels)
    if im is None:
        return PreparedImage(None, None, None, error)
    stored_w, stored_h = im.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if im.format == "JPEG":
                # Let libjpeg decode at a reduced DCT scale; the result stays >= the target size.
                im.draft("RGB", bounded_size(stored_w, stored_h, max_side, max_pixels))
            im.seek(0)  # first frame of an animation
            im.load()
            orientation = im.getexif().get(ExifTags.Base.Orientation)
            quarter_turn = orientation in _QUARTER_TURNS
            unchanged = im.format == "JPEG" and im.mode == "RGB" and orientation in (None, 1)
            im = ImageOps.exif_transpose(im)
            width, height = (stored_h, stored_w) if quarter_turn else (stored_w, stored_h)
            rgb = _to_rgb(im)
            target = bounded_size(width, height, max_side, max_pixels)
            unchanged = unchanged and rgb.size == target == (stored_w, stored_h)
            if rgb.size != target:
                rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    except Exception as exc:  # any decoder failure is a reason, not a crash
        return PreparedImage(None, stored_w, stored_h, _describe(exc))
    return PreparedImage(rgb, width, height, unchanged=unchanged)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def prepare_batch(
    batch: pa.Table,
    *,
    column: str = "image_bytes",
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    bomb_pixels: int = BOMB_PIXELS,
    quality: int = 95,
) -> pa.Table:
    """`prepare_image` over a pyarrow batch (``map_batches(..., batch_format="pyarrow")``).

    Adds ``prepared_image`` (JPEG bytes of the bounded RGB image, null on failure; the input bytes themselves
    when the image needed no change) and ``image_error`` (null on success). `width`/`height` become the size of
    the decoded image (null where it does not decode), whatever the metadata said. A null input cell (a
    metadata-only row) gives ``image_error = "no image bytes"``.
    """
    prepared: list[bytes | None] = []
    errors: list[str | None] = []
    sizes: list[tuple[int | None, int | None]] = []
    for data in batch.column(column).to_pylist():
        if data is None:
            prepared.append(None)
            errors.append("no image bytes")
            sizes.append((None, None))
            continue
        result = prepare_image(data, max_side, max_pixels, bomb_pixels)
        if result.image is None:
            prepared.append(None)
        else:
            prepared.append(data if result.unchanged else encode_jpeg(result.image, quality))
        errors.append(result.error)
        sizes.append((result.width, result.height))
    for index, name in enumerate(("width", "height")):
        decoded = pa.array([size[index] for size in sizes], pa.int32())
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, decoded)
        else:
            batch = batch.append_column(name, decoded)
    batch = batch.append_column("prepared_image", pa.array(prepared, pa.binary()))
    return batch.append_column("image_error", pa.array(errors, pa.string()))
