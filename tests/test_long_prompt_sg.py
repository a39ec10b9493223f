"""Long-prompt conditioning of SDXL-SG: the graph's SG text in 75-token windows (`prepare_graphs(window=...)`,
`SDXLSGPipeline.encode_scene_graphs(long_prompt=True)`), on the tiny random SDXL with an SG encoder.

Oracles: the plain (77-token) encoding, which the windowed one must equal exactly for a graph whose text fits one
window, and must extend (same first window) for a longer one; which tokens may change when a late object does."""

from __future__ import annotations

import pytest
import torch

from schemas import SceneGraph, SGObject, SGRelation
from training.sg_graphs import prepare_graphs

L = 77


@pytest.fixture(scope="module")
def pipe(tiny_models_dir):
    from diffusers import StableDiffusionXLPipeline

    from training.pipeline import SDXLSGPipeline
    from training.sg_encoder import SGEncoder

    sdxl = StableDiffusionXLPipeline.from_pretrained(tiny_models_dir / "sdxl")
    torch.manual_seed(0)
    encoder = SGEncoder.for_text_encoders(
        sdxl.text_encoder, sdxl.text_encoder_2, hidden_dim=16, mlp_hidden_dim=16, num_layers=1
    )
    with torch.no_grad():
        encoder.alpha.fill_(0.5)  # an open gate: the graph network's output reaches the tokens
    pipe = SDXLSGPipeline.from_base(tiny_models_dir / "sdxl", encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_graph() -> SceneGraph:
    return SceneGraph([SGObject(0, "cat", ["black"]), SGObject(1, "sofa", [])], [SGRelation(0, "on", 1)])


def long_graph(last: str = "dog") -> SceneGraph:
    """24 objects in a chain (its SG text passes 75 tokens), the last one named `last`."""
    names = ["cat"] * 23 + [last]
    objects = [SGObject(i, name, ["red"]) for i, name in enumerate(names)]
    return SceneGraph(objects, [SGRelation(i, "near", i + 1) for i in range(len(names) - 1)])


def tokenizers(pipe):
    return [pipe.tokenizer, pipe.tokenizer_2]


def test_a_graph_in_one_window_prepares_and_encodes_exactly_as_the_plain_layout(pipe):
    plain = prepare_graphs([small_graph()], tokenizers(pipe))
    windowed = prepare_graphs([small_graph()], tokenizers(pipe), window=L - 2)
    for a, b in zip(plain.text_ids, windowed.text_ids, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(plain.index.token_index, windowed.index.token_index)
    assert torch.equal(plain.index.token_source, windowed.index.token_source)
    embeds, pooled = pipe.encode_scene_graphs(small_graph())
    long_embeds, long_pooled = pipe.encode_scene_graphs(small_graph(), long_prompt=True)
    assert torch.equal(embeds, long_embeds) and torch.equal(pooled, long_pooled)


def test_a_long_graph_keeps_its_tokens_beyond_77(pipe):
    text_tokens = len(pipe.tokenizer(long_graph().to_text(), add_special_tokens=False).input_ids)
    assert text_tokens > L - 2  # the case under test
    windows = -(-text_tokens // (L - 2))
    plain, plain_pooled = pipe.encode_scene_graphs(long_graph())
    embeds, pooled = pipe.encode_scene_graphs(long_graph(), long_prompt=True)
    assert plain.shape[1] == L and embeds.shape[1] == windows * L
    # the first window is the plain (truncated) encoding, pooled from it, as for SDXL's long prompts
    assert torch.equal(embeds[:, :L], plain) and torch.equal(pooled, plain_pooled)
    # every token of the text is mapped: the windowed index holds the plain one's tokens and the later ones
    windowed = prepare_graphs([long_graph()], tokenizers(pipe), window=L - 2).index
    truncated = prepare_graphs([long_graph()], tokenizers(pipe)).index
    assert int(windowed.num_tokens) > int(truncated.num_tokens)
    assert torch.equal(windowed.token_index[: int(truncated.num_tokens)], truncated.token_index)
    assert int(windowed.token_index.max()) >= L
    # the last object's name lies beyond the first window: the plain text never sees it, the windows do
    other, _ = pipe.encode_scene_graphs(long_graph("bird"), long_prompt=True)
    late = L * (windows - 1)
    assert not torch.equal(other[:, late:], embeds[:, late:])


def test_negative_graph_and_prompt_share_the_window_count(pipe):
    generator = torch.Generator("cpu").manual_seed(0)
    image = pipe(
        scene_graph=small_graph(),
        negative_scene_graph=long_graph(),
        long_prompt=True,
        num_inference_steps=1,
        height=64,
        width=64,
        generator=generator,
        output_type="np",
    ).images
    assert image.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="negative_scene_graph"):
        pipe(scene_graph=small_graph(), long_prompt=True, negative_prompt="blurry", num_inference_steps=1)


def test_the_sdxl_sg_adapter_generates_with_long_prompt(pipe, tmp_path):
    """The benchmark's sdxl-sg adapter with the setting on: a short graph gives the plain image; a long one an
    image conditioned on all its windows (not the truncated one)."""
    from benchmark.generate import GenerationTask, ImageGenerator
    from schemas import GenerationSettings

    folder = tmp_path / "sdxl_sg"
    pipe.save_pretrained(folder)
    settings = {
        "images_per_sample": 1,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "height": 64,
        "width": 64,
        "seed": 3,
    }
    generator = ImageGenerator("sdxl-sg", str(folder), GenerationSettings(**settings), device="cpu")

    def png(graph: SceneGraph, long_prompt: bool) -> bytes:
        generator.settings = GenerationSettings(**settings, long_prompt=long_prompt)
        task = GenerationTask(key="k", caption="", sg_text=graph.to_text(), scene_graph_json=graph.to_json())
        return generator([task])[0]["png"]

    assert png(small_graph(), True) == png(small_graph(), False)
    assert png(long_graph(), True) != png(long_graph(), False)
