"""`SDXLSGPipeline`: Stable Diffusion XL conditioned on a scene graph through the trained `SGEncoder`.

    from training.pipeline import SDXLSGPipeline

    pipe = SDXLSGPipeline.from_pretrained("runs/final")        # or a hub id; base SDXL from the saved reference
    image = pipe(scene_graph=graph, num_inference_steps=40, generator=torch.Generator().manual_seed(0)).images[0]

`scene_graph=` takes a `SceneGraph`, our JSON (string or dict), a LAION-SG record (``items``/``relations``) or
sg2im JSON, or a list of those. Everything else (`height`, `guidance_scale`, `generator`, `negative_prompt`, ...)
is `StableDiffusionXLPipeline.__call__`'s. The unconditional branch of classifier-free guidance is SDXL's own:
zeros when `force_zeros_for_empty_prompt` (SDXL base's setting) and no negative is given, else the encoded
`negative_prompt` text; `negative_scene_graph=` encodes a graph instead (an empty graph is the empty text).

Saved layout (safetensors only)::

    DIR/sdxl_sg.json          {"format": "sdxl-sg", "version": 1, "base_model": null | "<hub id or directory>"}
    DIR/sg_encoder/           config.json + model.safetensors
    DIR/{unet,vae,...}/       SDXL's own components, only when base_model is null
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from schemas import SceneGraph
from training.sg_encoder import SGEncoder, encode_graphs
from training.sg_graphs import prepare_graphs

__all__ = ["MANIFEST", "SDXLSGPipeline", "as_scene_graph"]

MANIFEST = "sdxl_sg.json"
FORMAT = "sdxl-sg"
SG_ENCODER_DIR = "sg_encoder"

GraphLike = SceneGraph | str | bytes | Mapping[str, Any]


def as_scene_graph(value: GraphLike) -> SceneGraph:
    """A validated `SceneGraph` from a graph, our JSON, a LAION-SG record or sg2im JSON."""
    if isinstance(value, SceneGraph):
        graph = value
    else:
        data = json.loads(value) if isinstance(value, str | bytes) else value
        if not isinstance(data, Mapping):
            raise TypeError(f"a scene graph must be a SceneGraph, JSON object or mapping, got {type(data).__name__}")
        if "items" in data:
            graph = SceneGraph.from_laion_sg(data)
        elif "relationships" in data:
            graph = SceneGraph.from_sg2im(data)
        else:
            graph = SceneGraph.from_json(data)
    return graph.validate()


def _as_graph_list(value: GraphLike | Sequence[GraphLike]) -> list[SceneGraph]:
    if isinstance(value, list | tuple):
        return [as_scene_graph(v) for v in value]
    return [as_scene_graph(value)]


class SDXLSGPipeline(StableDiffusionXLPipeline):
    """`StableDiffusionXLPipeline` plus an `sg_encoder` that turns scene graphs into the text conditioning."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->sg_encoder->image_encoder->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        sg_encoder: SGEncoder,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(sg_encoder=sg_encoder)

    @torch.no_grad()
    def encode_scene_graphs(self, graphs: GraphLike | Sequence[GraphLike]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled_prompt_embeds) of one graph or a list, on the execution device."""
        inputs = prepare_graphs(_as_graph_list(graphs), [self.tokenizer, self.tokenizer_2])
        features = encode_graphs(inputs, [self.text_encoder, self.text_encoder_2])
        prompt_embeds, pooled = self.sg_encoder(features.to(self.sg_encoder.device))
        dtype, device = self.text_encoder_2.dtype, self._execution_device
        return prompt_embeds.to(device, dtype), pooled.to(device, dtype)

    @torch.no_grad()
    def __call__(
        self,
        scene_graph: GraphLike | Sequence[GraphLike] | None = None,
        *,
        negative_scene_graph: GraphLike | Sequence[GraphLike] | None = None,
        **kwargs: Any,
    ):
        """Generate from `scene_graph`; other arguments as `StableDiffusionXLPipeline.__call__`."""
        if scene_graph is None:
            raise ValueError("SDXLSGPipeline needs scene_graph=; turn a text prompt into a graph first")
        if kwargs.get("prompt") is not None or kwargs.get("prompt_embeds") is not None:
            raise ValueError("SDXLSGPipeline is conditioned by scene_graph=, not prompt= or prompt_embeds=")
        prompt_embeds, pooled = self.encode_scene_graphs(scene_graph)
        if negative_scene_graph is not None:
            if kwargs.get("negative_prompt") is not None:
                raise ValueError("pass negative_scene_graph= or negative_prompt=, not both")
            negative, negative_pooled = self.encode_scene_graphs(negative_scene_graph)
            if negative.shape[0] == 1:  # one negative graph for the whole batch
                negative = negative.expand(prompt_embeds.shape[0], -1, -1)
                negative_pooled = negative_pooled.expand(pooled.shape[0], -1)
            kwargs |= {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
        return super().__call__(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, **kwargs)

    # ------------------------------------------------------------------------------------------ save / load

    @staticmethod
    def save_encoder(directory: str | Path, sg_encoder: SGEncoder, base_model: str | Path | None) -> Path:
        """Write the SG encoder and the manifest. `base_model` None means SDXL's components are (to be) in
        `directory`; otherwise it is the hub id or directory loaded as the base."""
        out = Path(directory)
        sg_encoder.save_pretrained(out / SG_ENCODER_DIR)
        manifest = {"format": FORMAT, "version": 1, "base_model": None if base_model is None else str(base_model)}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return out

    def save_pretrained(self, save_directory: str | Path, base_model: str | Path | None = None, **kwargs: Any) -> None:
        """Save the SG encoder plus either SDXL's components (default) or only a reference to `base_model`."""
        if base_model is None:
            components = {k: v for k, v in self.components.items() if k != "sg_encoder"}
            StableDiffusionXLPipeline(
                **components,
                force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
                add_watermarker=self.watermark is not None,
            ).save_pretrained(save_directory, **kwargs)
        self.save_encoder(save_directory, self.sg_encoder, base_model)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, base_model: str | Path | None = None, **kwargs: Any
    ) -> SDXLSGPipeline:
        """Load a saved SDXL-SG directory (or hub repo). `base_model` overrides the saved base reference; other
        keyword arguments (`torch_dtype`, `variant`, ...) go to `StableDiffusionXLPipeline.from_pretrained`."""
        source = str(pretrained_model_name_or_path)
        root = Path(source)
        if not root.is_dir():
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(source, allow_patterns=[MANIFEST, f"{SG_ENCODER_DIR}/*"]))
        manifest = json.loads((root / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{source} is not an SDXL-SG pipeline ({MANIFEST} format {manifest.get('format')!r})")
        base = base_model or manifest["base_model"] or source
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        sdxl = StableDiffusionXLPipeline.from_pretrained(base, **kwargs)
        encoder = SGEncoder.from_pretrained(root / SG_ENCODER_DIR)
        if kwargs.get("torch_dtype") is not None:
            encoder = encoder.to(kwargs["torch_dtype"])
        return cls(
            **sdxl.components,
            sg_encoder=encoder.requires_grad_(False).eval(),
            force_zeros_for_empty_prompt=sdxl.config.force_zeros_for_empty_prompt,
            add_watermarker=sdxl.watermark is not None,
        )
