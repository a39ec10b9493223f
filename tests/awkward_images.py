"""A corpus of broken and awkward image files, generated in code (no binary blobs in the repo).

`write_awkward_images(directory)` writes every file and returns ``{file name: "ok" | "failed"}``: the outcome
`pipelines.images.prepare_image` must give. Shared by the image, ingest and annotate tests.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

__all__ = [
    "AWKWARD_IMAGES",
    "EXIF_ROTATED_STORED_SIZE",
    "PHOTOS",
    "skimage_photo_bytes",
    "write_awkward_images",
]

# Real photographs shipped inside scikit-image, as their original encoded files.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")
# The stored (pre-rotation) size of ``exif_rotated.jpg``; EXIF orientation 6 means it displays as 24x40.
EXIF_ROTATED_STORED_SIZE = (40, 24)


def skimage_photo_bytes(name: str) -> bytes:
    """The original file of one of `PHOTOS`."""
    return (Path(skimage.data.__file__).parent / name).read_bytes()


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    return np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming `width` x `height` (8-bit gray), with a tiny IDAT: nothing allocated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bmp_header_only(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming `width` x `height`, with no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _truncated_jpeg() -> bytes:
    data = skimage_photo_bytes("rocket.jpg")
    return data[: len(data) // 3]


def _truncated_png() -> bytes:
    data = _encode(Image.fromarray(_gradient(200, 120)), "PNG")
    return data[: len(data) // 2]


def _cmyk_jpeg() -> bytes:
    return _encode(Image.fromarray(_gradient(64, 48)).convert("CMYK"), "JPEG", quality=90)


def _gray16_png() -> bytes:
    ramp = np.linspace(0, 65535, 80 * 60).reshape(60, 80).astype(np.uint16)
    return _encode(Image.fromarray(ramp), "PNG")


def _float_tiff() -> bytes:
    return _encode(Image.fromarray(np.linspace(-1.0, 3.0, 50 * 40, dtype=np.float32).reshape(40, 50)), "TIFF")


def _palette_transparent_png() -> bytes:
    image = Image.new("P", (32, 32), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    image.paste(1, (8, 8, 24, 24))
    return _encode(image, "PNG", transparency=0)  # index 0 (black) is transparent -> white after compositing


def _rgba_png() -> bytes:
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    rgba[:, 20:, 3] = 255  # left half fully transparent
    return _encode(Image.fromarray(rgba), "PNG")


def _la_png() -> bytes:
    gray = np.full((20, 20), 100, dtype=np.uint8)
    alpha = np.full((20, 20), 128, dtype=np.uint8)
    return _encode(Image.fromarray(np.stack([gray, alpha], -1), mode="LA"), "PNG")


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 32), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    width, height = EXIF_ROTATED_STORED_SIZE
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste(
        (255, 0, 0), (0, 0, width // 2, height)
    )  # left half red in storage -> top half red when displayed
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def _gray_jpeg() -> bytes:
    return _encode(Image.fromarray(skimage.data.camera()), "JPEG", quality=90)


def _webp() -> bytes:
    return _encode(Image.fromarray(skimage.data.chelsea()), "WEBP", quality=80)


def _panorama_png() -> bytes:
    return _encode(Image.fromarray(_gradient(4000, 300)), "PNG")


def _one_pixel_png() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")


def _thin_line_png() -> bytes:
    return _encode(Image.new("L", (6000, 2), 200), "PNG")


def _random_bytes() -> bytes:
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()


# file name -> (writer, expected outcome of prepare_image)
AWKWARD_IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.jpg": (lambda: b"", "failed"),
    "truncated.jpg": (_truncated_jpeg, "failed"),
    "truncated.png": (_truncated_png, "failed"),
    "html_page.jpg": (lambda: b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n", "failed"),
    "random_bytes.png": (_random_bytes, "failed"),
    "bomb_50000x50000.png": (lambda: _png_header_only(50_000, 50_000), "failed"),
    "bomb_20000x5000.bmp": (lambda: _bmp_header_only(20_000, 5_000), "failed"),
    "cmyk.jpg": (_cmyk_jpeg, "ok"),
    "gray16.png": (_gray16_png, "ok"),
    "float32.tif": (_float_tiff, "ok"),
    "palette_transparent.png": (_palette_transparent_png, "ok"),
    "rgba_half_transparent.png": (_rgba_png, "ok"),
    "gray_alpha.png": (_la_png, "ok"),
    "one_pixel.png": (_one_pixel_png, "ok"),
    "thin_line_6000x2.png": (_thin_line_png, "ok"),
    "panorama_4000x300.png": (_panorama_png, "ok"),
    "animated.gif": (lambda: _animated("GIF"), "ok"),
    "animated.webp": (lambda: _animated("WEBP"), "ok"),
    "exif_rotated.jpg": (_exif_rotated_jpeg, "ok"),
    "grayscale.jpg": (_gray_jpeg, "ok"),
    "chelsea.webp": (_webp, "ok"),
    **{f"photo_{name}": (lambda name=name: skimage_photo_bytes(name), "ok") for name in PHOTOS},
}


def write_awkward_images(directory: str | Path) -> dict[str, str]:
    """Write the corpus into `directory` (created if needed); return ``{file name: "ok" | "failed"}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, (write, _) in AWKWARD_IMAGES.items():
        (directory / name).write_bytes(write())
    return {name: outcome for name, (_, outcome) in AWKWARD_IMAGES.items()}
