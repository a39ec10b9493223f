"""The scene-graph encoder of SDXL-SG: a scene graph -> SDXL's text conditioning (prompt_embeds, pooled).

Pipeline (sizes at full SDXL scale; every width is an argument of `SGEncoder` or, through
`SGEncoder.for_text_encoders`, comes from the loaded text encoders):

Steps 1 and 2 run the frozen text encoders (`training.sg_features.encode_graphs`); `SGEncoder` does 3 and 4.

1. The canonical SG text (`SceneGraph.to_text()`, "attrs subject predicate attrs object, ...") is encoded exactly as
   SDXL encodes a prompt: both frozen CLIP text encoders, penultimate hidden layer, concatenated (768 + 1280 = 2048),
   77 tokens; the pooled projection of `text_encoder_2` becomes SDXL's `text_embeds`.
2. Every object node ("attrs name") and every relation ("predicate") is a phrase, encoded on its own by the same two
   encoders: the penultimate hidden state at the phrase's end-of-text token (CLIP is causal, so that token has seen
   the whole phrase), concatenated -> 2048.
3. `Linear(2048 -> 512)`, one `GraphTripleConv` and a 5-layer `GraphTripleConvNet` (sg2im's design, 512 wide, avg
   pooling), L2 normalisation, `Linear(512 -> 2048)`, times a learnable scalar gate alpha initialised to 0.
4. Fusion: each node's / relation's output vector is added onto the tokens of its phrase in the SG text. An object
   mentioned in several clauses gets the same vector at every mention (the node is shared by the whole graph), so
   what a clause's tokens receive depends on the other triples too. Commas, BOS/EOS and padding receive nothing;
   phrases cut off by the 77-token limit receive nothing. With alpha = 0 the output equals plain SDXL on the SG text.

Fixes over the public LAION-SG code: one node per object for the whole graph (not per triple), so
messages cross triples; attributes kept in the node phrase; isolated objects kept (as nodes and in the text);
variable-size graphs batched with node/edge offsets. One deviation from sg2im: `GraphTripleConv` adds its input to
its output (a residual, no parameters); sg2im's plain version maps every isolated node to the same constant
`net2(0)`, which would erase the identity of isolated objects.

`SGEncoder` is a diffusers model (`ModelMixin` + `ConfigMixin`): its widths are its registered config, and
`save_pretrained` / `from_pretrained` are diffusers' own (``config.json`` and
``diffusion_pytorch_model.safetensors``), so an `SDXLSGPipeline` folder loads it like any other component.

The parameter count at full size is 14,701,057 (`python -m training.sg_encoder --count-params`), the 14.70M of
the LAION-SG paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from pydantic import Field
from torch import nn

from schemas.settings import JobSettings, parse_settings, settings_parser
from training.sg_features import SGFeatures

__all__ = [
    "GraphTripleConv",
    "GraphTripleConvNet",
    "SGEncoder",
    "SGEncoderSettings",
    "main",
]

POOLINGS = ("avg", "sum")


# ---------------------------------------------------------------------------------------------- the network


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU after every layer (sg2im's `build_mlp` with final non-linearity), Kaiming init."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        linear = nn.Linear(d_in, d_out)
        nn.init.kaiming_normal_(linear.weight)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers)


class GraphTripleConv(nn.Module):
    """sg2im's triple graph convolution, plus a residual.

    Per edge, an MLP on ``[subject; predicate; object]`` gives new subject, predicate and object vectors; the
    subject and object vectors are pooled (average or sum) onto their nodes; a second MLP maps the pooled vector
    to the new node vector.
    """

    def __init__(self, dim: int, hidden_dim: int, pooling: str = "avg", residual: bool = True):
        super().__init__()
        self.dim, self.hidden_dim, self.pooling, self.residual = dim, hidden_dim, pooling, residual
        self.net1 = _mlp([3 * dim, hidden_dim, 2 * hidden_dim + dim])
        self.net2 = _mlp([hidden_dim, hidden_dim, dim])

    def forward(self, obj: torch.Tensor, pred: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, o = edges[:, 0], edges[:, 1]
        messages = self.net1(torch.cat([obj[s], pred, obj[o]], dim=1))
        new_s, new_p, new_o = messages.split([self.hidden_dim, self.dim, self.hidden_dim], dim=1)
        pooled = new_s.new_zeros((obj.shape[0], self.hidden_dim)).index_add_(0, s, new_s).index_add_(0, o, new_o)
        if self.pooling == "avg":
            ones = new_s.new_ones(s.shape[0])
            counts = new_s.new_zeros(obj.shape[0]).index_add_(0, s, ones).index_add_(0, o, ones)
            pooled = pooled / counts.clamp(min=1).unsqueeze(1)
        new_obj = self.net2(pooled)
        if self.residual:
            return new_obj + obj, new_p + pred
        return new_obj, new_p


class GraphTripleConvNet(nn.Module):
    """A stack of `GraphTripleConv`s of the same width."""

    def __init__(self, dim: int, hidden_dim: int, num_layers: int, pooling: str = "avg", residual: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(GraphTripleConv(dim, hidden_dim, pooling, residual) for _ in range(num_layers))

    def forward(self, obj: torch.Tensor, pred: torch.Tensor, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            obj, pred = layer(obj, pred, edges)
        return obj, pred


class SGEncoder(ModelMixin, ConfigMixin):
    """The trainable part of SDXL-SG: frozen-encoder features of a graph -> (prompt_embeds, pooled).

    The defaults are the full SDXL-SG sizes; `for_text_encoders` takes `text_dim` from loaded text encoders.
    """

    @register_to_config
    def __init__(
        self,
        text_dim: int = 2048,  # width of SDXL's concatenated penultimate hidden states (768 + 1280)
        hidden_dim: int = 512,  # node/edge width inside the graph network
        mlp_hidden_dim: int = 512,  # hidden width of the MLPs inside every GraphTripleConv
        num_layers: int = 5,  # layers of the GraphTripleConvNet that follows the first GraphTripleConv
        pooling: str = "avg",  # how edge messages are pooled onto nodes: "avg" (sg2im's choice) or "sum"
        residual: bool = True,  # add each conv's input to its output (keeps isolated nodes distinct)
        sequence_length: int = 77,  # SDXL's token sequence length
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be 'avg' or 'sum', got {pooling!r}")
        self.project_in = nn.Linear(text_dim, hidden_dim)
        self.gconv = GraphTripleConv(hidden_dim, mlp_hidden_dim, pooling, residual)
        self.gconv_net = GraphTripleConvNet(hidden_dim, mlp_hidden_dim, num_layers, pooling, residual)
        self.project_out = nn.Linear(hidden_dim, text_dim)
        self.alpha = nn.Parameter(torch.zeros(()))

    @classmethod
    def for_text_encoders(cls, text_encoder: nn.Module, text_encoder_2: nn.Module, **widths: Any) -> SGEncoder:
        """An encoder whose `text_dim` matches the two loaded text encoders (768 + 1280 for SDXL); `widths`
        set the other arguments."""
        text_dim = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
        return cls(text_dim=text_dim, **widths)

    def forward(self, features: SGFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        index = features.index
        num_nodes = features.node_feats.shape[0]
        dtype = self.project_in.weight.dtype
        x = self.project_in(torch.cat([features.node_feats, features.edge_feats]).to(dtype))
        obj, pred = self.gconv(x[:num_nodes], x[num_nodes:], index.edges)
        obj, pred = self.gconv_net(obj, pred, index.edges)
        out = self.project_out(F.normalize(torch.cat([obj, pred]), dim=-1))
        batch, length, width = features.token_embeds.shape
        delta = out.new_zeros((batch * length, width)).index_add_(0, index.token_index, out[index.token_source])
        gated = (self.alpha * delta).view(batch, length, width)
        return features.token_embeds + gated.to(features.token_embeds.dtype), features.pooled


class SGEncoderSettings(JobSettings):
    """Settings of `python -m training.sg_encoder`."""

    count_params: bool = Field(False, description="print the parameter count at full SDXL size")


def main(argv: list[str] | None = None) -> int:
    prog, description = "python -m training.sg_encoder", "SDXL-SG scene-graph encoder"
    settings = parse_settings(SGEncoderSettings, argv, prog=prog, description=description)
    if not settings.count_params:
        settings_parser(SGEncoderSettings, prog=prog, description=description)[0].print_help()
        return 2
    encoder = SGEncoder()
    total = encoder.num_parameters()
    for name, module in encoder.named_children():
        print(f"{name:12s} {sum(p.numel() for p in module.parameters()):>12,d}")
    print(f"{'alpha':12s} {encoder.alpha.numel():>12,d}")
    print(f"{'total':12s} {total:>12,d}  ({total / 1e6:.2f}M; LAION-SG reports 14.70M)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
