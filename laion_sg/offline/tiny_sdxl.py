"""A tiny random-weight SDXL checkpoint for tests and the offline demo.

`build_tiny_sdxl(out_dir)` writes a `StableDiffusionXLPipeline.save_pretrained` directory with SDXL's layout
(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler), so the normal loading code works::

    from diffusers import StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(out_dir)
    image = pipe("a cat", height=64, width=64, num_inference_steps=2).images[0]

What is kept from SDXL: the UNet's text_time conditioning (pooled text embedding of text_encoder_2 plus six
micro-conditioning numbers), cross-attention over the concatenated penultimate hidden states of both CLIP text
encoders (here 32 + 64 = 96 wide), a VAE with a downsampling factor of 8, SDXL's scheduler config, and the real
49408-token CLIP BPE vocabulary (taken from the copy that open_clip ships).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_tiny_sdxl"]

_TIME_EMBED_DIM = 8
_PROJECTION_DIM = 32


def _clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers `CLIPTokenizer` with OpenAI CLIP's vocabulary, read from open_clip's bundled BPE file.

    SDXL's `tokenizer` pads with ``<|endoftext|>``, its `tokenizer_2` with ``!``.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    source = SimpleTokenizer()
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): index for token, index in source.encoder.items()}
    merges = sorted(source.bpe_ranks, key=source.bpe_ranks.__getitem__)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _text_encoders():
    """SDXL's two CLIP text encoders, shrunk: CLIP-L-like (32 wide) and OpenCLIP-bigG-like with projection (64)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "num_hidden_layers": 2,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "projection_dim": _PROJECTION_DIM,
    }
    text_encoder = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, hidden_act="quick_gelu", **common)
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, hidden_act="gelu", **common)
    )
    return text_encoder, text_encoder_2


def _unet(cross_attention_dim: int):
    """A two-level SDXL-style UNet with text_time added conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=_PROJECTION_DIM + 6 * _TIME_EMBED_DIM,
        norm_num_groups=8,
    )


def _vae():
    """A four-level (downsampling factor 8) KL autoencoder with SDXL's latent scaling factor."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )


def _scheduler():
    """SDXL-base-1.0's scheduler config."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        timestep_spacing="leading",
        steps_offset=1,
        use_karras_sigmas=False,
    )


def build_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight SDXL pipeline to `out_dir` and return the path.

    Deterministic: the same `seed` gives byte-identical weights.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline

    out = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = _text_encoders()
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=_clip_tokenizer(),
            tokenizer_2=_clip_tokenizer(pad_token="!"),
            unet=_unet(text_encoder.config.hidden_size + text_encoder_2.config.hidden_size),
            scheduler=_scheduler(),
            add_watermarker=False,
        )
    pipe.save_pretrained(out)
    return out
