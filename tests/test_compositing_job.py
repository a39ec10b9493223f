"""The compositing job (Gen4Gen) end to end on tiny stand-ins: plan, layout, masks, composite, inpaint, scene
graphs, output rows, resume and the run-identity guard.

The layout step runs twice: once through the fixed engine with hand-made layouts (a dry-run layout, so the mask and
composite steps have boxes to work with: a tiny random model's boxes are unusable) and once through the tiny
Qwen2.5-VL with the hf engine (the real path: every row must come out with its reason).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from laion_sg.offline.fixtures import write_concept_scenes, write_layout_answers
from pipelines.compositing.job import CompositingConfigError, output_schema, run
from pipelines.compositing.layout import overlap
from pipelines.compositing.layout_task import layout_request, layout_task
from pipelines.compositing.plan import (
    Background,
    concept_phrase,
    plan_compositions,
    read_backgrounds,
    scan_scenes,
)
from pipelines.compositing.settings import CompositingSettings

PER_SCENE = 2
SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compositing")
    scenes = write_concept_scenes(root / "scenes")
    (scenes / "attic" / "ghost").mkdir(parents=True)
    (scenes / "attic" / "ghost" / "broken.png").write_bytes(b"not an image")
    return {
        "root": root,
        "scenes": scenes,
        "answers": write_layout_answers(scenes, PER_SCENE, root / "layouts.jsonl"),
        "qwen": tiny_models_dir / "qwen2_5_vl",
        "clipseg": tiny_models_dir / "clipseg",
        "sdxl": tiny_models_dir / "sdxl",
    }


def _settings(setup: dict[str, Path], output: Path, **overrides) -> CompositingSettings:
    values = {
        "input": str(setup["scenes"]),
        "output": str(output),
        "model": str(setup["qwen"]),
        "layout_engine": "fixed",
        "layout_model": str(setup["answers"]),
        "compositions_per_scene": PER_SCENE,
        "rows_per_shard": 4,
        "masks": {"model": str(setup["clipseg"])},
        "compositor": {"model": str(setup["sdxl"]), "inpaint_model": None, "size": SIZE, "steps": 2},
        "engine_options": {"max_new_tokens": 64},
    } | overrides
    return CompositingSettings.model_validate(values)


def _rows(output: Path) -> list[dict]:
    return pq.read_table(output / "data", schema=output_schema()).to_pylist()


def test_plan_is_deterministic_and_draws_from_each_concept(setup):
    scenes = scan_scenes(setup["scenes"])
    assert [s.name for s in scenes] == ["attic", "desk", "yard"]
    plan = plan_compositions(scenes, 3, seed=7)
    assert plan == plan_compositions(scenes, 3, seed=7)
    assert len({c.key for c in plan}) == 9
    assert [c.key for c in plan] != [c.key for c in plan_compositions(scenes, 3, seed=8)]
    for c in plan:
        assert [Path(r).parts[:2] for r in c.references] == [(c.scene, name) for name in c.concepts]
    assert concept_phrase("red_tea-pot") == "red tea pot"


def test_layout_request_carries_each_rows_concepts_as_the_schema():
    request = layout_task().request(layout_request(["cat", "red teapot"], "a kitchen"))
    boxes = request.schema["properties"]["boxes"]
    assert boxes["required"] == ["cat", "red teapot"] and boxes["additionalProperties"] is False
    assert "cat, red teapot" in request.user and "a kitchen" in request.user and "512 x 512" in request.user


@pytest.mark.slow
def test_compositing_job_end_to_end(setup, tmp_path, ray_local):
    """Every planned composition exactly once with a status; boxes inside the canvas and within the overlap
    bound; composites readable with `datasets`; a re-run resumes; recomputing a shard gives identical bytes."""
    import datasets

    output = tmp_path / "out"
    config = _settings(setup, output)
    summary = run(config)
    plan = plan_compositions(scan_scenes(setup["scenes"]), PER_SCENE, seed=0)
    rows = _rows(output)
    assert sorted(r["key"] for r in rows) == sorted(c.key for c in plan)
    assert summary["rows_written"] == len(plan) == 6
    by_scene = {}
    for row in rows:
        by_scene.setdefault(row["scene"], []).append(row)

    for row in by_scene["attic"]:  # the unreadable reference image fails its row, with the reason
        assert row["compositing"]["status"] == "failed" and row["compositing"]["stage"] == "mask"
        assert row["compositing"]["error"].startswith("unreadable reference image")
        assert row["image"] is None and row["annotation"]["status"] == "failed"
        assert row["annotation"]["error"].startswith("no image")

    answers = [json.loads(line) for line in setup["answers"].read_text().splitlines()]
    composed = [r for r in rows if r["compositing"]["status"] == "ok"]
    assert composed, summary
    for row in rows:
        if row["scene"] == "attic":
            continue
        if row["compositing"]["status"] == "failed":  # a random segmenter may find no object: then it says so
            assert row["compositing"]["stage"] == "mask", row["compositing"]
            assert row["compositing"]["error"].split(":")[0] in {"empty mask", "whole frame"}
            continue
        # the boxes: the hand-made layout scaled from 512 to 64 pixels (exactly: by 1/8), inside the canvas,
        # overlap bounded
        answer = answers[[c.key for c in plan].index(row["key"])]["boxes"]
        expected = {p: (x / 8, y / 8, (x + w) / 8, (y + h) / 8) for p, (x, y, w, h) in answer.items()}
        got = {b["concept"]: (b["x0"], b["y0"], b["x1"], b["y1"]) for b in row["boxes"]}
        assert got == expected and list(got) == [concept_phrase(c) for c in row["concepts"]]
        for box in row["boxes"]:
            assert 0 <= box["x0"] < box["x1"] <= SIZE and 0 <= box["y0"] < box["y1"] <= SIZE
        assert all(overlap(a, b) <= config.max_overlap for a, b in _box_pairs(row["boxes"]))
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert image.size == (SIZE, SIZE) and (row["width"], row["height"]) == (SIZE, SIZE)
        assert row["caption"].endswith(", a plain wooden table in a bright room")
        assert row["annotation"]["task"] == "scene_graph" and row["annotation"]["model"] == str(setup["qwen"])
        assert (row["scene_graph"] is None) == (row["annotation"]["status"] == "failed")

    loaded = datasets.load_dataset("parquet", data_files=str(output / "data" / "*.parquet"), split="train")
    assert loaded.num_rows == 6
    first = next(r for r in loaded if r["image"] is not None)
    assert first["image"].size == (SIZE, SIZE) and first["boxes"][0]["concept"]

    # resume: nothing is redone, files unchanged
    before = {p.name: p.read_bytes() for p in (output / "data").glob("*.parquet")}
    assert run(config)["shards_skipped"] == 2
    assert {p.name: p.read_bytes() for p in (output / "data").glob("*.parquet")} == before
    # a shard lost whole (composites and rows) is recomputed to the same rows, images byte for byte (only the
    # annotation's timing differs)
    rows_before = _comparable(_rows(output))
    for directory in ("data", "composites"):
        (output / directory / "00001.parquet").unlink()
    shutil.rmtree(output / "annotations")
    run(config)
    assert _comparable(_rows(output)) == rows_before
    # other settings into the same output are refused
    with pytest.raises(CompositingConfigError, match="seed"):
        run(_settings(setup, output, seed=1))


def _comparable(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["annotation"]["seconds"] = None
    return sorted(rows, key=lambda row: row["key"])


def _box_pairs(boxes):
    from pipelines.compositing.layout import Box

    objs = [Box(**b) for b in boxes]
    return [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :]]


@pytest.mark.slow
def test_model_layouts_that_fail_are_reported_per_row(setup, tmp_path, ray_local):
    """The layout through the tiny Qwen2.5-VL (hf engine, per-row schema): its boxes are unusable, and every row
    comes out failed at the layout step with the checker's reason, none lost."""
    output = tmp_path / "out"
    summary = run(_settings(setup, output, layout_engine=None, layout_model=None, compositions_per_scene=1))
    rows = _rows(output)
    assert len(rows) == summary["rows_written"] == 3
    for row in rows:
        assert row["compositing"]["stage"] == "layout" and row["image"] is None
        reason = row["compositing"]["error"].split(":")[
            0
        ]  # the answer checker's or the JSON reader's category
        assert reason in {"too small", "overlap", "outside the canvas", "truncated JSON"}, row["compositing"]
    assert sum(summary["failed"].values()) == 3


def test_backgrounds_come_from_a_prompt_file_or_an_image_folder(setup, tmp_path):
    prompts = tmp_path / "backgrounds.txt"
    prompts.write_text("a sunny beach\n\n  a   snowy   forest \n")
    assert read_backgrounds(prompts) == [
        Background(prompt="a sunny beach"),
        Background(prompt="a snowy forest"),
    ]
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "sub/a.jpg", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert read_backgrounds(folder) == [Background(image="b.png"), Background(image="sub/a.jpg")]
    assert read_backgrounds(None) == []
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no images or prompts"):
        read_backgrounds(tmp_path / "empty.txt")
    # each composition draws one, deterministically, and its key depends on it
    scenes = scan_scenes(setup["scenes"])
    plan = plan_compositions(scenes, 4, seed=0, backgrounds=read_backgrounds(prompts))
    assert plan == plan_compositions(scenes, 4, seed=0, backgrounds=read_backgrounds(prompts))
    assert {c.background.prompt for c in plan} == {"a sunny beach", "a snowy forest"}
    assert {c.key for c in plan}.isdisjoint(c.key for c in plan_compositions(scenes, 4, seed=0))


def test_composite_stage_uses_a_given_background_and_generates_one_otherwise(setup, monkeypatch):
    """The composite stage in this process: a row with a background image never asks SDXL for a background;
    a row without one gets the background generated from the engine's description."""

    from pipelines.compositing import stages

    asked = []
    original = stages.Compositor.background
    monkeypatch.setattr(
        stages.Compositor,
        "background",
        lambda self, prompt, seed: asked.append(prompt) or original(self, prompt, seed),
    )
    given = setup["root"] / "background.png"
    Image.new("RGB", (80, 48), (0, 90, 200)).save(given)
    cutout = io.BytesIO()
    Image.new("RGBA", (16, 16), (255, 0, 0, 255)).save(cutout, format="PNG")
    box = {"concept": "cat", "x0": 8.0, "y0": 8.0, "x1": 40.0, "y1": 40.0}
    common = {
        "phrases": ["cat"],
        "boxes": [box],
        "caption": "a cat, a field",
        "seed": 3,
        "cutouts": [cutout.getvalue()],
    }
    rows = [
        {"key": "given", "background_prompt": "a field", "background_image": str(given), **common},
        {"key": "drawn", "background_prompt": "a field of flowers", **common},
        {"key": "broken", "background_prompt": "a field", "background_image": str(setup["root"]), **common},
        {
            "key": "bomb",
            "background_prompt": "a field",
            "background_image": str(_bomb(setup["root"])),
            **common,
        },
    ]
    stage = stages.Compose(
        CompositingSettings.model_validate(
            {
                "input": ".",
                "output": ".",
                "compositor": {"model": str(setup["sdxl"]), "inpaint_model": None, "size": SIZE, "steps": 2},
            }
        ).compositor,
        cpus=1,
    )
    out = {r["key"]: r for r in stage(stages.arrow_table(rows, stages.STAGE_SCHEMA)).to_pylist()}
    assert asked == ["a field of flowers"]
    for key in ("given", "drawn"):
        image = Image.open(io.BytesIO(out[key]["png"]))
        assert image.size == (SIZE, SIZE) and out[key]["error"] is None
        assert image.getpixel((24, 24)) == (255, 0, 0)  # the concept's pixels are kept
    assert out["broken"]["png"] is None and out["broken"]["stage"] == "composite"
    assert out["broken"]["error"].startswith("unreadable background image: IsADirectoryError")
    assert out["bomb"]["png"] is None and "decompression bomb" in out["bomb"]["error"]


def _bomb(folder: Path) -> Path:
    """A BMP header claiming 20,000 x 5,000 pixels (the awkward-image corpus's decompression bomb)."""
    from awkward_images import AWKWARD_IMAGES

    path = folder / "bomb_20000x5000.bmp"
    path.write_bytes(AWKWARD_IMAGES["bomb_20000x5000.bmp"][0]())
    return path


def test_mask_stage_reports_unreadable_and_bomb_references_per_row(setup):
    """The mask stage in this process: a reference that is not an image or is a decompression bomb fails its
    row with the reason; the other rows are masked."""
    from pipelines.compositing import stages
    from pipelines.compositing.masks import MaskSettings

    good = next(setup["scenes"].glob("desk/coffee/*.png"))
    rows = [
        {"key": "good", "references": [str(good)], "phrases": ["coffee"]},
        {"key": "bomb", "references": [str(good), str(_bomb(setup["root"]))], "phrases": ["coffee", "bomb"]},
        {"key": "text", "references": [str(setup["answers"])], "phrases": ["coffee"]},
    ]
    stage = stages.Segment(
        MaskSettings(model=str(setup["clipseg"]), min_fraction=0.0, max_fraction=1.0), cpus=1
    )
    out = {r["key"]: r for r in stage(stages.arrow_table(rows, stages.STAGE_SCHEMA)).to_pylist()}
    assert out["good"]["error"] is None and len(out["good"]["cutouts"]) == 1
    assert out["bomb"]["error"].startswith(
        "unreadable reference image bomb_20000x5000.bmp: decompression bomb"
    )
    assert out["text"]["error"].startswith("unreadable reference image layouts.jsonl:")
    assert out["bomb"]["stage"] == out["text"]["stage"] == "mask" and out["bomb"]["cutouts"] is None


def test_main_refuses_a_bad_input_with_exit_code_2(tmp_path, capsys):
    from pipelines.compositing import main

    (tmp_path / "scenes" / "desk" / "cat").mkdir(parents=True)  # a concept folder without images
    code = main(["--input", str(tmp_path / "scenes"), "--output", str(tmp_path / "out")])
    assert code == 2 and "desk/cat: no images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--layout-engine",
        "--backgrounds",
        "--masks.model",
        "--compositor.inpaint-model",
        "--max-overlap",
    ):
        assert flag in help_text
