"""Gen4Gen's CP-CLIP / TI-CLIP metric classes on hand-made embeddings, and the compositing scoring job
(`python -m benchmark.compositing`) end to end on a hand-built compositing output with the tiny OWLv2 and open_clip
stand-ins."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from benchmark.compositing import main
from benchmark.metrics import CPCLIPScore, TICLIPScore, cp_clip_scores
from benchmark.metrics.clip_embedding import CLIPEmbedder
from laion_sg.offline.tiny_clip import build_tiny_open_clip
from laion_sg.offline.tiny_owlv2 import build_tiny_owlv2
from schemas.runs import RunIdentityError

E1, E2, E3, E4 = np.eye(4)
V = np.array([0.6, 0.8, 0.0, 0.0])  # cos(V, E1) = 0.6, cos(V, E2) = 0.8
W = np.array([0.0, 0.6, 0.8, 0.0])  # cos(V, W) = 0.48


# ---- the metric classes -------------------------------------------------------------------------------------------


def test_cp_clip_score_averages_references_then_concepts_then_images() -> None:
    metric = CPCLIPScore()
    # image 1: concept 1 region E1 vs references E1, E2 -> (1 + 0) / 2 = 0.5 (cos with the mean reference: 0.707);
    # concept 2 region V vs E2, E3, W -> (0.8 + 0 + 0.48) / 3 = 0.42667; concept 3 undetected -> 0
    metric.update([E1, V, None], [np.stack([E1, E2]), np.stack([E2, E3, W]), E4])
    # image 2: one concept, region 2 * V (not a unit vector) vs E1 -> 0.6
    metric.update([2 * V], [E1[None, :]])
    image_1 = (0.5 + 1.28 / 3 + 0.0) / 3  # 0.30889
    assert metric.per_concept()[0] == pytest.approx([0.5, 1.28 / 3, 0.0], abs=1e-15)
    assert metric.per_image() == pytest.approx([image_1, 0.6], abs=1e-15)
    out = metric.compute()
    # images weigh the same (not concepts: pooling the four concepts would give (0.5 + 0.42667 + 0 + 0.6) / 4)
    assert out["cp_clip"] == pytest.approx((image_1 + 0.6) / 2, abs=1e-15)
    assert out["cp_clip_std"] == pytest.approx(abs(0.6 - image_1) / 2, abs=1e-15)
    assert (out["n_images"], out["n_concepts"], out["n_detected"]) == (2, 4, 3)
    assert out["detection_rate"] == 0.75
    assert CPCLIPScore.higher_is_better and CPCLIPScore.track == TICLIPScore.track == "compositing"
    assert CPCLIPScore.labels == {"cp_clip": "CP-CLIP"} and CPCLIPScore.count_key in out


def test_ti_clip_score_is_the_mean_pair_cosine() -> None:
    metric = TICLIPScore()
    metric.update(np.stack([V, E1]), np.stack([E1, -E1]))  # cos 0.6 and -1 (not clamped)
    metric.update(V, W)  # a single pair: 0.48
    out = metric.compute()
    assert metric.per_pair() == pytest.approx([0.6, -1.0, 0.48], abs=1e-15)
    assert out["ti_clip"] == pytest.approx(0.08 / 3, abs=1e-15)
    assert (
        out["n_pairs"] == 3 and TICLIPScore.labels == {"ti_clip": "TI-CLIP"} and TICLIPScore.higher_is_better
    )
    mean = 0.08 / 3  # the population std, by hand
    std = math.sqrt(((0.6 - mean) ** 2 + (-1.0 - mean) ** 2 + (0.48 - mean) ** 2) / 3)
    assert set(out) == {"ti_clip", "ti_clip_std", "n_pairs"} and out["ti_clip_std"] == pytest.approx(std, abs=1e-15)


def test_the_classes_refuse_to_compute_before_an_update_or_on_disagreeing_states() -> None:
    import torch

    for metric in (CPCLIPScore(), TICLIPScore()):
        with pytest.raises(RuntimeError, match=rf"^{type(metric).__name__}\.compute\(\) before any update\(\)$"):
            metric.compute()
    metric = CPCLIPScore()
    metric.update([V, None], [E1, E1])
    metric.concepts_per_image.append(torch.tensor([1]))  # a state one concept longer than the scores
    with pytest.raises(ValueError, match="^CP-CLIP: the states disagree on the number of concepts$"):
        metric.per_concept()


def test_merged_instances_equal_one_instance_fed_everything() -> None:
    rng = np.random.default_rng(0)
    images = [
        (
            [rng.normal(size=8) if rng.random() > 0.3 else None for _ in range(n)],
            [rng.normal(size=(k, 8)) for k in range(1, n + 1)],
        )
        for n in (1, 3, 2, 4, 2)
    ]
    pairs = [(rng.normal(size=(2, 8)), rng.normal(size=(2, 8))) for _ in range(5)]
    whole_cp, whole_ti = CPCLIPScore(), TICLIPScore()
    parts = [(CPCLIPScore(), TICLIPScore()) for _ in range(2)]
    for i, (regions, refs) in enumerate(images):
        whole_cp.update(regions, refs)
        parts[i % 2][0].update(regions, refs)
    for i, pair in enumerate(pairs):
        whole_ti.update(*pair)
        parts[i % 2][1].update(*pair)
    parts[0][0].merge_state(parts[1][0])
    parts[0][1].merge_state(parts[1][1])
    merged_cp, merged_ti = parts[0][0].compute(), parts[0][1].compute()
    expected_cp, expected_ti = whole_cp.compute(), whole_ti.compute()
    assert merged_cp["cp_clip"] == pytest.approx(expected_cp["cp_clip"], abs=1e-14)
    assert {k: v for k, v in merged_cp.items() if k.startswith("n_")} == {
        k: v for k, v in expected_cp.items() if k.startswith("n_")
    }
    assert merged_ti["ti_clip"] == pytest.approx(expected_ti["ti_clip"], abs=1e-14)
    assert merged_ti["n_pairs"] == expected_ti["n_pairs"] == 10
    # and the whole equals the functional forms
    direct = [float(np.mean(cp_clip_scores(r, refs))) for r, refs in images]
    assert expected_cp["cp_clip"] == pytest.approx(np.mean(direct), abs=1e-14)


# ---- the job end to end -------------------------------------------------------------------------------------------

ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("scene", pa.string()),
        ("concepts", pa.list_(pa.string())),
        ("caption", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("width", pa.int32()),
        ("height", pa.int32()),
        (
            "boxes",
            pa.list_(
                pa.struct(
                    [
                        (n, pa.string() if n == "concept" else pa.float64())
                        for n in ("concept", "x0", "y0", "x1", "y1")
                    ]
                )
            ),
        ),
        ("compositing", pa.struct([("status", pa.string()), ("stage", pa.string()), ("error", pa.string())])),
    ]
)
CONCEPTS = {
    ("kitchen", "red_teapot"): ["red", "darkred"],
    ("kitchen", "cat"): ["orange"],
    ("park", "dog"): ["brown", "tan", "black"],
}


def shape_png(color: str, ellipse: bool, size: tuple[int, int] = (96, 80)) -> bytes:
    image = Image.new("RGB", size, (230, 230, 230))
    draw = ImageDraw.Draw(image)
    (draw.ellipse if ellipse else draw.rectangle)((10, 10, 60, 50), fill=color)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compositing_scores")
    concepts = root / "concepts"
    for (scene, concept), colors in CONCEPTS.items():
        folder = concepts / scene / concept
        folder.mkdir(parents=True)
        for i, color in enumerate(colors):  # .png and .jpg references
            Image.open(io.BytesIO(shape_png(color, True))).save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
        (folder / "notes.txt").write_text("not an image")
    compose = root / "compose"
    (compose / "data").mkdir(parents=True)
    (compose / "run.json").write_text(json.dumps({"input": str(concepts)}))
    ok = {"status": "ok", "stage": "done", "error": None}
    rows = [
        {"key": "a", "scene": "kitchen", "concepts": ["red_teapot", "cat"], "caption": "a red teapot and a cat",
         "image": {"bytes": shape_png("red", True, (128, 96)), "path": "a.png"}, "compositing": ok},
        {"key": "b", "scene": "park", "concepts": ["dog"], "caption": "a dog in a park",
         "image": {"bytes": shape_png("brown", False), "path": "b.png"}, "compositing": ok},
        {"key": "c", "scene": "park", "concepts": ["dog"], "caption": "a dog", "image": None,
         "compositing": {"status": "failed", "stage": "segment", "error": "no mask"}},
    ]  # fmt: skip
    rows = [
        r | {"width": 96, "height": 80, "boxes": [{"concept": "dog", "x0": 0, "y0": 0, "x1": 5, "y1": 5}]}
        for r in rows
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), compose / "data" / "part-0.parquet")
    return {
        "root": root,
        "concepts": concepts,
        "compose": compose,
        "owl": build_tiny_owlv2(root / "owlv2"),
        "clip": build_tiny_open_clip(root / "open_clip"),
    }


def run_job(setup: dict[str, Path], out: Path, *extra: str) -> dict:
    args = ["--input", str(setup["compose"]), "--output", str(out), "--detector.model", str(setup["owl"])]
    assert main([*args, "--clip.model", str(setup["clip"]), "--device", "cpu", *extra]) == 0
    return json.loads((out / "scores.json").read_text())


@pytest.fixture(scope="module")
def first_run(setup: dict[str, Path]) -> dict:
    return run_job(setup, setup["root"] / "scores")


def test_scores_equal_a_recomputation_from_the_stored_boxes(setup, first_run, capsys) -> None:
    scores, out = first_run, setup["root"] / "scores"
    table = pq.read_table(out / "per_image.parquet").to_pylist()
    assert [r["key"] for r in table] == ["a", "b", "c"]
    scored = [r for r in table if r["status"] == "scored"]
    # the failed row is counted and excluded
    assert table[2]["status"] == "compositing failed" and table[2]["cp_clip"] is None
    assert (scores["n_rows"], scores["n_images"], scores["n_failed"]) == (3, 2, 1)
    assert scores["failed_by_stage"] == {"segment": 1}
    # the means are those of the stored per-image scores
    assert scores["cp_clip"] == pytest.approx(np.mean([r["cp_clip"] for r in scored]), abs=1e-15)
    assert scores["ti_clip"] == pytest.approx(np.mean([r["ti_clip"] for r in scored]), abs=1e-15)

    # recompute every score here: crops of the stored boxes and the references through the public embedder
    embedder = CLIPEmbedder(setup["clip"], None, device="cpu")
    recomputed_cp, recomputed_ti = [], []
    for row in scored:
        image = Image.open(
            io.BytesIO(shape_png("red", True, (128, 96)) if row["key"] == "a" else shape_png("brown", False))
        )
        image = image.convert("RGB")
        regions = []
        for box in row["boxes"]:
            if box is None:
                regions.append(None)
                continue
            whole_pixels = (
                math.floor(box["x0"]),
                math.floor(box["y0"]),
                math.ceil(box["x1"]),
                math.ceil(box["y1"]),
            )
            regions.append(embedder.embed_images([image.crop(whole_pixels)])[0])
        references = [
            embedder.embed_images(
                [
                    Image.open(p).convert("RGB")
                    for p in sorted((setup["concepts"] / row["scene"] / c).glob("*.*g"))
                ]
            )
            for c in row["concepts"]
        ]
        assert [len(r) for r in references] == [len(CONCEPTS[(row["scene"], c)]) for c in row["concepts"]]
        concept_scores = cp_clip_scores(regions, references)
        assert row["concept_scores"] == pytest.approx(concept_scores, abs=1e-5)
        assert row["detected"] == [r is not None for r in regions]
        recomputed_cp.append(np.mean(concept_scores))
        text = embedder.embed_texts([row["caption"]])[0]
        recomputed_ti.append(float(embedder.embed_images([image])[0] @ text))
    assert scores["cp_clip"] == pytest.approx(np.mean(recomputed_cp), abs=1e-5)
    assert scores["ti_clip"] == pytest.approx(np.mean(recomputed_ti), abs=1e-5)
    # the data exercise both a detected and an undetected concept (which scores 0)
    detected = [d for r in scored for d in r["detected"]]
    assert True in detected and False in detected
    assert all(
        s == 0.0 for r in scored for s, d in zip(r["concept_scores"], r["detected"], strict=True) if not d
    )
    rates = scores["detection_rate"]
    assert sum(v["n_detected"] for v in rates.values()) == sum(detected)
    assert scores["details"]["cp_clip"]["n_detected"] == sum(detected)
    assert scores["n_references"] == {f"{s}/{c}": len(v) for (s, c), v in CONCEPTS.items()}
    prov = scores["provenance"]
    assert (
        prov["detector"]["model"] == str(setup["owl"]) and prov["clip_model"] == f"local-dir:{setup['clip']}"
    )
    assert prov["concepts"] == str(setup["concepts"]) and prov["detector_weights_sha256"]


def test_rerun_resumes_without_recomputing(setup, first_run, monkeypatch, capsys) -> None:
    out = setup["root"] / "scores"
    before = {p.name: p.read_bytes() for p in out.glob("*/part-*.parquet")}
    per_image = (out / "per_image.parquet").read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded on a resumed run")

    monkeypatch.setattr("benchmark.compositing.workers.ObjectDetector.__init__", refuse)
    monkeypatch.setattr("benchmark.metrics.clip_embedding.CLIPEmbedder.__init__", refuse)
    again = run_job(setup, out)
    assert {p.name: p.read_bytes() for p in out.glob("*/part-*.parquet")} == before
    assert pq.read_table(out / "per_image.parquet").equals(pq.read_table(io.BytesIO(per_image)))
    assert {k: v for k, v in again.items() if k != "provenance"} == {
        k: v for k, v in first_run.items() if k != "provenance"
    }
    assert "CP-CLIP" in capsys.readouterr().out
    with pytest.raises(RunIdentityError):  # other settings on the same output are refused
        run_job(setup, out, "--detector.threshold", "0.2")


def test_two_ray_actors_give_the_scores_of_the_in_process_run(ray_local, setup, first_run, tmp_path) -> None:
    """Two actors, one image per chunk, against the in-process run (the first run): the same stored rows and
    numbers. (A one-actor run is left out for time: each Ray run costs about 25 s here.)"""
    two = run_job(setup, tmp_path / "two", "--num-actors", "2", "--chunk-size", "1")
    for key in ("cp_clip", "ti_clip", "n_images", "n_failed", "failed_by_stage", "detection_rate", "details"):
        assert two[key] == first_run[key], key
    ours, theirs = (
        pq.read_table(d / "per_image.parquet") for d in (tmp_path / "two", setup["root"] / "scores")
    )
    assert ours.equals(theirs)
