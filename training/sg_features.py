"""What the frozen text encoders make of a batch of graphs (`encode_graphs`): `SGFeatures`, everything the
trainable `training.sg_encoder.SGEncoder` reads, and what `training.precompute` caches per row.

The SG text is encoded as SDXL encodes a prompt (both CLIP text encoders, penultimate hidden layer, concatenated;
the pooled projection of the last one); every object and relation phrase is encoded on its own, its feature being
the penultimate hidden state at its end-of-text token. Imports no diffusers, so the data path stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.sg_graphs import BatchIndex, GraphInputs

__all__ = ["SGFeatures", "encode_graphs"]


@dataclass
class SGFeatures:
    """Frozen text-encoder outputs for a batch of graphs: everything the trainable encoder reads.

    This is what `training.precompute` caches per row (`split_rows` / `from_rows`).
    """

    token_embeds: torch.Tensor  # (B, 77, D) penultimate hidden states of both encoders on the SG text
    pooled: torch.Tensor  # (B, P) pooled projection of text_encoder_2 on the SG text
    node_feats: torch.Tensor  # (N, D)
    edge_feats: torch.Tensor  # (E, D)
    index: BatchIndex

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SGFeatures:
        return SGFeatures(
            token_embeds=self.token_embeds.to(device, dtype),
            pooled=self.pooled.to(device, dtype),
            node_feats=self.node_feats.to(device, dtype),
            edge_feats=self.edge_feats.to(device, dtype),
            index=self.index.to(device),
        )

    def split_rows(self) -> list[dict[str, Any]]:
        """One dict of CPU tensors / `GraphIndex` per graph."""
        cpu = self.to("cpu")
        node_chunks = torch.split(cpu.node_feats, cpu.index.num_nodes.tolist())
        edge_chunks = torch.split(cpu.edge_feats, cpu.index.num_edges.tolist())
        return [
            {
                "token_embeds": cpu.token_embeds[b],
                "pooled": cpu.pooled[b],
                "node_feats": node_chunks[b],
                "edge_feats": edge_chunks[b],
                "graph_index": graph_index,
            }
            for b, graph_index in enumerate(cpu.index.split())
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], sequence_length: int) -> SGFeatures:
        """The inverse of `split_rows`."""
        return cls(
            token_embeds=torch.stack([r["token_embeds"] for r in rows]),
            pooled=torch.stack([r["pooled"] for r in rows]),
            node_feats=torch.cat([r["node_feats"] for r in rows]),
            edge_feats=torch.cat([r["edge_feats"] for r in rows]),
            index=BatchIndex.merge([r["graph_index"] for r in rows], sequence_length),
        )


@torch.no_grad()
def _encode_windows(encoder: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate hidden states of (B, n * 77) ids, each 77-token window encoded on its own (one window: the
    plain SDXL call), concatenated along the sequence (`training.long_prompt`'s route for long prompts), and the
    encoder's first output (the pooled projection of a `CLIPTextModelWithProjection`) of the first window."""
    length = int(encoder.config.max_position_embeddings)
    if not ids.shape[1] or ids.shape[1] % length:
        raise ValueError(f"SG text ids of length {ids.shape[1]} are not windows of {length} tokens")
    windows = [encoder(ids[:, k : k + length], output_hidden_states=True) for k in range(0, ids.shape[1], length)]
    return torch.cat([out.hidden_states[-2] for out in windows], dim=1), windows[0][0]


def encode_graphs(inputs: GraphInputs, text_encoders: Sequence[nn.Module]) -> SGFeatures:
    """Run the frozen text encoders the way SDXL does (penultimate layer; pooled from the last encoder; with
    windowed SG text, `training.sg_graphs.prepare_graphs`'s `window`, each window encoded alone and the pooled
    projection taken from the first, as for SDXL's long prompts)."""
    device = next(text_encoders[0].parameters()).device
    hidden, phrase_parts = [], []
    pooled = None
    for encoder, ids, phrase_ids, lengths in zip(
        text_encoders, inputs.text_ids, inputs.phrase_ids, inputs.phrase_lengths, strict=True
    ):
        states, pooled = _encode_windows(encoder, ids.to(device))
        hidden.append(states)
        width = encoder.config.hidden_size
        if len(phrase_ids):
            states = encoder(phrase_ids.to(device), output_hidden_states=True).hidden_states[-2]
            phrase_parts.append(states[torch.arange(len(lengths), device=device), lengths.to(device) - 1])
        else:
            phrase_parts.append(hidden[-1].new_zeros((0, width)))
    if pooled is None or pooled.ndim != 2:
        raise ValueError("the last text encoder must return a pooled projection (CLIPTextModelWithProjection)")
    phrase_feats = torch.cat(phrase_parts, dim=-1)
    return SGFeatures(
        token_embeds=torch.cat(hidden, dim=-1),
        pooled=pooled,
        node_feats=phrase_feats[inputs.node_phrase.to(device)],
        edge_feats=phrase_feats[inputs.edge_phrase.to(device)],
        index=inputs.index.to(device),
    )
