"""`SDXLSGPipeline`: Stable Diffusion XL conditioned on a scene graph through the trained `SGEncoder`.

    from training.pipeline import SDXLSGPipeline

    pipe = SDXLSGPipeline.from_pretrained("runs/final")        # a saved folder or a hub id
    image = pipe(scene_graph=graph, num_inference_steps=40, generator=torch.Generator().manual_seed(0)).images[0]

`scene_graph=` takes a `SceneGraph`, our JSON (string or dict), a LAION-SG record (``items``/``relations``) or
sg2im JSON, or a list of those. Everything else (`height`, `guidance_scale`, `generator`, `negative_prompt`, ...)
is `StableDiffusionXLPipeline.__call__`'s. The unconditional branch of classifier-free guidance is SDXL's own:
zeros when `force_zeros_for_empty_prompt` (SDXL base's setting) and no negative is given, else the encoded
`negative_prompt` text; `negative_scene_graph=` encodes a graph instead (an empty graph is the empty text).

Saved layout: a standard diffusers pipeline folder (`save_pretrained`, safetensors)::

    DIR/model_index.json      "_class_name": "SDXLSGPipeline" and every component by library and class,
                              among them "sg_encoder": ["training.sg_encoder", "SGEncoder"]
    DIR/sg_encoder/           config.json + diffusion_pytorch_model.safetensors
    DIR/{unet,vae,text_encoder,text_encoder_2,tokenizer,tokenizer_2,scheduler}/   SDXL's own components

It loads three ways: `SDXLSGPipeline.from_pretrained(DIR)`; diffusers' custom-pipeline route
`DiffusionPipeline.from_pretrained(DIR, custom_pipeline=training.pipeline.__file__, trust_remote_code=True)`
(diffusers runs a custom pipeline file only with that flag, which the caller sets; the file is this module, not
code from the hub; nothing here sets it by default); and `StableDiffusionXLPipeline.from_pretrained(DIR)` gives plain SDXL (the `sg_encoder` entry is ignored).
`SDXLSGPipeline.from_base(base, sg_encoder)` puts a trained encoder on top of a base SDXL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from schemas import GraphLike, SceneGraph, as_scene_graph
from training.sg_encoder import SGEncoder
from training.sg_features import encode_graphs
from training.sg_graphs import prepare_graphs

__all__ = ["SDXLSGPipeline"]

HUB_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]  # what from_pretrained reads
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "proxies", "force_download")

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
    def encode_scene_graphs(
        self, graphs: GraphLike | Sequence[GraphLike], long_prompt: bool = False, min_windows: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled_prompt_embeds) of one graph or a list, on the execution device. With
        `long_prompt` the SG text is encoded in 75-token windows (at least `min_windows`), concatenated along the
        sequence, so a graph whose text passes 77 tokens keeps all of it (`training.sg_graphs.prepare_graphs`)."""
        window = self.tokenizer.model_max_length - 2 if long_prompt else None
        inputs = prepare_graphs(_as_graph_list(graphs), [self.tokenizer, self.tokenizer_2], window, min_windows)
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
        long_prompt: bool = False,
        **kwargs: Any,
    ):
        """Generate from `scene_graph`; other arguments as `StableDiffusionXLPipeline.__call__`. `long_prompt`
        encodes graph texts beyond 77 tokens in windows (`encode_scene_graphs`); its unconditional branch is
        zeros or `negative_scene_graph` (a `negative_prompt` text would be cut at 77 tokens: refused)."""
        if scene_graph is None:
            raise ValueError("SDXLSGPipeline needs scene_graph=; turn a text prompt into a graph first")
        if kwargs.get("prompt") is not None or kwargs.get("prompt_embeds") is not None:
            raise ValueError("SDXLSGPipeline is conditioned by scene_graph=, not prompt= or prompt_embeds=")
        if long_prompt and kwargs.get("negative_prompt") is not None:
            raise ValueError("long_prompt takes negative_scene_graph=, not a negative_prompt text")
        prompt_embeds, pooled = self.encode_scene_graphs(scene_graph, long_prompt)
        if negative_scene_graph is not None:
            if kwargs.get("negative_prompt") is not None:
                raise ValueError("pass negative_scene_graph= or negative_prompt=, not both")
            windows = prompt_embeds.shape[1] // self.tokenizer.model_max_length
            negative, negative_pooled = self.encode_scene_graphs(negative_scene_graph, long_prompt, windows)
            if negative.shape[1] > prompt_embeds.shape[1]:  # a longer negative: both in as many windows
                windows = negative.shape[1] // self.tokenizer.model_max_length
                prompt_embeds, pooled = self.encode_scene_graphs(scene_graph, long_prompt, windows)
            if negative.shape[0] == 1:  # one negative graph for the whole batch
                negative = negative.expand(prompt_embeds.shape[0], -1, -1)
                negative_pooled = negative_pooled.expand(pooled.shape[0], -1)
            kwargs |= {"negative_prompt_embeds": negative, "negative_pooled_prompt_embeds": negative_pooled}
        return super().__call__(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, **kwargs)

    # ------------------------------------------------------------------------------------------ save / load

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> SDXLSGPipeline:
        """`DiffusionPipeline.from_pretrained`, safetensors only unless `use_safetensors` says otherwise.

        A hub repo is fetched with `huggingface_hub.snapshot_download` first (configs, tokenizer files and
        safetensors): diffusers' own download refuses a component whose library is not one of diffusers' pipeline
        modules, as ``training.sg_encoder`` is not."""
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        source = str(pretrained_model_name_or_path)
        if not Path(source).is_dir():
            from huggingface_hub import snapshot_download

            hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
            source = snapshot_download(source, allow_patterns=HUB_FILES, **hub)
        return super().from_pretrained(source, **kwargs)

    @classmethod
    def from_base(cls, base_model: str | Path, sg_encoder: SGEncoder, **kwargs: Any) -> SDXLSGPipeline:
        """SDXL's components from `base_model` (a diffusers directory or hub id; `kwargs` go to
        `StableDiffusionXLPipeline.from_pretrained`) with `sg_encoder`, cast to `dtype` when one is given."""
        kwargs.setdefault("use_safetensors", True)
        sdxl = StableDiffusionXLPipeline.from_pretrained(str(base_model), **kwargs)
        dtype = kwargs.get("torch_dtype", kwargs.get("dtype"))
        return cls(
            **sdxl.components,
            sg_encoder=sg_encoder if dtype is None else sg_encoder.to(dtype),
            force_zeros_for_empty_prompt=sdxl.config.force_zeros_for_empty_prompt,
            add_watermarker=sdxl.watermark is not None,
        )

    @classmethod
    def save_encoder(cls, directory: str | Path, sg_encoder: SGEncoder, base_model: str | Path) -> Path:
        """Write the complete pipeline folder of `sg_encoder` on top of the SDXL at `base_model` (what
        training exports): SDXL's components from the base, the SG encoder, and ``model_index.json``."""
        out = Path(directory)
        cls.from_base(base_model, sg_encoder).save_pretrained(out)
        return out
