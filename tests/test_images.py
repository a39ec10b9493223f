"""Image normalisation on a corpus of broken and awkward files: a bounded RGB image or an error with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from awkward_images import EXIF_ROTATED_STORED_SIZE, write_awkward_images
from PIL import Image

from pipelines.images import MAX_PIXELS, bounded_size, encode_jpeg, image_size, prepare_batch, prepare_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("awkward")
    return directory, write_awkward_images(directory)


def test_corpus_covers_the_awkward_cases(corpus: tuple[Path, dict[str, str]]) -> None:
    _, expected = corpus
    assert len(expected) >= 12
    assert sum(outcome == "failed" for outcome in expected.values()) >= 6
    assert sum(name.startswith("photo_") for name in expected) >= 5


@pytest.mark.parametrize("max_side, max_pixels", [(1024, MAX_PIXELS), (256, 256 * 200)])
def test_every_file_gives_a_bounded_rgb_image_or_a_reason(
    corpus: tuple[Path, dict[str, str]], max_side: int, max_pixels: int
) -> None:
    directory, expected = corpus
    for name, outcome in expected.items():
        data = (directory / name).read_bytes()
        result = prepare_image(data, max_side=max_side, max_pixels=max_pixels)
        assert ("ok" if result.ok else "failed") == outcome, (name, result.error)
        if result.ok:
            assert result.image is not None and result.image.mode == "RGB", name
            width, height = result.image.size
            assert max(width, height) <= max_side and width * height <= max_pixels, name
            assert width <= result.width and height <= result.height, name  # never enlarged
        else:
            assert result.image is None and result.error, name


@pytest.mark.parametrize(
    "name, reason",
    [
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "truncated"),
        ("html_page.jpg", "cannot identify image file (looks like HTML"),
        ("random_bytes.png", "cannot identify image file"),
        ("bomb_50000x50000.png", "decompression bomb"),
        ("bomb_20000x5000.bmp", "decompression bomb: 20000x5000 exceeds 89478485 pixels"),
    ],
)
def test_failures_name_their_reason(corpus: tuple[Path, dict[str, str]], name: str, reason: str) -> None:
    directory, _ = corpus
    result = prepare_image((directory / name).read_bytes())
    assert result.error is not None and result.error.startswith(reason), result.error


def test_bomb_cap_is_checked_before_decoding(corpus: tuple[Path, dict[str, str]]) -> None:
    directory, _ = corpus
    photo = (directory / "photo_astronaut.png").read_bytes()
    assert prepare_image(photo, bomb_pixels=512 * 512).ok
    result = prepare_image(photo, bomb_pixels=512 * 511)
    assert result.error == "decompression bomb: 512x512 exceeds 261632 pixels"


def _pixel(image: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)[y, x]


def test_conversions_are_faithful(corpus: tuple[Path, dict[str, str]]) -> None:
    directory, _ = corpus

    def prepared(name: str) -> Image.Image:
        result = prepare_image((directory / name).read_bytes())
        assert result.image is not None, result.error
        return result.image

    rotated = prepared("exif_rotated.jpg")  # stored 40x24 with the left half red; orientation 6
    assert rotated.size == EXIF_ROTATED_STORED_SIZE[::-1]
    assert prepare_image((directory / "exif_rotated.jpg").read_bytes()).width == EXIF_ROTATED_STORED_SIZE[1]
    assert np.abs(_pixel(rotated, 12, 5) - (255, 0, 0)).max() < 40  # red on top after rotation
    assert np.abs(_pixel(rotated, 12, 35) - (255, 255, 255)).max() < 40

    palette = prepared("palette_transparent.png")  # transparent black around an opaque red square
    assert tuple(_pixel(palette, 1, 1)) == (255, 255, 255) and tuple(_pixel(palette, 16, 16)) == (255, 0, 0)
    rgba = prepared("rgba_half_transparent.png")
    assert tuple(_pixel(rgba, 5, 5)) == (255, 255, 255) and tuple(_pixel(rgba, 35, 5)) == (0, 0, 255)
    assert abs(int(_pixel(prepared("gray_alpha.png"), 3, 3)[0]) - (100 + 255) // 2) <= 1

    gray16 = np.asarray(prepared("gray16.png"))  # a 0..65535 ramp
    assert gray16[0, 0, 0] == 0 and gray16[-1, -1, 0] == 255 and 100 < gray16[30, 40, 0] < 160
    float_image = np.asarray(prepared("float32.tif"))
    assert float_image.min() == 0 and float_image.max() == 255
    cmyk = prepared("cmyk.jpg")
    assert cmyk.mode == "RGB" and np.asarray(cmyk).std() > 10
    assert tuple(_pixel(prepared("animated.gif"), 5, 5)) == (255, 0, 0)  # first frame
    assert np.abs(_pixel(prepared("animated.webp"), 5, 5) - (255, 0, 0)).max() < 40
    assert prepared("one_pixel.png").size == (1, 1)
    assert prepared("thin_line_6000x2.png").size == (1024, 1)
    assert prepared("photo_retina.jpg").size == (896, 896)  # 1411x1411 bounded by MAX_PIXELS = 896*896


def test_bounded_size() -> None:
    assert bounded_size(100, 50) == (100, 50)
    assert bounded_size(4000, 3000, max_side=1024, max_pixels=10**9) == (1024, 768)
    assert bounded_size(2000, 2000, max_side=4096, max_pixels=1000 * 1000) == (1000, 1000)
    assert bounded_size(100_000, 1, max_side=1024) == (1024, 1)


def test_image_size_reads_the_header_only(corpus: tuple[Path, dict[str, str]]) -> None:
    directory, _ = corpus
    assert image_size((directory / "photo_rocket.jpg").read_bytes()) == (640, 427)
    assert image_size((directory / "exif_rotated.jpg").read_bytes()) == EXIF_ROTATED_STORED_SIZE[::-1]
    assert image_size((directory / "bomb_20000x5000.bmp").read_bytes()) == (20000, 5000)
    assert image_size(b"") is None and image_size(b"<html></html>") is None


def test_prepare_batch(corpus: tuple[Path, dict[str, str]]) -> None:
    directory, _ = corpus
    names = ["photo_coffee.png", "html_page.jpg", "photo_retina.jpg"]
    batch = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "width": pa.array([None, None, 9999, None], pa.int32()),
            "image_bytes": [*((directory / n).read_bytes() for n in names), None],
        }
    )
    out = prepare_batch(batch, max_side=512)
    assert out.column("image_error").to_pylist()[1].startswith("cannot identify image file")
    assert out.column("image_error").to_pylist()[3] == "no image bytes"
    # The decoded size replaces what the metadata said (9999); no size where nothing decodes.
    assert out.column("width").to_pylist() == [600, None, 1411, None]
    assert out.column("height").to_pylist() == [400, None, 1411, None]
    decoded = [
        None if b is None else Image.open(io.BytesIO(b)) for b in out.column("prepared_image").to_pylist()
    ]
    assert decoded[0].size == (512, 341) and decoded[1] is None and decoded[2].size == (512, 512)
    assert encode_jpeg(Image.new("RGB", (4, 4)))[:2] == b"\xff\xd8"


def test_upright_rgb_jpeg_within_bounds_passes_through_without_reencoding(
    corpus: tuple[Path, dict[str, str]],
) -> None:
    directory, _ = corpus
    small = encode_jpeg(Image.new("RGB", (64, 48), (200, 30, 30)))
    names = ["exif_rotated.jpg", "cmyk.jpg"]
    batch = pa.table({"key": ["a", "b", "c", "d"],
                      "image_bytes": [small, encode_jpeg(Image.new("RGB", (2000, 100))),
                                      *((directory / n).read_bytes() for n in names)]})  # fmt: skip
    out = prepare_batch(batch).column("prepared_image").to_pylist()
    assert out[0] == small  # unchanged: the input bytes themselves
    assert prepare_image(small).unchanged
    for i in (1, 2, 3):  # resized, EXIF-rotated, CMYK: re-encoded from the corrected image
        assert out[i] != batch.column("image_bytes")[i].as_py()
        assert Image.open(io.BytesIO(out[i])).mode == "RGB"
