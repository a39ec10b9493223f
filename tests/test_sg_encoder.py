"""The SDXL-SG scene-graph encoder: size, graph indexing, message passing across triples, fusion, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from schemas import SceneGraph
from training.sg_encoder import SGEncoder, main  # noqa: E402
from training.sg_features import SGFeatures, encode_graphs  # noqa: E402
from training.sg_graphs import BatchIndex, GraphIndex, prepare_graphs, text_spans  # noqa: E402
from training.step import load_tokenizers  # noqa: E402

TINY = {"text_dim": 12, "hidden_dim": 8, "mlp_hidden_dim": 16, "num_layers": 5}

# "young man holding red umbrella, red umbrella above brown dog, green tree"
GRAPH = SceneGraph.from_json(
    {
        "objects": [
            {"id": 0, "name": "man", "attributes": ["young"]},
            {"id": 1, "name": "umbrella", "attributes": ["red"]},
            {"id": 2, "name": "dog", "attributes": ["brown"]},
            {"id": 3, "name": "tree", "attributes": ["green"]},
        ],
        "relations": [
            {"subject": 0, "predicate": "holding", "object": 1},
            {"subject": 1, "predicate": "above", "object": 2},
        ],
    }
)


def random_features(indices: list[GraphIndex], width: int = 12, seed: int = 0) -> SGFeatures:
    """Features with random frozen-encoder outputs for hand-built graph indices (no text encoder needed)."""
    generator = torch.Generator().manual_seed(seed)
    nodes = sum(g.num_nodes for g in indices)
    edges = sum(len(g.edges) for g in indices)
    return SGFeatures(
        token_embeds=torch.randn(len(indices), 77, width, generator=generator),
        pooled=torch.randn(len(indices), 6, generator=generator),
        node_feats=torch.randn(nodes, width, generator=generator),
        edge_feats=torch.randn(edges, width, generator=generator),
        index=BatchIndex.merge(indices, 77),
    )


def chain_index() -> GraphIndex:
    """GRAPH's layout by hand: man(0) -holding(4)-> umbrella(1) -above(5)-> dog(2); tree(3) isolated."""
    import numpy as np

    return GraphIndex(
        num_nodes=4,
        edges=np.array([[0, 1], [1, 2]]),
        token_pos=np.array([1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14]),
        token_source=np.array([0, 0, 4, 1, 1, 1, 1, 5, 2, 2, 3, 3]),
    )


def encoder_with_alpha(widths: dict, alpha: float, seed: int = 0) -> SGEncoder:
    torch.manual_seed(seed)
    encoder = SGEncoder(**widths)
    with torch.no_grad():
        encoder.alpha.fill_(alpha)
    return encoder


def test_full_size_parameter_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert SGEncoder().num_parameters() == 14_701_057  # LAION-SG: 14.70M
    assert main(["--count-params"]) == 0
    assert "14,701,057" in capsys.readouterr().out


def test_text_spans_cover_every_phrase_of_the_canonical_text() -> None:
    text, edges, spans = text_spans(GRAPH)
    assert text == GRAPH.to_text() == "young man holding red umbrella, red umbrella above brown dog, green tree"
    assert edges == [(0, 1), (1, 2)]
    phrases = [(text[a:b], source) for a, b, source in spans]
    assert phrases == [
        ("young man", 0),
        ("holding", 4),
        ("red umbrella", 1),
        ("red umbrella", 1),  # the same node at both mentions
        ("above", 5),
        ("brown dog", 2),
        ("green tree", 3),  # isolated objects are kept, attributes too
    ]


def test_prepare_graphs_maps_tokens_to_nodes_and_edges(tiny_models_dir: Path) -> None:
    tokenizers = load_tokenizers(tiny_models_dir / "sdxl")
    inputs = prepare_graphs([GRAPH], tokenizers)
    expected = tokenizers[0](GRAPH.to_text(), padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert inputs.text_ids[0][0].tolist() == expected  # exactly what SDXL's tokenizer gives
    tokens = tokenizers[0].convert_ids_to_tokens(inputs.text_ids[0][0].tolist())
    by_source: dict[int, list[str]] = {}
    for position, source in zip(inputs.index.token_index.tolist(), inputs.index.token_source.tolist(), strict=True):
        by_source.setdefault(source, []).append(tokens[position])
    assert by_source == {
        0: ["young</w>", "man</w>"],
        1: ["red</w>", "umbrella</w>"] * 2,
        2: ["brown</w>", "dog</w>"],
        3: ["green</w>", "tree</w>"],
        4: ["holding</w>"],
        5: ["above</w>"],
    }
    assert inputs.index.edges.tolist() == [[0, 1], [1, 2]]
    assert len(inputs.node_phrase) == 4 and len(inputs.edge_phrase) == 2


def test_frozen_features_equal_sdxl_prompt_encoding(tiny_models_dir: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models_dir / "sdxl")
    other = SceneGraph.from_json({"objects": [{"id": 0, "name": "cat", "attributes": []}], "relations": []})
    inputs = prepare_graphs([GRAPH, other], [pipe.tokenizer, pipe.tokenizer_2])
    features = encode_graphs(inputs, [pipe.text_encoder, pipe.text_encoder_2])
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        [GRAPH.to_text(), "cat"], device="cpu", do_classifier_free_guidance=False
    )
    torch.testing.assert_close(features.token_embeds, prompt_embeds, rtol=0, atol=0)
    torch.testing.assert_close(features.pooled, pooled, rtol=0, atol=0)
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert features.node_feats.shape == (5, width) and features.edge_feats.shape == (2, width)
    # With alpha = 0 (the initial gate) SDXL-SG's conditioning is exactly SDXL's on the SG text.
    encoder = SGEncoder.for_text_encoders(pipe.text_encoder, pipe.text_encoder_2, hidden_dim=8)
    assert encoder.config.text_dim == width and encoder.config.hidden_dim == 8
    out, out_pooled = encoder(features)
    assert torch.equal(out, prompt_embeds) and torch.equal(out_pooled, pooled)


def test_fusion_touches_only_phrase_tokens() -> None:
    features = random_features([chain_index()])
    out, _ = encoder_with_alpha(TINY, 1.0)(features)
    changed = (out - features.token_embeds).abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == chain_index().token_pos.tolist()


def test_messages_cross_triples() -> None:
    """The man is only in the first triple; changing the second triple's relation must still reach his tokens.

    The public LAION-SG code gives every triple its own nodes, so there this would not happen."""
    encoder = encoder_with_alpha(TINY, 1.0)
    base = random_features([chain_index()])
    edited = random_features([chain_index()])
    edited.token_embeds, edited.pooled, edited.node_feats = base.token_embeds, base.pooled, base.node_feats
    edited.edge_feats = base.edge_feats.clone()
    edited.edge_feats[1] = torch.randn(12)  # "above" -> something else
    out_base, _ = encoder(base)
    out_edit, _ = encoder(edited)
    man_tokens, tree_tokens = [1, 2], [13, 14]
    assert not torch.allclose(out_base[0, man_tokens], out_edit[0, man_tokens])
    torch.testing.assert_close(out_base[0, tree_tokens], out_edit[0, tree_tokens])  # isolated: unaffected


def test_isolated_nodes_stay_distinct() -> None:
    import numpy as np

    index = GraphIndex(num_nodes=2, edges=np.zeros((0, 2)), token_pos=np.array([1, 2]), token_source=np.array([0, 1]))
    features = random_features([index])
    out, _ = encoder_with_alpha(TINY, 1.0)(features)
    delta = out - features.token_embeds
    assert not torch.allclose(delta[0, 1], delta[0, 2])


def test_batching_with_offsets_equals_one_graph_at_a_time() -> None:
    import numpy as np

    other = GraphIndex(
        num_nodes=2, edges=np.array([[1, 0]]), token_pos=np.array([1, 2, 3]), token_source=np.array([1, 2, 0])
    )
    batch = random_features([chain_index(), other], seed=1)
    encoder = encoder_with_alpha(TINY, 0.5)
    out, pooled = encoder(batch)
    rows = batch.split_rows()
    for b, row in enumerate(rows):
        single_out, single_pooled = encoder(SGFeatures.from_rows([row], 77))
        torch.testing.assert_close(out[b : b + 1], single_out)
        torch.testing.assert_close(pooled[b : b + 1], single_pooled)
    merged = SGFeatures.from_rows(rows, 77).index
    for name in ("edges", "token_index", "token_source", "num_nodes", "num_edges"):
        assert torch.equal(getattr(merged, name), getattr(batch.index, name))


def star_index() -> GraphIndex:
    """A second graph for batches: node 0 linked to nodes 1 and 2 (its tokens are arbitrary but valid)."""
    import numpy as np

    return GraphIndex(
        num_nodes=3,
        edges=np.array([[0, 1], [0, 2]]),
        token_pos=np.array([1, 2, 3, 4, 6, 7, 8]),
        token_source=np.array([0, 3, 1, 0, 4, 2, 2]),
    )


def test_diffusers_save_and_load_round_trip(tmp_path: Path, no_network: None) -> None:
    """diffusers' own save_pretrained/from_pretrained: safetensors + config.json, the same config (non-default
    pooling and residual included), bit-identical weights and outputs, and the validated pooling."""
    from diffusers import ModelMixin

    widths = TINY | {"num_layers": 2, "pooling": "sum", "residual": False, "sequence_length": 77}
    encoder = encoder_with_alpha(widths, 0.25)
    encoder.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = SGEncoder.from_pretrained(tmp_path / "enc")
    assert isinstance(loaded, ModelMixin) and not loaded.training
    assert {k: v for k, v in loaded.config.items() if not k.startswith("_")} == widths
    before, after = encoder.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    features = random_features([chain_index(), star_index()])
    with torch.no_grad():
        expected, pooled = encoder(features)
        out, out_pooled = loaded(features)
    assert torch.equal(out, expected) and torch.equal(out_pooled, pooled)
    assert not torch.equal(out, features.token_embeds)  # the graph branch is on (alpha 0.25)
    half = SGEncoder.from_pretrained(tmp_path / "enc", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half.alpha.float(), encoder.alpha.detach())
    with pytest.raises(ValueError, match="pooling"):
        SGEncoder(pooling="max")
