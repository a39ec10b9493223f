"""Scene graphs -> the index tensors the SG encoder reads (CPU only, no model; runs in data-loading threads).

`text_spans` lays a graph out as its canonical SG text (`SceneGraph.to_text()`) with the character span of every
node and relation phrase; `prepare_graphs` tokenizes a batch the way SDXL tokenizes a prompt and maps every token
to the node or relation whose phrase it belongs to; `BatchIndex` merges variable-size graphs with node/edge offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from schemas import SceneGraph

__all__ = ["BatchIndex", "GraphIndex", "GraphInputs", "prepare_graphs", "text_spans"]


@dataclass
class GraphIndex:
    """Where one graph's features go.

    `edges[k] = (subject row, object row)` into the graph's nodes (objects in graph order); `token_source[j]` is
    the row in ``[nodes; edges]`` whose output is added to token `token_pos[j]` of the SG text.
    """

    num_nodes: int
    edges: np.ndarray  # (e, 2) int64
    token_pos: np.ndarray  # (t,) int64
    token_source: np.ndarray  # (t,) int64


@dataclass
class BatchIndex:
    """`GraphIndex`es of a batch merged with node/edge offsets (all tensors; the unit of batching graphs).

    Nodes of graph b occupy rows ``sum(num_nodes[:b]) ...``; `token_index` is ``b * sequence_length + position``;
    `token_source` indexes the concatenation of all nodes of the batch followed by all edges of the batch.
    """

    edges: torch.Tensor  # (E, 2)
    token_index: torch.Tensor  # (T,)
    token_source: torch.Tensor  # (T,)
    num_nodes: torch.Tensor  # (B,)
    num_edges: torch.Tensor  # (B,)
    num_tokens: torch.Tensor  # (B,)
    sequence_length: int

    @property
    def num_graphs(self) -> int:
        return int(self.num_nodes.shape[0])

    @classmethod
    def merge(cls, graphs: Sequence[GraphIndex], sequence_length: int) -> BatchIndex:
        num_nodes = np.array([g.num_nodes for g in graphs], dtype=np.int64)
        num_edges = np.array([len(g.edges) for g in graphs], dtype=np.int64)
        node_offset = np.concatenate([[0], np.cumsum(num_nodes)[:-1]]).astype(np.int64)
        edge_offset = np.concatenate([[0], np.cumsum(num_edges)[:-1]]).astype(np.int64)
        total_nodes = int(num_nodes.sum())
        edges, token_index, token_source = [], [], []
        for b, g in enumerate(graphs):
            edges.append(np.asarray(g.edges, dtype=np.int64).reshape(-1, 2) + node_offset[b])
            token_index.append(np.asarray(g.token_pos, dtype=np.int64) + b * sequence_length)
            source = np.asarray(g.token_source, dtype=np.int64)
            is_node = source < g.num_nodes
            token_source.append(
                np.where(
                    is_node, node_offset[b] + source, total_nodes + edge_offset[b] + source - g.num_nodes
                )
            )

        def cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(shape, dtype=np.int64))

        return cls(
            edges=cat(edges, (0, 2)),
            token_index=cat(token_index, (0,)),
            token_source=cat(token_source, (0,)),
            num_nodes=torch.from_numpy(num_nodes),
            num_edges=torch.from_numpy(num_edges),
            num_tokens=torch.tensor([len(g.token_pos) for g in graphs], dtype=torch.int64),
            sequence_length=sequence_length,
        )

    def split(self) -> list[GraphIndex]:
        """The inverse of `merge`."""
        total_nodes = int(self.num_nodes.sum())
        nodes, edges, tokens = (x.tolist() for x in (self.num_nodes, self.num_edges, self.num_tokens))
        node_offset = edge_offset = token_offset = 0
        out = []
        for b, (n, e, t) in enumerate(zip(nodes, edges, tokens, strict=True)):
            source = self.token_source[token_offset : token_offset + t].numpy()
            local = np.where(
                source < total_nodes, source - node_offset, source - total_nodes - edge_offset + n
            )
            out.append(
                GraphIndex(
                    num_nodes=n,
                    edges=self.edges[edge_offset : edge_offset + e].numpy() - node_offset,
                    token_pos=self.token_index[token_offset : token_offset + t].numpy()
                    - b * self.sequence_length,
                    token_source=local,
                )
            )
            node_offset, edge_offset, token_offset = node_offset + n, edge_offset + e, token_offset + t
        return out

    def to(self, device: torch.device | str) -> BatchIndex:
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sequence_length"}
        return BatchIndex(
            **{k: v.to(device) for k, v in tensors.items()}, sequence_length=self.sequence_length
        )


def text_spans(graph: SceneGraph) -> tuple[str, list[tuple[int, int]], list[tuple[int, int, int]]]:
    """The canonical SG text, the edges (subject row, object row), and the character span of every phrase.

    Each span is ``(start, end, source)`` with `source` a node row (< number of objects) or ``num_objects + k``
    for relation k. The text is checked against `SceneGraph.to_text()`, which stays the single definition.
    """
    row = {o.id: i for i, o in enumerate(graph.objects)}
    num_nodes = len(graph.objects)
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    edges: list[tuple[int, int]] = []
    length = 0

    def add(text: str, source: int | None = None) -> None:
        nonlocal length
        if source is not None:
            spans.append((length, length + len(text), source))
        pieces.append(text)
        length += len(text)

    def phrase(index: int) -> str:
        obj = graph.objects[index]
        return " ".join([*obj.attributes, obj.name])

    def separate() -> None:
        if pieces:
            add(", ")

    for rel in graph.relations:
        if rel.subject not in row or rel.object not in row:
            continue
        s, o = row[rel.subject], row[rel.object]
        separate()
        add(phrase(s), s)
        add(" ")
        add(rel.predicate, num_nodes + len(edges))
        add(" ")
        add(phrase(o), o)
        edges.append((s, o))
    linked = {i for edge in edges for i in edge}
    for i in range(num_nodes):
        if i not in linked:
            separate()
            add(phrase(i), i)
    text = "".join(pieces)
    if text != graph.to_text():
        raise ValueError(f"SG text {text!r} differs from SceneGraph.to_text() {graph.to_text()!r}")
    return text, edges, spans


@dataclass
class GraphInputs:
    """Tokenizer output for a batch of graphs (CPU, no model needed; built in the data-loading thread).

    One entry per tokenizer in `text_ids` / `phrase_ids` / `phrase_lengths`. `node_phrase` and `edge_phrase` map
    every node and edge of the batch to a row of the de-duplicated phrase list.
    """

    texts: list[str]
    text_ids: list[torch.Tensor]  # (B, 77) each
    phrase_ids: list[torch.Tensor]  # (P, L) each
    phrase_lengths: list[torch.Tensor]  # (P,) tokens including BOS and EOS
    node_phrase: torch.Tensor  # (N,)
    edge_phrase: torch.Tensor  # (E,)
    index: BatchIndex


def _window_ids(tokenizer: Any, texts: list[str], window: int, count: int) -> torch.Tensor:
    """(B, count * (window + 2)) ids: each text in windows ``[BOS, tokens..., EOS, PAD...]`` (the long-prompt
    layout, `training.long_prompt.prompt_windows`), padded with empty windows to `count`."""
    from training.long_prompt import prompt_windows

    rows = []
    for text in texts:
        windows = prompt_windows(tokenizer, text, window)
        windows += [prompt_windows(tokenizer, "", window)[0]] * (count - len(windows))
        rows.append([token for w in windows for token in w])
    return torch.tensor(rows, dtype=torch.long)


def prepare_graphs(
    graphs: Sequence[SceneGraph], tokenizers: Sequence[Any], window: int | None = None, min_windows: int = 1
) -> GraphInputs:
    """Tokenize the SG texts (as SDXL tokenizes a prompt) and the phrases; map tokens to nodes/edges.

    Token positions come from the first tokenizer's offsets; SDXL's two tokenizers share the CLIP vocabulary
    (only the padding token differs), so positions agree between the two encoders, which SDXL itself relies on
    when it concatenates their hidden states position by position.

    With `window` (tokens per window, 75 for SDXL) the SG text is not truncated at 77 tokens: it is laid out in
    windows of ``window + 2`` ids as `training.long_prompt` lays out a long prompt, every graph of the batch in as
    many windows as the longest needs (at least `min_windows`), and token positions count across the windows;
    `training.sg_features.encode_graphs` encodes each window and concatenates them. A text of at most `window`
    tokens gives exactly the ids (and positions) of the plain layout.
    """
    length = phrase_length = tokenizers[0].model_max_length
    laid_out = [text_spans(g) for g in graphs]
    texts = [text for text, _, _ in laid_out]
    if window is None:
        first = tokenizers[0](
            texts,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="np",
        )
        text_ids = [torch.from_numpy(first["input_ids"]).long()]
        for tokenizer in tokenizers[1:]:
            ids = tokenizer(
                texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            )
            text_ids.append(ids["input_ids"].long())
        positions = [np.arange(length)] * len(texts)  # offset row -> position in the sequence
    else:
        if not 1 <= window <= length - 2:
            raise ValueError(f"window must be between 1 and {length - 2} tokens, got {window}")
        first = tokenizers[0](
            texts, add_special_tokens=False, return_offsets_mapping=True, return_special_tokens_mask=True
        )
        count = max([min_windows, *(max(1, -(-len(ids) // window)) for ids in first["input_ids"])])
        text_ids = [_window_ids(tokenizer, texts, window, count) for tokenizer in tokenizers]
        positions = [
            (i // window) * (window + 2) + 1 + i % window
            for i in map(np.arange, map(len, first["input_ids"]))
        ]
        length = count * (window + 2)

    indices = []
    for b, (graph, (_, edges, spans)) in enumerate(zip(graphs, laid_out, strict=True)):
        offsets, special = first["offset_mapping"][b], first["special_tokens_mask"][b]
        token_pos, token_source = [], []
        starts = np.array([s for s, _, _ in spans], dtype=np.int64)
        for position, (start, end), is_special in zip(positions[b], offsets, special, strict=True):
            if is_special or end <= start:
                continue
            k = int(np.searchsorted(starts, start, side="right")) - 1
            if k >= 0 and start >= spans[k][0] and end <= spans[k][1]:
                token_pos.append(int(position))
                token_source.append(spans[k][2])
        indices.append(
            GraphIndex(
                num_nodes=len(graph.objects),
                edges=np.array(edges, dtype=np.int64).reshape(-1, 2),
                token_pos=np.array(token_pos, dtype=np.int64),
                token_source=np.array(token_source, dtype=np.int64),
            )
        )

    phrases: dict[str, int] = {}
    node_phrase, edge_phrase = [], []
    for graph, (text, edges, spans) in zip(graphs, laid_out, strict=True):
        by_source: dict[int, str] = {}
        for start, end, source in spans:  # every node and edge is mentioned in the text at least once
            by_source.setdefault(source, text[start:end])
        num_nodes = len(graph.objects)
        node_phrase += [phrases.setdefault(by_source[i], len(phrases)) for i in range(num_nodes)]
        edge_phrase += [phrases.setdefault(by_source[num_nodes + k], len(phrases)) for k in range(len(edges))]
    phrase_list = list(phrases)
    phrase_ids, phrase_lengths = [], []
    for tokenizer in tokenizers:
        if phrase_list:
            enc = tokenizer(
                phrase_list, padding="longest", max_length=phrase_length, truncation=True, return_tensors="pt"
            )
            phrase_ids.append(enc["input_ids"].long())
            phrase_lengths.append(enc["attention_mask"].sum(1).long())
        else:
            phrase_ids.append(torch.zeros((0, 2), dtype=torch.long))
            phrase_lengths.append(torch.zeros((0,), dtype=torch.long))
    return GraphInputs(
        texts=texts,
        text_ids=text_ids,
        phrase_ids=phrase_ids,
        phrase_lengths=phrase_lengths,
        node_phrase=torch.tensor(node_phrase, dtype=torch.long),
        edge_phrase=torch.tensor(edge_phrase, dtype=torch.long),
        index=BatchIndex.merge(indices, length),
    )
