"""The compositing and repainting steps: `fit_box`, `paste_concepts` and `repaint_mask` against hand-computed
pixels, and `Compositor` end to end on a tiny random-weight SDXL (64 x 64, 2 steps) with the inpainting pipeline
both shared with the base model and loaded from a folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipelines.compositing.composite import (
    Compositor,
    CompositorSettings,
    fit_box,
    paste_concepts,
    repaint_mask,
)
from pipelines.compositing.layout import Box

# ---------------------------------------------------------------------------------------------------------------
# fit_box


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((200, 100), Box("wide in tall", 10, 20, 110, 220), (10, 95, 100, 50)),  # scale 1/2, 75 px above
        ((50, 100), Box("tall in wide", 0, 0, 300, 100), (125, 0, 50, 100)),  # scale 1, 125 px left
        ((64, 32), Box("exact", 5, 5, 69, 37), (5, 5, 64, 32)),
        ((3, 2), Box("upscaled", 0, 0, 10, 10), (0, 1, 10, 7)),  # height 6.67 rounds to 7 (not 6)
        ((4, 1), Box("half", 0, 0, 10, 10), (0, 3, 10, 3)),  # height 2.5 rounds half up to 3
        # box rounded half up: x 0.5 -> 1, 10.49 -> 10; y 1.5 -> 2, 12.5 -> 13; extent 9 x 11, scale 3 -> 9 x 6,
        # leftover 5 rows: 2 above, 3 below
        ((3, 2), Box("rounded", 0.5, 1.5, 10.49, 12.5), (1, 4, 9, 6)),
        ((100, 1), Box("sliver", 0, 0, 10, 10), (0, 4, 10, 1)),  # height 0.1 -> at least 1
        ((5, 5), Box("sub-pixel", 0.6, 0.6, 0.9, 0.9), (1, 1, 1, 1)),  # empty rounded extent widened to 1 px
    ],
)
def test_fit_box_hand_computed(size: tuple[int, int], box: Box, expected: tuple[int, int, int, int]) -> None:
    assert fit_box(size, box) == expected


def test_fit_box_refuses_an_empty_cutout() -> None:
    with pytest.raises(ValueError, match="at least 1 x 1"):
        fit_box((0, 5), Box("a", 0, 0, 10, 10))


def half_up(value: float) -> int:
    return math.floor(value + 0.5)


@given(
    size=st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
    corner=st.tuples(st.floats(0, 1000), st.floats(0, 1000)),
    extent=st.tuples(st.floats(1, 1000), st.floats(1, 1000)),
)
def test_fit_box_fits_centred_and_as_large_as_fits(
    size: tuple[int, int], corner: tuple[float, float], extent: tuple[float, float]
) -> None:
    (width, height), (bx, by) = size, corner
    box = Box("a", bx, by, bx + extent[0], by + extent[1])
    x0, y0, x1, y1 = half_up(box.x0), half_up(box.y0), half_up(box.x1), half_up(box.y1)
    x, y, w, h = fit_box(size, box)
    assert w >= 1 and h >= 1 and x0 <= x and y0 <= y and x + w <= x1 and y + h <= y1  # inside, at least 1 x 1
    assert w == x1 - x0 or h == y1 - y0  # as large as fits: one side fills the box
    assert 0 <= (x1 - x - w) - (x - x0) <= 1 and 0 <= (y1 - y - h) - (y - y0) <= 1  # centred, odd pixel after
    assert abs(h - w * height / width) <= 1 or abs(w - h * width / height) <= 1  # aspect ratio kept


# ---------------------------------------------------------------------------------------------------------------
# paste_concepts

GREY, RED, BLUE = (10, 20, 30), (255, 0, 0), (0, 0, 255)


def half_red() -> Image.Image:
    """4 x 2: the left two columns opaque red, the right two transparent green."""
    image = Image.new("RGBA", (4, 2), (0, 255, 0, 0))
    image.paste((*RED, 255), (0, 0, 2, 2))
    return image


def test_paste_keeps_opaque_pixels_and_the_background_under_transparent_ones() -> None:
    composite, mask = paste_concepts(Image.new("RGB", (8, 6), GREY), [half_red()], [Box("a", 1, 2, 5, 4)])
    assert composite.mode == "RGB" and composite.size == (8, 6)
    pixels = np.asarray(composite)
    expected = np.full((6, 8, 3), GREY, dtype=np.uint8)
    expected[2:4, 1:3] = RED  # the opaque half at x 1..2, y 2..3; the transparent half (x 3..4) keeps grey
    np.testing.assert_array_equal(pixels, expected)
    expected_mask = np.zeros((6, 8), dtype=bool)
    expected_mask[2:4, 1:3] = True
    np.testing.assert_array_equal(mask, expected_mask)


def test_paste_puts_later_cutouts_on_top() -> None:
    background = Image.new("RGB", (8, 6), GREY)
    blue = Image.new("RGBA", (2, 2), (*BLUE, 255))
    red_box, blue_box = Box("red", 1, 2, 5, 4), Box("blue", 2, 2, 4, 4)
    on_top, mask = paste_concepts(background, [half_red(), blue], [red_box, blue_box])
    assert tuple(np.asarray(on_top)[2, 1]) == RED and tuple(np.asarray(on_top)[2, 2]) == BLUE
    assert tuple(np.asarray(on_top)[3, 3]) == BLUE
    under, _ = paste_concepts(background, [blue, half_red()], [blue_box, red_box])
    assert tuple(np.asarray(under)[2, 2]) == RED and tuple(np.asarray(under)[2, 3]) == BLUE
    assert mask[2:4, 1:4].all() and mask.sum() == 6  # the union: x 1..3, y 2..3


def test_paste_resizes_into_the_fitted_box() -> None:
    green = Image.new("RGBA", (3, 3), (0, 200, 0, 255))
    composite, mask = paste_concepts(Image.new("RGB", (10, 8), GREY), [green], [Box("g", 0, 0, 10, 6)])
    pixels = np.asarray(composite)
    assert (pixels[0:6, 2:8] == (0, 200, 0)).all()  # fit_box: 6 x 6 at x 2, y 0; a solid colour stays solid
    assert (pixels[:, :2] == GREY).all() and (pixels[:, 8:] == GREY).all() and (pixels[6:] == GREY).all()
    assert mask.sum() == 36 and mask[0:6, 2:8].all()


def test_object_mask_is_alpha_at_least_128() -> None:
    cutout = Image.new("RGBA", (2, 1), (255, 255, 255, 127))
    cutout.putpixel((1, 0), (255, 255, 255, 128))
    _, mask = paste_concepts(Image.new("RGB", (2, 1)), [cutout], [Box("a", 0, 0, 2, 1)])
    assert mask.tolist() == [[False, True]]


def test_paste_refuses_mismatched_or_outside_boxes() -> None:
    background = Image.new("RGB", (8, 6), GREY)
    with pytest.raises(ValueError, match="one box per cutout"):
        paste_concepts(background, [half_red()], [])
    with pytest.raises(ValueError, match="outside the 8x6 background"):
        paste_concepts(background, [half_red()], [Box("a", 6, 0, 10, 2)])


# ---------------------------------------------------------------------------------------------------------------
# repaint_mask (3 x 3 square structuring element; the image edge counts as object)


def as_mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def repainted(rows: list[str], seam: int) -> list[str]:
    image = repaint_mask(as_mask(rows), seam)
    assert image.mode == "L" and set(np.unique(np.asarray(image))) <= {0, 255}
    return ["".join("." if v == 255 else "#" for v in row) for row in np.asarray(image)]


BLOCK = [".......", ".#####.", ".#####.", ".#####.", ".#####.", ".#####.", "......."]


def test_repaint_mask_seam_0_repaints_exactly_the_background() -> None:
    assert repainted(BLOCK, 0) == BLOCK


def test_repaint_mask_seam_1_repaints_a_one_pixel_band_inside_the_border() -> None:
    assert repainted(BLOCK, 1) == [".......", ".......", "..###..", "..###..", "..###..", ".......", "......."]


def test_repaint_mask_seam_2() -> None:
    block = ["." * 9] + [".#######."] * 7 + ["." * 9]
    assert repainted(block, 2) == ["." * 9] * 3 + ["...###..."] * 3 + ["." * 9] * 3


def test_repaint_mask_square_element_erodes_across_a_diagonal() -> None:
    # (1, 1) touches the background only diagonally: a 3 x 3 square erodes it (a cross would not); the image edge
    # is object, so (0, 2) stays
    assert repainted([".###", "####", "####", "####"], 1) == ["..##", "..##", "####", "####"]


def test_repaint_mask_keeps_object_pixels_on_the_image_edge() -> None:
    assert repainted(["##..", "##..", "##..", "##.."], 1) == ["#...", "#...", "#...", "#..."]


def test_repaint_mask_refuses_a_negative_seam() -> None:
    with pytest.raises(ValueError, match="seam"):
        repaint_mask(as_mask(BLOCK), -1)


# ---------------------------------------------------------------------------------------------------------------
# CompositorSettings


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": ""}, "model"),
        ({"inpaint_model": " "}, "inpaint_model"),
        ({"size": 100}, "size"),
        ({"size": 0}, "size"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"strength": 0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"steps": 1, "strength": 0.5}, "strength"),  # int(1 x 0.5) = 0 inpainting steps
        ({"seam": -1}, "seam"),
        ({"seam": 1.5}, "seam"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"(?m)^(  Value error, )?{field}\b"):  # a line of pydantic's message
        CompositorSettings(**changes)


def test_settings_defaults_are_valid() -> None:
    settings = CompositorSettings()
    assert (settings.size, settings.steps, settings.seam, settings.dtype) == (1024, 30, 8, "auto")


# ---------------------------------------------------------------------------------------------------------------
# Compositor on a tiny random SDXL

SIZE, SEAM = 64, 4


@pytest.fixture(scope="module")
def sdxl_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "sdxl"


def load(sdxl_dir: Path, inpaint_model: str | None) -> Compositor:
    settings = CompositorSettings(model=str(sdxl_dir), inpaint_model=inpaint_model, size=SIZE, steps=2, seam=SEAM)
    return Compositor(settings, device="cpu")


@pytest.fixture(scope="module")
def compositor(sdxl_dir: Path) -> Compositor:
    """inpaint_model=None: the inpainting pipeline is built from the base model's components."""
    return load(sdxl_dir, None)


@pytest.fixture(scope="module")
def folder_compositor(sdxl_dir: Path) -> Compositor:
    """inpaint_model = the same folder, loaded a second time."""
    return load(sdxl_dir, str(sdxl_dir))


BOTH = pytest.mark.parametrize("which", ["compositor", "folder_compositor"])


def dog() -> Image.Image:
    """16 x 16: an opaque disc of a colour gradient on transparency."""
    yy, xx = np.mgrid[0:16, 0:16]
    rgba = np.stack([xx * 16, yy * 16, np.full_like(xx, 90), np.where((xx - 7.5) ** 2 + (yy - 7.5) ** 2 < 56, 255, 0)])
    return Image.fromarray(rgba.transpose(1, 2, 0).astype(np.uint8), "RGBA")


CUTOUTS = [dog(), Image.new("RGBA", (20, 10), (*BLUE, 255))]
BOXES = [Box("dog", 8, 8, 40, 40), Box("car", 40, 44, 60, 60)]  # fitted: (8, 8, 32, 32) and (40, 47, 20, 10)


@BOTH
def test_inpaint_pipeline_shares_the_base_weights_only_when_asked(which: str, request: pytest.FixtureRequest) -> None:
    compositor = request.getfixturevalue(which)
    shared = compositor.settings.inpaint_model is None
    assert (compositor.inpaint.unet is compositor.base.unet) == shared
    assert (compositor.inpaint.vae is compositor.base.vae) == shared


def test_background_is_square_and_seeded(compositor: Compositor) -> None:
    first = compositor.background("a sunny beach", seed=0)
    assert first.mode == "RGB" and first.size == (SIZE, SIZE)
    assert compositor.background("a sunny beach", seed=0).tobytes() == first.tobytes()
    assert compositor.background("a sunny beach", seed=1).tobytes() != first.tobytes()


@BOTH
def test_compose_repaints_the_background_and_keeps_the_object_pixels(which: str, request: pytest.FixtureRequest) -> None:
    compositor = request.getfixturevalue(which)
    background = compositor.background("a sunny beach", seed=0)
    out = compositor.compose(background, CUTOUTS, BOXES, "a dog and a car on a beach", seed=3)
    assert out.mode == "RGB" and out.size == (SIZE, SIZE)
    composite, objects = paste_concepts(background, CUTOUTS, BOXES)
    kept = np.asarray(repaint_mask(objects, SEAM)) == 0
    assert kept[24, 24] and kept[51:53, 44:56].all() and kept[51:53].sum() == 12 * 2  # the car: 20 x 10 -> 12 x 2
    pixels, composite = np.asarray(out), np.asarray(composite)
    np.testing.assert_array_equal(pixels[kept], composite[kept])  # the reference pixels, exactly
    band = objects & ~kept
    assert (pixels[band] != composite[band]).any(axis=1).mean() > 0.5  # the seam band is repainted
    outside = ~objects
    assert (pixels[outside] != np.asarray(background)[outside]).any(axis=1).mean() > 0.5  # so is the background


def test_compose_is_deterministic_per_seed(compositor: Compositor) -> None:
    background = Image.new("RGB", (SIZE, SIZE), GREY)
    first = compositor.compose(background, CUTOUTS, BOXES, "a dog and a car", seed=5)
    assert compositor.compose(background, CUTOUTS, BOXES, "a dog and a car", seed=5).tobytes() == first.tobytes()
    assert compositor.compose(background, CUTOUTS, BOXES, "a dog and a car", seed=6).tobytes() != first.tobytes()


def test_compose_resizes_the_background_to_the_output_size(compositor: Compositor) -> None:
    out = compositor.compose(Image.new("RGB", (40, 24), GREY), CUTOUTS[1:], BOXES[1:], "a car", seed=0)
    assert out.size == (SIZE, SIZE)
    kept = np.zeros((SIZE, SIZE), dtype=bool)
    kept[51:53, 44:56] = True  # the car (40, 47, 20, 10) eroded by 4
    assert (np.asarray(out)[kept] == BLUE).all()
