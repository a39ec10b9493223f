"""The spatial track's detection step: a tiny random-weight OWLv2 loaded through the product's loading code,
pixel boxes of the decoded image, thresholds, failed images, resumable chunks, and the VISOR items."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from benchmark.chunks import write_chunk
from benchmark.metrics.visor import visor, visor_details
from benchmark.spatial import detect
from benchmark.spatial.detect import (
    DETECTIONS_SCHEMA,
    DetectItem,
    DetectorSettings,
    ObjectDetector,
    detect_images,
    detect_items,
    detections_from_outputs,
    read_detections,
    visor_items,
)
from benchmark.spatial.prompts import build_prompts
from laion_sg.offline.tiny_owlv2 import TINY_OWLV2_IMAGE_SIZE, build_tiny_owlv2

SIZES = [(64, 64), (200, 100), (90, 160)]  # (width, height): square, landscape, portrait


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def owlv2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_owlv2(tmp_path_factory.mktemp("owlv2"))


@pytest.fixture(scope="module")
def detector(owlv2_dir: Path) -> ObjectDetector:
    return ObjectDetector(DetectorSettings(model=str(owlv2_dir), threshold=0.0))


def assert_boxes_in_image(row: dict, labels: tuple[str, ...], threshold: float) -> None:
    for d in row["detections"]:
        x0, y0, x1, y1 = d["box"]
        assert d["label"] in labels
        assert all(math.isfinite(v) for v in (*d["box"], d["score"]))
        assert 0.0 <= x0 < x1 <= row["width"] and 0.0 <= y0 < y1 <= row["height"], d
        assert d["score"] > threshold


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_tiny_detector_loads_and_finds_labelled_boxes_inside_the_image(
    detector, no_network, width, height
):
    labels = ("hot dog", "cat")
    item = DetectItem("sr2d-00001", 2, png(width, height), labels)
    [row] = detector([item])
    assert (row["key"], row["image_index"], row["status"], row["error"]) == ("sr2d-00001", 2, "ok", None)
    assert (row["width"], row["height"]) == (width, height)
    assert row["detections"], "the tiny model keeps boxes near its patches: some must lie in the image"
    assert_boxes_in_image(row, labels, 0.0)
    scores = [d["score"] for d in row["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert detector([item]) == [row]  # deterministic


def test_a_higher_threshold_keeps_exactly_the_boxes_above_it(detector, owlv2_dir):
    item = DetectItem("p", 0, png(200, 100, seed=1), ("dog", "cat"))
    everything = detector([item])[0]["detections"]  # threshold 0
    median = float(np.median([d["score"] for d in everything]))
    [above] = ObjectDetector(DetectorSettings(model=str(owlv2_dir), threshold=median))([item])
    assert above["detections"] == [d for d in everything if d["score"] > median]
    assert 0 < len(above["detections"]) < len(everything)
    [none] = ObjectDetector(DetectorSettings(model=str(owlv2_dir), threshold=1.01))([item])
    assert none["status"] == "ok" and none["detections"] == []


def test_an_undecodable_image_fails_without_calling_the_model(detector, monkeypatch):
    def refuse(**inputs):
        raise AssertionError("the model was called on an undecodable image")

    monkeypatch.setattr(detector, "model", refuse)
    [row] = detector([DetectItem("p", 0, b"<html>not an image</html>", ("dog", "cat"))])
    assert row["status"] == "failed" and row["detections"] is None
    assert row["error"].startswith("undecodable image: ") and "HTML" in row["error"]
    assert pa.Table.from_pylist([row], schema=DETECTIONS_SCHEMA).num_rows == 1


def test_detect_images_writes_chunks_and_a_rerun_does_no_work(owlv2_dir, tmp_path, monkeypatch):
    prompts = {p.prompt_id: p for p in build_prompts(("cat", "dog"), ("left of",))}
    images = pa.Table.from_pylist(
        [
            {"key": key, "image_index": i, "png": png(*SIZES[i % 3], seed=i)}
            for key in sorted(prompts)
            for i in range(3)
        ]
    )
    settings = DetectorSettings(model=str(owlv2_dir), threshold=0.3)
    first = detect_images(detect_items([images], prompts), settings, tmp_path / "a", chunk_size=4)
    files = sorted((tmp_path / "a").glob("part-*.parquet"))
    assert len(files) == 2 and first.num_rows == 6  # chunks of 4 and 2
    assert first.column("status").to_pylist() == ["ok"] * 6
    labels = {(r["key"], d["label"]) for r in first.to_pylist() for d in r["detections"]}
    assert labels <= {(k, name) for k, p in prompts.items() for name in (p.subject, p.object)}
    stamps = [f.stat().st_mtime_ns for f in files]

    class Refuse:
        def __init__(self, **kwargs):
            raise AssertionError("a re-run loaded the detector although every image is done")

    monkeypatch.setattr(detect, "ObjectDetector", Refuse)
    again = detect_images(detect_items([images], prompts), settings, tmp_path / "a", chunk_size=4)
    assert again.equals(first)
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "a").glob("part-*.parquet"))] == stamps
    monkeypatch.undo()
    # another run from scratch, in other chunks, gives the same rows
    assert detect_images(detect_items([images], prompts), settings, tmp_path / "b", chunk_size=5).equals(
        first
    )


def detection(label: str, score: float, box: tuple[float, float, float, float]) -> dict:
    return {"label": label, "score": score, "box": list(box)}


def test_visor_items_give_the_hand_computed_visor(tmp_path):
    prompts = {p.prompt_id: p for p in build_prompts(("cat", "dog"), ("left of", "above"))}
    left = next(p for p in prompts.values() if (p.subject, p.relation, p.object) == ("cat", "left of", "dog"))
    above = next(p for p in prompts.values() if (p.subject, p.relation, p.object) == ("dog", "above", "cat"))
    ok = {"status": "ok", "error": None, "width": 100, "height": 100}
    rows = [
        # cat left of dog: the best cat box (x 20) is left of the dog (x 80); the weaker cat at x 95 is ignored
        {"key": left.prompt_id, "image_index": 0, **ok, "detections": [
            detection("cat", 0.5, (10, 10, 30, 30)), detection("dog", 0.4, (70, 10, 90, 30)),
            detection("cat", 0.2, (90, 10, 100, 30))]},
        {"key": left.prompt_id, "image_index": 1, **ok, "detections": [  # both, relation wrong (90 > 10)
            detection("cat", 0.5, (80, 0, 100, 20)), detection("dog", 0.5, (0, 0, 20, 20))]},
        {"key": left.prompt_id, "image_index": 2, **ok, "detections": [detection("cat", 0.9, (0, 0, 10, 10))]},
        {"key": left.prompt_id, "image_index": 3, "status": "failed", "error": "undecodable image: x",
         "width": None, "height": None, "detections": None},
        # dog above cat: y 10 < y 50 right; then y 50 > y 10 wrong
        {"key": above.prompt_id, "image_index": 0, **ok, "detections": [
            detection("dog", 0.3, (0, 0, 20, 20)), detection("cat", 0.3, (0, 40, 20, 60))]},
        {"key": above.prompt_id, "image_index": 1, **ok, "detections": [
            detection("dog", 0.3, (0, 40, 20, 60)), detection("cat", 0.3, (0, 0, 20, 20))]},
    ]  # fmt: skip
    write_chunk(tmp_path, "hand", rows[::-1], DETECTIONS_SCHEMA)
    items = visor_items(prompts, read_detections(tmp_path))
    assert [(i["prompt_id"], i["image_index"]) for i in items] == sorted(
        (r["key"], r["image_index"]) for r in rows
    )
    by_image = {(i["prompt_id"], i["image_index"]): i for i in items}
    assert by_image[(left.prompt_id, 3)]["detections"] == []
    assert by_image[(left.prompt_id, 0)]["detections"][0] == ("cat", 0.5, (10.0, 10.0, 30.0, 30.0))
    assert by_image[(above.prompt_id, 0)]["relation"] == "above"
    # 6 images; both detected in 4 (left 0, 1; above 0, 1); relation right in 2 (left 0, above 0);
    # each prompt has exactly one right image
    expected = {"oa": 4 / 6, "visor_uncond": 2 / 6, "visor_cond": 2 / 4, "visor_1": 1.0, "visor_2": 0.0}
    scores = visor(items)
    assert {k: scores[k] for k in expected} == pytest.approx(expected)
    assert visor_details(items)["n_prompts_short"] == 1
    with pytest.raises(ValueError, match="no known prompt"):
        visor_items({}, read_detections(tmp_path))


def known_outputs(boxes: list[tuple[float, float, float, float]], logits: list[tuple[float, float]]):
    """Model outputs made by hand (not the model's): normalised (cx, cy, w, h) boxes and per-query logits."""
    import torch
    from transformers.models.owlv2.modeling_owlv2 import Owlv2ObjectDetectionOutput

    return Owlv2ObjectDetectionOutput(logits=torch.tensor([logits]), pred_boxes=torch.tensor([boxes]))


@pytest.mark.parametrize(
    ("width", "height", "boxes", "expected"),
    [
        # landscape 200x100, padded at the bottom to 200x200: fractions are of 200 on both axes
        (200, 100, [(0.5, 0.25, 0.2, 0.1)], [[80.0, 40.0, 120.0, 60.0]]),
        (
            200,
            100,
            [(0.25, 0.5, 0.1, 0.2)],
            [[40.0, 80.0, 60.0, 100.0]],
        ),  # straddles the bottom edge: clipped
        (200, 100, [(0.5, 0.75, 0.2, 0.1)], []),  # wholly in the padding: dropped
        # portrait 100x200, padded at the right
        (100, 200, [(0.25, 0.5, 0.1, 0.2)], [[40.0, 80.0, 60.0, 120.0]]),
        (100, 200, [(0.75, 0.5, 0.1, 0.2)], []),
        (64, 64, [(0.5, 0.5, 0.25, 0.5)], [[24.0, 16.0, 40.0, 48.0]]),
    ],
)
def test_post_processing_of_known_outputs_maps_padded_fractions_to_pixels(
    detector, width, height, boxes, expected
):
    processor = detector.processor  # as the product loaded it
    outputs = known_outputs([*boxes, (0.5, 0.1, 0.1, 0.1)], [(5.0, -5.0)] * len(boxes) + [(-5.0, -6.0)])
    found = detections_from_outputs(processor, outputs, ("cat", "dog"), width, height, threshold=0.1)
    assert len(found) == len(expected)
    assert all(d["box"] == pytest.approx(box, abs=1e-4) for d, box in zip(found, expected, strict=True))
    assert all(d["label"] == "cat" and d["score"] == pytest.approx(1 / (1 + math.exp(-5.0))) for d in found)


@pytest.mark.parametrize(("width", "height", "axis"), [(200, 100, 2), (100, 200, 3)])
def test_the_processor_pads_at_the_bottom_or_right(detector, width, height, axis):
    """The mapping above assumes the image sits in the top-left corner of the padded square."""
    processor = detector.processor
    pixels = processor(images=[Image.new("RGB", (width, height), "white")], return_tensors="pt")[
        "pixel_values"
    ]
    mean = np.array(processor.image_processor.image_mean)[:, None]
    std = np.array(processor.image_processor.image_std)[:, None]
    lines = pixels[0].movedim(axis - 1, 0).flatten(1).numpy().reshape(TINY_OWLV2_IMAGE_SIZE, 3, -1)
    half = TINY_OWLV2_IMAGE_SIZE // 2
    assert np.allclose(lines[: half - 2], (1.0 - mean) / std, atol=1e-5)  # the image: white
    assert np.allclose(lines[half + 2 :], (0.0 - mean) / std, atol=1e-5)  # the padding: zeros
