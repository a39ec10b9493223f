"""The two losses of `training.pretrain_sg` and the heads they train beside the `SGEncoder` (plain torch).

- **Contrastive** (`info_nce`): symmetric InfoNCE between the pooled graph embedding of each graph (the mean
  of its nodes' and relations' `SGEncoder` outputs, through `PretrainHeads.graph_proj` to the CLIP image
  width) and the frozen CLIP image embedding of its paired image; the other images and graphs of the batch are
  the negatives. Both sides are L2-normalised; the logits are cosines divided by a fixed temperature.
- **Masked graph** (`masked_loss`): a seeded fraction of the graph items (object nodes and relations alike,
  `mask_items`) have their frozen phrase feature (`SGFeatures.node_feats` / `edge_feats`) replaced by a
  learned mask embedding before the encoder runs; `PretrainHeads.reconstruct` maps the encoder's output at
  each masked item back to that item's frozen phrase feature, scored by cosine distance (1 - cos): the phrase
  features of CLIP's penultimate layer have a few huge dimensions that would dominate an MSE.

"The encoder's output" of an item is its row of ``project_out(normalize(graph network))``, the vector that
SDXL-SG fine-tuning adds (times the gate alpha) onto the item's tokens, so every trained weight of the encoder
but alpha is pre-trained. It is read with a forward hook on `SGEncoder.project_out` while the encoder runs its
own `forward`; alpha is frozen at 0 here (`SGPretrainModel`), so that forward's token output is plain SDXL and
unused.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from training.sg_encoder import SGEncoder
from training.sg_features import SGFeatures

__all__ = ["PretrainHeads", "SGPretrainModel", "graph_ids", "info_nce", "mask_items", "masked_loss"]


def info_nce(graph_embeds: torch.Tensor, image_embeds: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) of paired rows: the mean of graph->image and image->graph
    cross-entropies of ``cos(graph_i, image_j) / temperature`` with the pairs on the diagonal."""
    logits = (
        F.normalize(graph_embeds.float(), dim=-1) @ F.normalize(image_embeds.float(), dim=-1).T / temperature
    )
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def mask_items(num_items: int, probability: float, seed: int) -> torch.Tensor:
    """Which of `num_items` graph items to mask: each with `probability`, independently, from a generator
    seeded with `seed`; at least one (the seeded draw's most likely item) when `num_items` > 0, so every step
    trains the reconstruction head. A boolean CPU tensor."""
    scores = torch.rand(num_items, generator=torch.Generator().manual_seed(seed))
    mask = scores < probability
    if num_items and not mask.any():
        mask[scores.argmin()] = True
    return mask


def masked_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance (1 - cos) of the reconstructed and the frozen phrase features of the masked
    items."""
    return (1 - F.cosine_similarity(predicted.float(), target.float(), dim=-1)).mean()


def graph_ids(features: SGFeatures) -> torch.Tensor:
    """The graph (batch row) of every item of ``[nodes; edges]``, the order of the encoder's outputs."""
    index = features.index
    graphs = torch.arange(index.num_graphs, device=index.num_nodes.device)
    ids = torch.cat([graphs.repeat_interleave(index.num_nodes), graphs.repeat_interleave(index.num_edges)])
    return ids.to(features.node_feats.device)


class PretrainHeads(nn.Module):
    """What pre-training trains beside the encoder, dropped afterwards: the mask embedding, the graph -> CLIP
    projection and the masked-item reconstruction MLP (``text_dim -> hidden_dim -> text_dim``)."""

    def __init__(self, text_dim: int, hidden_dim: int, clip_dim: int):
        super().__init__()
        self.mask_embedding = nn.Parameter(torch.zeros(text_dim))
        self.graph_proj = nn.Linear(text_dim, clip_dim)
        self.reconstruct = nn.Sequential(
            nn.Linear(text_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, text_dim)
        )


class SGPretrainModel(nn.Module):
    """`SGEncoder` + `PretrainHeads`, one module (what DDP wraps): `forward` gives both losses. The encoder's
    gate alpha is frozen (it stays at its initial 0, so fine-tuning still starts from plain SDXL)."""

    def __init__(self, encoder: SGEncoder, clip_dim: int):
        super().__init__()
        self.encoder = encoder
        encoder.alpha.requires_grad_(False)
        config = encoder.config
        self.heads = PretrainHeads(config.text_dim, config.hidden_dim, clip_dim)

    def item_outputs(self, features: SGFeatures) -> torch.Tensor:
        """The encoder's output row of every item of ``[nodes; edges]`` (``project_out``'s output in
        `forward`)."""
        captured: list[torch.Tensor] = []
        handle = self.encoder.project_out.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.encoder(features)
        finally:
            handle.remove()
        return captured[0]

    def forward(
        self, features: SGFeatures, image_embeds: torch.Tensor, mask: torch.Tensor, temperature: float
    ) -> dict[str, torch.Tensor]:
        """``{"contrastive", "masked"}`` of a batch: `features` of the unmasked graphs, the paired frozen CLIP
        image embeddings, `mask` over ``[nodes; edges]`` (`mask_items`)."""
        ids = graph_ids(features)
        outputs = self.item_outputs(features)
        sums = outputs.new_zeros((features.index.num_graphs, outputs.shape[1])).index_add_(0, ids, outputs)
        counts = torch.bincount(ids, minlength=features.index.num_graphs).clamp(min=1).unsqueeze(1)
        graph_embeds = self.heads.graph_proj(sums / counts)

        num_nodes = features.node_feats.shape[0]
        items = torch.cat([features.node_feats, features.edge_feats])
        mask = mask.to(items.device)
        masked_items = torch.where(mask.unsqueeze(1), self.heads.mask_embedding.to(items.dtype), items)
        masked = dataclasses.replace(
            features, node_feats=masked_items[:num_nodes], edge_feats=masked_items[num_nodes:]
        )
        predicted = self.heads.reconstruct(self.item_outputs(masked)[mask])
        return {
            "contrastive": info_nce(graph_embeds, image_embeds, temperature),
            "masked": masked_loss(predicted, items[mask].detach()),
        }
