"""`SDXLSGPipeline`: load a trained SG encoder, generate from scene graphs, save and reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from schemas import SceneGraph
from training.fixtures import write_fixture_dataset  # noqa: E402
from training.pipeline import SDXLSGPipeline, as_scene_graph  # noqa: E402
from training.train import TrainConfig, train_local  # noqa: E402

GRAPH = SceneGraph.from_json(
    {
        "objects": [
            {"id": 0, "name": "person", "attributes": ["young"]},
            {"id": 1, "name": "umbrella", "attributes": ["red"]},
            {"id": 2, "name": "dog", "attributes": []},
        ],
        "relations": [
            {"subject": 0, "predicate": "holding", "object": 1},
            {"subject": 2, "predicate": "left of", "object": 0},
        ],
    }
)


def with_relation(graph: SceneGraph, index: int, predicate: str) -> SceneGraph:
    edited = SceneGraph.from_json(graph.to_json())
    edited.relations[index].predicate = predicate
    return edited


@pytest.fixture(scope="module")
def trained(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 local training steps; returns the exported ``final`` directory."""
    root = tmp_path_factory.mktemp("sdxl_sg_run")
    config = TrainConfig(
        data=str(write_fixture_dataset(root / "data")),
        model=str(tiny_models_dir / "sdxl"),
        output=str(root / "run"),
        max_steps=3,
        batch_size=2,
        resolution=64,
        warmup_steps=0,
        checkpoint_every=3,
        val_every=0,
        encoder={"hidden_dim": 16, "mlp_hidden_dim": 32},
    )
    train_local(config)
    return root / "run" / "final"


@pytest.fixture(scope="module")
def pipe(trained: Path) -> SDXLSGPipeline:
    pipeline = SDXLSGPipeline.from_pretrained(trained)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipeline, seed: int = 0, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    out = pipeline(height=64, width=64, num_inference_steps=2, generator=generator, output_type="np", **kwargs)
    return out.images


def test_final_directory_references_the_base_model(trained: Path, tiny_models_dir: Path) -> None:
    manifest = json.loads((trained / "sdxl_sg.json").read_text())
    assert manifest["base_model"] == str((tiny_models_dir / "sdxl").resolve())
    assert sorted(p.name for p in (trained / "sg_encoder").iterdir()) == ["config.json", "model.safetensors"]


def test_trained_pipeline_is_deterministic_and_graph_sensitive(pipe: SDXLSGPipeline) -> None:
    """Uses the trained encoder: alpha starts at 0 (plain SDXL on the SG text), and 3 steps open it to ~1e-3,
    so the graph branch contributes a small but real part of the conditioning."""
    assert float(pipe.sg_encoder.alpha) != 0.0
    first, second = generate(pipe, scene_graph=GRAPH), generate(pipe, scene_graph=GRAPH)
    assert first.shape == (1, 64, 64, 3) and np.array_equal(first, second)
    assert not np.array_equal(generate(pipe, seed=1, scene_graph=GRAPH), first)
    assert not np.array_equal(generate(pipe, scene_graph=with_relation(GRAPH, 0, "kicking")), first)


def test_graph_structure_matters_beyond_the_text(pipe: SDXLSGPipeline) -> None:
    """Two graphs with the same SG text: one cup held by two men, or one cup each. Plain SDXL sees the same
    prompt; SDXL-SG (one node per object, messages across triples) must not."""
    objects = [{"id": 0, "name": "man", "attributes": ["young"]}, {"id": 1, "name": "cup", "attributes": []},
               {"id": 2, "name": "man", "attributes": ["old"]}, {"id": 3, "name": "cup", "attributes": []}]  # fmt: skip
    shared = SceneGraph.from_json(
        {"objects": objects[:3], "relations": [{"subject": 0, "predicate": "holding", "object": 1},
                                               {"subject": 2, "predicate": "holding", "object": 1}]}  # fmt: skip
    )
    separate = SceneGraph.from_json(
        {"objects": objects, "relations": [{"subject": 0, "predicate": "holding", "object": 1},
                                           {"subject": 2, "predicate": "holding", "object": 3}]}  # fmt: skip
    )
    assert shared.to_text() == separate.to_text() == "young man holding cup, old man holding cup"
    assert not np.array_equal(generate(pipe, scene_graph=shared), generate(pipe, scene_graph=separate))


def test_alpha_zero_equals_plain_sdxl_on_the_sg_text(pipe: SDXLSGPipeline) -> None:
    from diffusers import StableDiffusionXLPipeline

    plain = StableDiffusionXLPipeline(**{k: v for k, v in pipe.components.items() if k != "sg_encoder"})
    plain.set_progress_bar_config(disable=True)
    alpha = float(pipe.sg_encoder.alpha)
    try:
        with torch.no_grad():
            pipe.sg_encoder.alpha.fill_(0.0)
        assert np.array_equal(generate(pipe, scene_graph=GRAPH), generate(plain, prompt=GRAPH.to_text()))
    finally:
        with torch.no_grad():
            pipe.sg_encoder.alpha.fill_(alpha)


def test_graph_inputs_in_every_supported_shape(pipe: SDXLSGPipeline) -> None:
    reference = generate(pipe, scene_graph=GRAPH)
    for value in (GRAPH.to_json(), GRAPH.to_dict(), GRAPH.to_laion_sg(img_id="1")):
        assert as_scene_graph(value).to_text() == GRAPH.to_text()
        assert np.array_equal(generate(pipe, scene_graph=value), reference)


def test_batch_guidance_and_negative_graph(pipe: SDXLSGPipeline) -> None:
    images = generate(pipe, scene_graph=[GRAPH, with_relation(GRAPH, 1, "right of")], guidance_scale=5.0,
                      negative_scene_graph=SceneGraph())  # fmt: skip
    assert images.shape == (2, 64, 64, 3) and not np.array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="scene_graph"):
        generate(pipe, prompt="a dog")


def test_save_with_components_and_reload(pipe: SDXLSGPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "sdxl_sg.json").read_text())["base_model"] is None
    assert (tmp_path / "full" / "unet").is_dir() and (tmp_path / "full" / "sg_encoder" / "model.safetensors").exists()
    assert not list((tmp_path / "full").rglob("*.bin")) and not list((tmp_path / "full").rglob("*.pt"))
    reloaded = SDXLSGPipeline.from_pretrained(tmp_path / "full")
    reloaded.set_progress_bar_config(disable=True)
    assert np.array_equal(generate(reloaded, scene_graph=GRAPH), generate(pipe, scene_graph=GRAPH))
