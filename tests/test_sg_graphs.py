"""Graph preparation for the SG encoder (`training.sg_graphs`), checked against hand-computed layouts.

Every expected value below is written out by hand from the SG text and the CLIP vocabulary: which token of the
text belongs to which node or relation, where each graph's nodes and edges land in a batch, which phrase row each
node and edge reads. The tokenizers are SDXL's two CLIP tokenizers built offline from open_clip's BPE file (the
second one pads with "!", as SDXL's `tokenizer_2` does); no model is loaded.
"""

from __future__ import annotations

import copy
from dataclasses import fields

import numpy as np
import pytest
import torch

from schemas import SceneGraph
from training.sg_graphs import BatchIndex, GraphIndex, prepare_graphs, text_spans

L = 77  # SDXL's token sequence length
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
INDEX_TENSORS = ("edges", "token_index", "token_source", "num_nodes", "num_edges", "num_tokens")


@pytest.fixture(scope="module")
def tokenizers() -> list:
    from laion_sg.offline.tiny_sdxl import _clip_tokenizer

    first = _clip_tokenizer()
    second = copy.deepcopy(first)  # the same vocabulary; SDXL's tokenizer_2 pads with "!"
    second.pad_token = "!"
    return [first, second]


def graph(objects: list, relations: list = ()) -> SceneGraph:
    """A validated graph from ``[(id, name, [attributes])]`` and ``[(subject, predicate, object)]``."""
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n, "attributes": list(a)} for i, n, a in objects],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    ).validate()


# Three graphs of different sizes: a triple, isolated objects with a duplicated name, a chain of two triples.
G0 = graph([(0, "man", ["young"]), (1, "umbrella", ["red"])], [(0, "holding", 1)])
G1 = graph([(0, "dog", []), (1, "dog", []), (2, "tree", [])])
G2 = graph([(0, "woman", []), (1, "horse", []), (2, "tree", [])], [(0, "riding", 1), (1, "near", 2)])
TEXTS = ["young man holding red umbrella", "dog, dog, tree", "woman riding horse, horse near tree"]

# The three graphs laid out one at a time (token positions counted on the CLIP tokens of each text, BOS = 0):
#   G0: <bos> young(1) man(2) holding(3) red(4) umbrella(5)          sources: man=0 umbrella=1 holding=2+0
#   G1: <bos> dog(1) ,(2) dog(3) ,(4) tree(5)                         commas belong to no phrase
#   G2: <bos> woman(1) riding(2) horse(3) ,(4) horse(5) near(6) tree(7)  riding=3+0, near=3+1
LOCAL = [
    GraphIndex(2, np.array([[0, 1]]), np.array([1, 2, 3, 4, 5]), np.array([0, 0, 2, 1, 1])),
    GraphIndex(3, np.zeros((0, 2), dtype=np.int64), np.array([1, 3, 5]), np.array([0, 1, 2])),
    GraphIndex(3, np.array([[0, 1], [1, 2]]), np.array([1, 2, 3, 5, 6, 7]), np.array([0, 3, 1, 1, 4, 2])),
]
# Merged: nodes at offsets 0, 2, 5 (8 in all), then edges at 8 + (0, 1, 1); token b*77 + position.
MERGED = {
    "edges": [[0, 1], [5, 6], [6, 7]],
    "token_index": [1, 2, 3, 4, 5] + [L + p for p in (1, 3, 5)] + [2 * L + p for p in (1, 2, 3, 5, 6, 7)],
    "token_source": [0, 0, 8, 1, 1, 2, 3, 4, 5, 9, 6, 6, 10, 7],
    "num_nodes": [2, 3, 3],
    "num_edges": [1, 0, 2],
    "num_tokens": [5, 3, 6],
}


def assert_index(index: BatchIndex, expected: dict, sequence_length: int = L) -> None:
    """`index` holds exactly `expected`, every tensor a torch.long (what index_add_ / indexing / split read)."""
    assert index.sequence_length == sequence_length
    for name in INDEX_TENSORS:
        tensor = getattr(index, name)
        assert tensor.dtype == torch.long, name
        assert tensor.tolist() == expected[name], name
    assert index.edges.shape == (len(expected["edges"]), 2)


def tokens(tokenizer, ids: torch.Tensor) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids.tolist())


# ------------------------------------------------------------------------------------------ text_spans


def test_text_spans_with_duplicated_names_and_a_chain() -> None:
    assert text_spans(G1) == ("dog, dog, tree", [], [(0, 3, 0), (5, 8, 1), (10, 14, 2)])
    assert text_spans(G2) == (
        TEXTS[2],
        [(0, 1), (1, 2)],
        [(0, 5, 0), (6, 12, 3), (13, 18, 1), (20, 25, 1), (26, 30, 4), (31, 35, 2)],
    )


def test_text_spans_skips_dangling_relations_as_to_text_does() -> None:
    """A relation naming a missing object (either end, before or after a good one) is left out of text and edges."""
    dangling = SceneGraph.from_json(
        {
            "objects": [{"id": 0, "name": "man"}, {"id": 1, "name": "dog"}],
            "relations": [
                {"subject": 0, "predicate": "near", "object": 99},
                {"subject": 0, "predicate": "walking", "object": 1},
                {"subject": 7, "predicate": "behind", "object": 1},
            ],
        }
    )
    assert dangling.to_text() == "man walking dog"
    assert text_spans(dangling) == ("man walking dog", [(0, 1)], [(0, 3, 0), (4, 11, 2), (12, 15, 1)])


def test_text_spans_refuses_a_text_that_drifted_from_to_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SceneGraph.to_text()` stays the one definition: a divergent layout is an error that shows both texts."""
    monkeypatch.setattr(SceneGraph, "to_text", lambda self: "man holding umbrella")
    with pytest.raises(ValueError, match="'young man holding red umbrella'.*'man holding umbrella'"):
        text_spans(G0)


# ------------------------------------------------------------------------------------------ BatchIndex


def test_merge_offsets_nodes_edges_and_tokens_of_graphs_of_different_sizes() -> None:
    index = BatchIndex.merge(LOCAL, L)
    assert index.num_graphs == 3
    assert_index(index, MERGED)


def test_split_gives_back_each_graphs_local_index() -> None:
    parts = BatchIndex.merge(LOCAL, L).split()
    assert len(parts) == 3
    for got, want in zip(parts, LOCAL, strict=True):
        assert got.num_nodes == want.num_nodes
        assert got.edges.reshape(-1, 2).tolist() == want.edges.tolist()
        assert got.token_pos.tolist() == want.token_pos.tolist()
        assert got.token_source.tolist() == want.token_source.tolist()


def test_merge_of_an_empty_batch_gives_empty_long_tensors() -> None:
    """The `cat` fallback of `merge`: no graph at all still gives well-shaped (0, 2) / (0,) long tensors."""
    index = BatchIndex.merge([], L)
    assert index.num_graphs == 0
    assert_index(index, {name: [] for name in INDEX_TENSORS})
    assert index.edges.shape == (0, 2)
    for name in INDEX_TENSORS[1:]:
        assert getattr(index, name).shape == (0,), name
    assert index.split() == []


def test_to_moves_every_tensor_and_keeps_the_sequence_length() -> None:
    index = BatchIndex.merge(LOCAL, 50)
    moved = index.to("meta")  # a real device change without an accelerator
    assert {f.name for f in fields(moved)} == {*INDEX_TENSORS, "sequence_length"}
    assert moved.sequence_length == 50
    for name in INDEX_TENSORS:
        tensor = getattr(moved, name)
        assert tensor.device.type == "meta", name
        assert tensor.shape == getattr(index, name).shape and tensor.dtype == torch.long, name


# ------------------------------------------------------------------------------------------ prepare_graphs


def test_prepare_graphs_on_a_batch_of_graphs_of_different_sizes(tokenizers: list) -> None:
    inputs = prepare_graphs([G0, G1, G2], tokenizers)
    assert inputs.texts == TEXTS
    assert_index(inputs.index, MERGED)

    first, second = tokenizers
    assert [t.shape for t in inputs.text_ids] == [(3, L), (3, L)]
    assert all(t.dtype == torch.long for t in inputs.text_ids)
    words = [[BOS, "young</w>", "man</w>", "holding</w>", "red</w>", "umbrella</w>", EOS]]
    words += [[BOS, "dog</w>", ",</w>", "dog</w>", ",</w>", "tree</w>", EOS]]
    words += [
        [BOS, "woman</w>", "riding</w>", "horse</w>", ",</w>", "horse</w>", "near</w>", "tree</w>", EOS]
    ]
    for b, content in enumerate(words):
        pad = L - len(content)
        assert tokens(first, inputs.text_ids[0][b]) == content + [EOS] * pad  # SDXL's tokenizer pads with EOS
        assert tokens(second, inputs.text_ids[1][b]) == content + ["!"] * pad  # tokenizer_2 pads with "!"

    # Phrases de-duplicated in order of first mention; G1's two dogs and G2's tree reuse earlier rows.
    phrases = ["young man", "red umbrella", "holding", "dog", "tree", "woman", "horse", "riding", "near"]
    assert inputs.node_phrase.tolist() == [0, 1, 3, 3, 4, 5, 6, 4]
    assert inputs.edge_phrase.tolist() == [2, 7, 8]
    assert inputs.node_phrase.dtype == inputs.edge_phrase.dtype == torch.long
    for tokenizer, ids, lengths in zip(tokenizers, inputs.phrase_ids, inputs.phrase_lengths, strict=True):
        assert ids.shape == (len(phrases), 4) and ids.dtype == torch.long  # padded to the longest phrase
        assert lengths.tolist() == [4, 4, 3, 3, 3, 3, 3, 3, 3] and lengths.dtype == torch.long
        for row, (phrase, n) in enumerate(zip(phrases, lengths.tolist(), strict=True)):
            expected = [BOS, *(w + "</w>" for w in phrase.split()), EOS]
            assert tokens(tokenizer, ids[row])[:n] == expected
            assert tokens(tokenizer, ids[row])[n:] == [tokenizer.pad_token] * (4 - n)


def test_prepare_graphs_without_edges_or_without_objects(tokenizers: list) -> None:
    """No edge in the batch / an empty graph: empty long index tensors that `encode_graphs` can index with."""
    features = torch.zeros(
        (0, 6)
    )  # encode_graphs gathers node/edge features from this when there is no phrase
    empty = prepare_graphs([SceneGraph()], tokenizers)
    assert empty.texts == [""]
    assert_index(
        empty.index,
        {name: [] for name in INDEX_TENSORS} | {"num_nodes": [0], "num_edges": [0], "num_tokens": [0]},
    )
    assert tokens(tokenizers[0], empty.text_ids[0][0]) == [BOS] + [EOS] * (L - 1)
    assert tokens(tokenizers[1], empty.text_ids[1][0]) == [BOS, EOS] + ["!"] * (L - 2)
    assert len(empty.phrase_ids) == len(empty.phrase_lengths) == 2
    for ids, lengths in zip(empty.phrase_ids, empty.phrase_lengths, strict=True):
        assert isinstance(ids, torch.Tensor) and ids.ndim == 2 and len(ids) == 0  # P = 0 phrases
        assert isinstance(lengths, torch.Tensor) and lengths.shape == (0,)
        assert ids.dtype == lengths.dtype == torch.long  # token ids and lengths, as with phrases
    for mapping in (empty.node_phrase, empty.edge_phrase):
        assert mapping.dtype == torch.long and mapping.shape == (0,)
        assert features[mapping].shape == (0, 6)

    isolated = prepare_graphs([G1, SceneGraph()], tokenizers)
    assert isolated.node_phrase.tolist() == [0, 0, 1]
    assert isolated.edge_phrase.dtype == torch.long and isolated.edge_phrase.shape == (0,)
    assert features[isolated.edge_phrase].shape == (0, 6)
    assert_index(
        isolated.index,
        {"edges": [], "token_index": [1, 3, 5], "token_source": [0, 1, 2], "num_nodes": [3, 0]}
        | {"num_edges": [0, 0], "num_tokens": [3, 0]},
    )


# Two graphs longer than 77 tokens. MANY: 40 isolated objects, "cat, dog, cat, ..."; object i is token 1 + 2i, so
# objects 0..37 fit before the EOS at position 76 and objects 38 and 39 are cut off. LONG: one object whose phrase
# is 8 attributes of 20 one-letter words and its name (161 words), so its phrase is cut too.
MANY = graph([(i, ("cat", "dog")[i % 2], []) for i in range(40)])
LONG = graph([(0, "dog", [" ".join([letter] * 20) for letter in "abcdefgh"])])


def test_prepare_graphs_cuts_text_and_phrases_at_77_tokens(tokenizers: list) -> None:
    inputs = prepare_graphs([MANY, LONG], tokenizers)
    assert [t.shape for t in inputs.text_ids] == [(2, L), (2, L)]
    for tokenizer, ids in zip(tokenizers, inputs.text_ids, strict=True):
        assert tokens(tokenizer, ids[0])[-2:] == ["dog</w>", EOS]  # object 37, then EOS in the last slot
        assert tokens(tokenizer, ids[1]) == [BOS] + [f"{c}</w>" for c in "abcdefgh" for _ in range(20)][
            :75
        ] + [EOS]
    assert_index(
        inputs.index,
        {
            "edges": [],
            "token_index": [1 + 2 * i for i in range(38)] + [L + p for p in range(1, 76)],
            "token_source": list(range(38)) + [40] * 75,  # LONG's node comes after MANY's 40 nodes
            "num_nodes": [40, 1],
            "num_edges": [0, 0],
            "num_tokens": [38, 75],
        },
    )
    # Every node has a phrase, also those cut out of the text: "cat", "dog", then LONG's phrase.
    assert inputs.node_phrase.tolist() == [i % 2 for i in range(40)] + [2]
    for tokenizer, ids, lengths in zip(tokenizers, inputs.phrase_ids, inputs.phrase_lengths, strict=True):
        assert ids.shape == (3, L)  # the long phrase is cut to 77 tokens, ending in EOS
        assert lengths.tolist() == [3, 3, L]
        assert tokens(tokenizer, ids[2])[0] == BOS and tokens(tokenizer, ids[2])[-1] == EOS


def test_sequence_length_is_the_first_tokenizers_for_every_tokenizer(tokenizers: list) -> None:
    """A second tokenizer saved without `model_max_length` (transformers then reports a huge number) is still cut
    and padded to the first tokenizer's 77 tokens: SDXL concatenates the encoders' states position by position."""
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    unbounded = copy.deepcopy(tokenizers[1])
    unbounded.model_max_length = VERY_LARGE_INTEGER
    inputs = prepare_graphs([MANY, LONG], [tokenizers[0], unbounded])
    assert inputs.index.sequence_length == L
    assert [t.shape for t in inputs.text_ids] == [(2, L), (2, L)]
    assert torch.equal(inputs.text_ids[1], prepare_graphs([MANY, LONG], tokenizers).text_ids[1])
    assert [t.shape for t in inputs.phrase_ids] == [(3, L), (3, L)]
    assert [t.tolist() for t in inputs.phrase_lengths] == [[3, 3, L], [3, 3, L]]


# ------------------------------------------------------------------------------------------ windows (long prompts)


def test_windows_lay_a_long_text_out_as_the_long_prompt_layout(tokenizers: list) -> None:
    """MANY's text is 79 tokens (40 names and 39 commas): with windows of 75 it takes two windows of 77 ids,
    ``[BOS, tokens 0..74, EOS]`` and ``[BOS, tokens 75..78, EOS, PAD...]``. Name k is token 2k, so names 0..37 sit
    at 1 + 2k and names 38 and 39 (tokens 76 and 78) at 77 + 1 + 1 = 79 and 77 + 1 + 3 = 81; nothing is cut."""
    inputs = prepare_graphs([MANY], tokenizers, window=75)
    names = [("cat</w>", "dog</w>")[k % 2] for k in range(40)]
    text = [t for k, name in enumerate(names) for t in ([name] if k == 39 else [name, ",</w>"])]
    assert len(text) == 79
    for tokenizer, ids in zip(tokenizers, inputs.text_ids, strict=True):
        assert ids.shape == (1, 2 * L)
        pad = tokenizer.convert_ids_to_tokens(tokenizer.pad_token_id)
        assert tokens(tokenizer, ids[0]) == [BOS, *text[:75], EOS, BOS, *text[75:], EOS] + [pad] * 71
    assert_index(
        inputs.index,
        {
            "edges": [],
            "token_index": [1 + 2 * k for k in range(38)] + [79, 81],
            "token_source": list(range(40)),
            "num_nodes": [40],
            "num_edges": [0],
            "num_tokens": [40],
        },
        sequence_length=2 * L,
    )


def test_windows_pad_a_batch_to_its_longest_text_or_min_windows(tokenizers: list) -> None:
    """Every graph of a batch gets as many windows as the longest needs (at least `min_windows`); a short text
    keeps its plain layout in the first window, and the windows after it are empty ``[BOS, EOS, PAD...]``."""
    plain = prepare_graphs([G0], tokenizers)
    for batch, min_windows, count in (([G0, MANY], 1, 2), ([G0], 3, 3), ([G0], 1, 1)):
        inputs = prepare_graphs(batch, tokenizers, window=75, min_windows=min_windows)
        assert inputs.index.sequence_length == count * L
        for tokenizer, ids, plain_ids in zip(tokenizers, inputs.text_ids, plain.text_ids, strict=True):
            assert ids.shape == (len(batch), count * L)
            assert torch.equal(ids[0, :L], plain_ids[0])
            empty = [tokenizer.bos_token_id, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * 75
            assert ids[0, L:].tolist() == empty * (count - 1)
        assert inputs.index.token_index[:5].tolist() == LOCAL[0].token_pos.tolist()


@pytest.mark.parametrize(("window", "count"), [(1, 5), (2, 3), (75, 1)])
def test_window_sizes_from_one_token_to_75(tokenizers: list, window: int, count: int) -> None:
    """G0's five tokens in windows of `window` tokens: token i sits at (i // window) * (window + 2) + 1 +
    i % window."""
    inputs = prepare_graphs([G0], tokenizers, window=window)
    assert inputs.index.sequence_length == count * (window + 2)
    expected = [(i // window) * (window + 2) + 1 + i % window for i in range(5)]
    assert inputs.index.token_index.tolist() == expected
    assert inputs.index.token_source.tolist() == LOCAL[0].token_source.tolist()
    ids = inputs.text_ids[0][0]
    assert tokens(tokenizers[0], ids[expected]) == ["young</w>", "man</w>", "holding</w>", "red</w>", "umbrella</w>"]


@pytest.mark.parametrize("window", [0, -3, 76])
def test_a_window_outside_1_to_75_tokens_is_refused(tokenizers: list, window: int) -> None:
    with pytest.raises(ValueError) as info:
        prepare_graphs([G0], tokenizers, window=window)
    assert str(info.value) == f"window must be between 1 and 75 tokens, got {window}"
