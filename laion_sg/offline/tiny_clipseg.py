"""A tiny random-weight CLIPSeg text-prompted segmenter for tests and the offline demo.

`build_tiny_clipseg(out_dir)` writes a directory in the layout of a hub checkpoint such as
``CIDAS/clipseg-rd64-refined``, so the normal loading code (`pipelines.compositing.masks.ConceptSegmenter`)
works on it unchanged::

    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
    processor = CLIPSegProcessor.from_pretrained(out_dir)
    model = CLIPSegForImageSegmentation.from_pretrained(out_dir)

What is kept from ``clipseg-rd64-refined``: the architecture (CLIP text and vision towers, a FiLM-conditioned
decoder over activations taken from several vision layers, the "refined" two-step transposed convolution back
to the input resolution), the image processor's stretch-resize to a square with ImageNet normalisation (here
to 64 px with 16 px patches: 64 x 64 logits per image), and the tokenizer (OpenAI CLIP's 49408-token BPE
padded with ``<|endoftext|>``, as the hub's).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_CLIPSEG_IMAGE_SIZE", "build_tiny_clipseg"]

TINY_CLIPSEG_IMAGE_SIZE = 64
_PATCH_SIZE = 16
_MAX_TOKENS = 16  # max_position_embeddings and the tokenizer's model_max_length (the hub's: 77)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the hub processor's normalisation
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _config():
    """A `CLIPSegConfig` with two-layer, 32-wide text and vision towers and a 16-wide decoder reading both
    vision layers (``extract_layers`` index the encoder's layers from 0; the hub's are ``[3, 6, 9]`` of 12).

    The decoder's linear and convolution layers are drawn with std 0.3 (`initializer_range`; transformers'
    default, 1.0, gives logits in the hundreds, 0.02 gives logits within 0.01 of 0): logits spread with a
    standard deviation near 1.5, so foreground probabilities cover (0, 1) instead of sitting at 0, 0.5 or 1.
    """
    from transformers import CLIPSegConfig

    common = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
    return CLIPSegConfig(
        text_config={**common, "vocab_size": 49408, "max_position_embeddings": _MAX_TOKENS},
        vision_config={**common, "image_size": TINY_CLIPSEG_IMAGE_SIZE, "patch_size": _PATCH_SIZE},
        projection_dim=32,
        extract_layers=[0, 1],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
        initializer_range=0.3,
    )


def build_tiny_clipseg(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight CLIPSeg (safetensors) and its processor to `out_dir`; return the path.

    Deterministic: the same `seed` gives byte-identical weights.
    """
    import torch
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    from laion_sg.offline.tiny_sdxl import _clip_tokenizer

    out = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(_config())
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = _clip_tokenizer()
    tokenizer.model_max_length = _MAX_TOKENS
    image_processor = ViTImageProcessor(
        size={"height": TINY_CLIPSEG_IMAGE_SIZE, "width": TINY_CLIPSEG_IMAGE_SIZE},
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
    )
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out
