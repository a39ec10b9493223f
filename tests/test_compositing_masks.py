"""The compositing mask step: hand-made masks for the checks and the cut-out, and the tiny random-weight
CLIPSeg through `ConceptSegmenter` (sizes, batch independence, determinism, and the masks against a
computation by hand from the model's raw logits)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from laion_sg.offline.tiny_clipseg import build_tiny_clipseg
from pipelines.answers import failure_reason
from pipelines.compositing.masks import (
    DEFAULT_SEGMENTER,
    ConceptSegmenter,
    MaskSettings,
    cutout,
    mask_problem,
)

# ---------------------------------------------------------------------------------------------------------------
# Settings


def test_default_settings() -> None:
    assert MaskSettings() == MaskSettings(DEFAULT_SEGMENTER, 0.5, 0.01, 0.95, "float32")
    assert DEFAULT_SEGMENTER == "CIDAS/clipseg-rd64-refined"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"min_fraction": -0.01}, "min_fraction"),
        ({"min_fraction": 0.95}, "max_fraction"),  # min_fraction == max_fraction
        ({"min_fraction": 0.5, "max_fraction": 0.4}, "max_fraction"),
        ({"max_fraction": 1.01}, "max_fraction"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_settings_refuse_out_of_range(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MaskSettings(**kwargs)


def test_settings_accept_the_bounds() -> None:
    MaskSettings(min_fraction=0.0, max_fraction=1.0)


# ---------------------------------------------------------------------------------------------------------------
# mask_problem: 10 x 10 masks, so k foreground pixels are a fraction of exactly k / 100


def _mask(foreground: int, shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], dtype=bool)
    mask[:foreground] = True
    return mask.reshape(shape)


@pytest.mark.parametrize(
    ("foreground", "category", "fraction"),
    [
        (0, "empty mask", "fraction 0)"),
        (1, None, None),  # exactly min_fraction 0.01: usable
        (50, None, None),
        (95, None, None),  # exactly max_fraction 0.95: usable
        (96, "whole frame", "fraction 0.96)"),
        (100, "whole frame", "fraction 1)"),
    ],
)
def test_mask_problem_bounds(foreground: int, category: str | None, fraction: str | None) -> None:
    problem = mask_problem(_mask(foreground), MaskSettings())
    if category is None:
        assert problem is None
    else:
        assert failure_reason(problem) == category and fraction in problem


def test_mask_problem_just_below_min_fraction() -> None:
    problem = mask_problem(_mask(4), MaskSettings(min_fraction=0.05))
    assert failure_reason(problem) == "empty mask" and "fraction 0.04)" in problem
    assert mask_problem(_mask(5), MaskSettings(min_fraction=0.05)) is None


def test_all_false_is_empty_even_without_a_minimum() -> None:
    settings = MaskSettings(min_fraction=0.0, max_fraction=1.0)
    assert failure_reason(mask_problem(_mask(0), settings)) == "empty mask"
    assert mask_problem(_mask(1), settings) is None
    assert mask_problem(_mask(100), settings) is None  # the whole frame is allowed with max_fraction 1


@pytest.mark.parametrize(
    "mask",
    [
        np.ones((4, 4), dtype=np.uint8),
        np.ones(16, dtype=bool),
        np.ones((2, 2, 2), dtype=bool),
        np.zeros((0, 3), bool),
    ],
)
def test_mask_problem_refuses_non_masks(mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2-D boolean"):
        mask_problem(mask, MaskSettings())


# ---------------------------------------------------------------------------------------------------------------
# cutout: a 6 wide x 4 high image whose pixel (x, y) is (10 y, 10 x, 7)


def _image() -> Image.Image:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    for y in range(4):
        for x in range(6):
            pixels[y, x] = (10 * y, 10 * x, 7)
    return Image.fromarray(pixels)


def test_cutout_crops_to_the_bounding_box() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 2] = mask[1, 3] = mask[2, 4] = True  # rows 1-2, columns 2-4
    cut = cutout(_image(), mask)
    assert cut.mode == "RGBA" and cut.size == (3, 2)
    pixels = np.asarray(cut)
    assert pixels[..., 3].tolist() == [[255, 255, 0], [0, 0, 255]]
    assert pixels[..., :3].tolist() == [
        [[10, 20, 7], [10, 30, 7], [10, 40, 7]],
        [[20, 20, 7], [20, 30, 7], [20, 40, 7]],
    ]


def test_cutout_of_one_pixel_and_of_a_grey_image() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[3, 5] = True
    assert np.asarray(cutout(_image(), mask)).tolist() == [[[30, 50, 7, 255]]]
    grey = Image.fromarray(np.full((4, 6), 99, dtype=np.uint8), mode="L")
    assert np.asarray(cutout(grey, mask)).tolist() == [[[99, 99, 99, 255]]]


def test_cutout_of_the_whole_frame() -> None:
    cut = cutout(_image(), np.ones((4, 6), dtype=bool))
    assert cut.size == (6, 4) and np.array_equal(np.asarray(cut)[..., :3], np.asarray(_image()))
    assert (np.asarray(cut)[..., 3] == 255).all()


def test_cutout_refuses_an_empty_mask() -> None:
    with pytest.raises(ValueError, match="empty mask"):
        cutout(_image(), np.zeros((4, 6), dtype=bool))


def test_cutout_refuses_a_mask_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        cutout(_image(), np.ones((6, 4), dtype=bool))  # (W, H)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        cutout(_image(), np.ones((4, 5), dtype=bool))


# ---------------------------------------------------------------------------------------------------------------
# ConceptSegmenter on the tiny random-weight CLIPSeg

SIZES = [(90, 40), (33, 77), (64, 64), (200, 150)]  # (width, height): wider, taller, the model's size, larger
PHRASES = ["a cat", "a red mug", "a dog", "a potted plant"]


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clipseg(tmp_path_factory.mktemp("clipseg"), seed=0)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    # smooth images (blurred noise upscaled), so the model sees structure rather than white noise
    return [
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        for w, h in SIZES
    ]


@pytest.fixture(scope="module")
def segmenter(tiny_clipseg: Path) -> ConceptSegmenter:
    return ConceptSegmenter(MaskSettings(model=str(tiny_clipseg)), device="cpu")


def test_masks_are_boolean_at_each_image_size(segmenter: ConceptSegmenter, images: list[Image.Image]) -> None:
    masks = segmenter.masks(images, PHRASES)
    assert len(masks) == len(images)
    for mask, (width, height) in zip(masks, SIZES, strict=True):
        assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (height, width)
    # the threshold splits pixels, so the comparisons below mean something
    assert any(0 < mask.mean() < 1 for mask in masks)


def test_batch_gives_the_masks_of_single_images(
    segmenter: ConceptSegmenter, images: list[Image.Image]
) -> None:
    batch = segmenter.masks(images, PHRASES)
    for image, phrase, mask in zip(images, PHRASES, batch, strict=True):
        [single] = segmenter.masks([image], [phrase])
        assert np.array_equal(single, mask)
    assert segmenter.masks([], []) == []


def test_masks_are_deterministic_across_loads(
    tiny_clipseg: Path, segmenter: ConceptSegmenter, images: list[Image.Image]
) -> None:
    again = ConceptSegmenter(MaskSettings(model=str(tiny_clipseg)), device="cpu")
    for first, second in zip(segmenter.masks(images, PHRASES), again.masks(images, PHRASES), strict=True):
        assert np.array_equal(first, second)


@pytest.fixture(scope="module")
def raw_clipseg(tiny_clipseg: Path):
    """The tiny CLIPSeg's processor and model, loaded straight from transformers."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    return CLIPSegProcessor.from_pretrained(tiny_clipseg), CLIPSegForImageSegmentation.from_pretrained(
        tiny_clipseg
    )


def _probabilities_by_hand(raw_clipseg, image: Image.Image, phrase: str) -> torch.Tensor:
    """The foreground probabilities at the image's size, from the model's raw 64 x 64 logits: sigmoid, then
    bilinear resize to (H, W)."""
    processor, model = raw_clipseg
    with torch.inference_mode():
        logits = model.eval()(**processor(text=[phrase], images=[image], return_tensors="pt")).logits
        probabilities = torch.sigmoid(logits.reshape(1, 1, 64, 64))
        resized = torch.nn.functional.interpolate(
            probabilities, size=(image.height, image.width), mode="bilinear", align_corners=False
        )
    return resized[0, 0]


def test_masks_match_a_hand_computation(
    tiny_clipseg: Path, raw_clipseg, segmenter: ConceptSegmenter, images: list[Image.Image]
) -> None:
    strict = ConceptSegmenter(MaskSettings(model=str(tiny_clipseg), threshold=0.62), device="cpu")
    for threshold, masks in ((0.5, segmenter.masks(images, PHRASES)), (0.62, strict.masks(images, PHRASES))):
        for image, phrase, mask in zip(images, PHRASES, masks, strict=True):
            expected = (_probabilities_by_hand(raw_clipseg, image, phrase) > threshold).numpy()
            assert 0 < expected.mean() < 1
            assert np.array_equal(mask, expected)


class _Squeezed:
    """A CLIPSeg that returns (H, W) logits for one image, as transformers 4 did (``.squeeze()``)."""

    def __init__(self, model) -> None:
        self.model, self.dtype = model, model.dtype

    def __call__(self, **inputs) -> SimpleNamespace:
        logits = self.model(**inputs).logits.squeeze()
        assert logits.shape == (64, 64)
        return SimpleNamespace(logits=logits)


def test_a_squeezed_batch_of_one_is_handled(
    monkeypatch: pytest.MonkeyPatch, segmenter: ConceptSegmenter, images: list[Image.Image]
) -> None:
    expected = segmenter.masks(images, PHRASES)
    monkeypatch.setattr(segmenter, "model", _Squeezed(segmenter.model))
    for got, want in zip(segmenter.masks(images, PHRASES), expected, strict=True):
        assert np.array_equal(got, want)


def test_a_grey_image_is_segmented(segmenter: ConceptSegmenter, images: list[Image.Image]) -> None:
    [mask] = segmenter.masks([images[0].convert("L")], ["a cat"])
    assert mask.shape == (40, 90) and mask.dtype == np.bool_


@pytest.mark.parametrize(
    ("phrases", "message"), [(["a cat"], "4 images but 1 phrases"), (["a cat", "", "a", "b"], "non-empty")]
)
def test_masks_refuse_bad_phrases(
    segmenter: ConceptSegmenter, images: list[Image.Image], phrases, message
) -> None:
    with pytest.raises(ValueError, match=message):
        segmenter.masks(images, phrases)
