"""`SDXLSGPipeline`: load a trained SG encoder, generate from scene graphs, save and reload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from laion_sg.offline.fixtures import write_fixture_dataset  # noqa: E402
from schemas import SceneGraph
from training.pipeline import SDXLSGPipeline  # noqa: E402
from training.settings import TrainConfig  # noqa: E402
from training.sg_features import encode_graphs  # noqa: E402
from training.sg_graphs import prepare_graphs  # noqa: E402
from training.train import train_local  # noqa: E402

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


NEGATIVE = SceneGraph.from_json(
    {
        "objects": [{"id": 0, "name": "cat", "attributes": ["blurry"]}, {"id": 1, "name": "sofa"}],
        "relations": [{"subject": 0, "predicate": "sitting on", "object": 1}],
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
        input=str(write_fixture_dataset(root / "data")),
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


def encoder_oracle(pipeline: SDXLSGPipeline, graph: SceneGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) of one graph straight through tokenizers -> text encoders -> SG encoder,
    without the pipeline's own `encode_scene_graphs`."""
    inputs = prepare_graphs([graph], [pipeline.tokenizer, pipeline.tokenizer_2])
    with torch.no_grad():
        return pipeline.sg_encoder(encode_graphs(inputs, [pipeline.text_encoder, pipeline.text_encoder_2]))


@contextmanager
def unet_conditioning(pipeline: SDXLSGPipeline) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Records (encoder_hidden_states, text_embeds) of every UNet call: what the denoiser is really given."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs) -> None:
        pooled = kwargs["added_cond_kwargs"]["text_embeds"]
        calls.append((kwargs["encoder_hidden_states"].clone(), pooled.clone()))

    handle = pipeline.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def gate(pipeline: SDXLSGPipeline, alpha: float) -> Iterator[None]:
    """Sets the SG encoder's gate alpha for the block, then restores the trained value."""
    saved = pipeline.sg_encoder.alpha.detach().clone()
    with torch.no_grad():
        pipeline.sg_encoder.alpha.fill_(alpha)
    try:
        yield
    finally:
        with torch.no_grad():
            pipeline.sg_encoder.alpha.copy_(saved)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


SDXL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def test_final_directory_is_a_diffusers_pipeline_folder(trained: Path, tiny_models_dir: Path) -> None:
    """``final`` is a standard pipeline folder: model_index.json names every component (the SG encoder by its
    module and class), SDXL's parts are the base model's own weights, the SG encoder the last checkpoint's."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    index = json.loads((trained / "model_index.json").read_text())
    assert index["_class_name"] == "SDXLSGPipeline"
    assert index["sg_encoder"] == ["training.sg_encoder", "SGEncoder"]
    base_index = json.loads((tiny_models_dir / "sdxl" / "model_index.json").read_text())
    components = {k for k, v in base_index.items() if isinstance(v, list) and v[0] is not None}
    assert components == set(SDXL_PARTS) | {"tokenizer", "tokenizer_2", "scheduler"}
    assert all(index[k] == base_index[k] for k in components) and all((trained / k).is_dir() for k in components)
    files = {p.name for p in (trained / "sg_encoder").iterdir()}
    assert files == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert not list(trained.rglob("*.bin")) and not list(trained.rglob("*.pt"))
    base = StableDiffusionXLPipeline.from_pretrained(tiny_models_dir / "sdxl")
    saved = {k: load_file(str(next((trained / k).glob("*.safetensors")))) for k in SDXL_PARTS}
    for name in SDXL_PARTS:
        expected = getattr(base, name).state_dict()
        assert all(torch.equal(saved[name][k], expected[k]) for k in expected), name
    checkpoint = sorted((trained.parent / "checkpoints").glob("step_*"))[-1]
    weights = Path("sg_encoder") / "diffusion_pytorch_model.safetensors"
    written, exported = load_file(str(checkpoint / weights)), load_file(str(trained / weights))
    assert written.keys() == exported.keys() and all(torch.equal(written[k], exported[k]) for k in written)


def test_from_pretrained_loads_every_component_offline(
    trained: Path, pipe: SDXLSGPipeline, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    import huggingface_hub
    from diffusers import StableDiffusionXLPipeline

    from training import SGEncoder

    loaded = SDXLSGPipeline.from_pretrained(trained)
    assert isinstance(loaded.sg_encoder, SGEncoder) and set(loaded.components) == set(pipe.components)
    plain = StableDiffusionXLPipeline.from_pretrained(trained)  # the frozen SDXL alone: sg_encoder is ignored
    assert type(plain) is StableDiffusionXLPipeline and "sg_encoder" not in plain.components
    for name in SDXL_PARTS:
        assert same_weights(getattr(plain, name), getattr(loaded, name)), name
    assert same_weights(loaded.sg_encoder, pipe.sg_encoder) and float(loaded.sg_encoder.alpha.detach()) != 0.0

    fetched = []  # a hub id goes through snapshot_download (here a stand-in returning the local folder)

    def snapshot_download(repo_id: str, **kwargs) -> str:
        fetched.append((repo_id, kwargs))
        return str(trained)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from_hub = SDXLSGPipeline.from_pretrained("someone/sdxl-sg", revision="v1")
    assert [(repo, kwargs["revision"]) for repo, kwargs in fetched] == [("someone/sdxl-sg", "v1")]
    assert same_weights(from_hub.sg_encoder, pipe.sg_encoder) and same_weights(from_hub.unet, pipe.unet)


def test_diffusion_pipeline_custom_pipeline_route(
    trained: Path, pipe: SDXLSGPipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    """diffusers' documented route for a pipeline class outside diffusers: `DiffusionPipeline.from_pretrained`
    with `custom_pipeline=` the file that defines it. It gives the same pipeline: same components and weights,
    the same images."""
    import sys

    import diffusers.utils.dynamic_modules_utils as dynamic
    from diffusers import DiffusionPipeline

    import training.pipeline

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where diffusers copies the code
    monkeypatch.setattr(sys, "path", list(sys.path))
    loaded = DiffusionPipeline.from_pretrained(trained, custom_pipeline=training.pipeline.__file__, trust_remote_code=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "SDXLSGPipeline" and set(loaded.components) == set(pipe.components)
    assert all(same_weights(getattr(loaded, k), getattr(pipe, k)) for k in (*SDXL_PARTS, "sg_encoder"))
    assert np.array_equal(generate(loaded, scene_graph=GRAPH), generate(pipe, scene_graph=GRAPH))


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
    prompt; SDXL-SG (one node per object, messages across triples) must not, once the gate alpha is open.
    With alpha = 0 the two are identical (the gate really gates); the graph term is linear in alpha."""
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

    embeds, pooled, images = {}, {}, {}
    for alpha in (0.0, 1.0, 20.0):  # 20: the tiny random UNet barely reacts to small conditioning changes
        with gate(pipe, alpha):
            for name, graph in (("shared", shared), ("separate", separate)):
                embeds[name, alpha], pooled[name, alpha] = encoder_oracle(pipe, graph)
                if alpha != 1.0:
                    images[name, alpha] = generate(pipe, scene_graph=graph)
    # alpha = 0: SDXL's own conditioning of the common text, identical for both graphs (pooled is always so).
    assert torch.equal(embeds["shared", 0.0], embeds["separate", 0.0])
    assert all(torch.equal(p, pooled["shared", 0.0]) for p in pooled.values())
    assert np.array_equal(images["shared", 0.0], images["separate", 0.0])
    # alpha != 0: a graph term, linear in alpha, that depends on the structure and reaches the image.
    delta = {name: embeds[name, 1.0] - embeds[name, 0.0] for name in ("shared", "separate")}
    for name, graph_term in delta.items():
        assert float(graph_term.abs().max()) > 0.1
        scaled = embeds[name, 20.0] - embeds[name, 0.0]
        torch.testing.assert_close(scaled, 20 * graph_term, rtol=1e-4, atol=1e-4)
        assert mean_abs_diff(images[name, 20.0], images[name, 0.0]) > 1e-2
    assert float((delta["shared"] - delta["separate"]).abs().max()) > 5e-3
    assert mean_abs_diff(images["shared", 20.0], images["separate", 20.0]) > 1e-4


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
    for value in (GRAPH.to_json(), GRAPH.to_dict(), GRAPH.to_laion_sg(img_id="1")):  # read by schemas.as_scene_graph
        assert np.array_equal(generate(pipe, scene_graph=value), reference)


def test_batch_guidance_and_negative_graph(pipe: SDXLSGPipeline) -> None:
    images = generate(pipe, scene_graph=[GRAPH, with_relation(GRAPH, 1, "right of")], guidance_scale=5.0,
                      negative_scene_graph=SceneGraph())  # fmt: skip
    assert images.shape == (2, 64, 64, 3) and not np.array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="scene_graph"):
        generate(pipe, prompt="a dog")


def test_negative_scene_graph_is_the_unconditional_branch(pipe: SDXLSGPipeline) -> None:
    """The UNet's unconditional half must be the SG encoder's output for the negative graph (computed here
    without the pipeline's helper), for every row and step; and it must change the image."""
    graphs = [GRAPH, with_relation(GRAPH, 1, "right of")]
    negative, negative_pooled = encoder_oracle(pipe, NEGATIVE)
    empty, _ = encoder_oracle(pipe, SceneGraph())
    assert float((negative - empty).abs().max()) > 0.1 and float(negative.abs().max()) > 0.1  # a real oracle
    positives = [encoder_oracle(pipe, g) for g in graphs]
    with unet_conditioning(pipe) as calls:
        images = generate(pipe, scene_graph=graphs, guidance_scale=5.0, negative_scene_graph=NEGATIVE)
    assert len(calls) == 2  # one UNet call per step, unconditional and conditional rows batched
    for hidden, text_embeds in calls:
        assert hidden.shape[0] == text_embeds.shape[0] == 4
        for row in (0, 1):
            torch.testing.assert_close(hidden[row], negative[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(text_embeds[row], negative_pooled[0], rtol=1e-5, atol=1e-5)
        for row, (embeds, pooled) in enumerate(positives, start=2):
            torch.testing.assert_close(hidden[row], embeds[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(text_embeds[row], pooled[0], rtol=1e-5, atol=1e-5)
    without = generate(pipe, scene_graph=graphs, guidance_scale=5.0)  # SDXL's zeros as the negative
    for row in (0, 1):
        assert mean_abs_diff(images[row], without[row]) > 3e-3


def test_save_with_components_and_reload(pipe: SDXLSGPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "model_index.json").read_text())["sg_encoder"][1] == "SGEncoder"
    saved_encoder = tmp_path / "full" / "sg_encoder" / "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "full" / "unet").is_dir() and saved_encoder.exists()
    assert not list((tmp_path / "full").rglob("*.bin")) and not list((tmp_path / "full").rglob("*.pt"))
    reloaded = SDXLSGPipeline.from_pretrained(tmp_path / "full")
    reloaded.set_progress_bar_config(disable=True)
    assert np.array_equal(generate(reloaded, scene_graph=GRAPH), generate(pipe, scene_graph=GRAPH))
