"""A tiny random-weight OWLv2 open-vocabulary detector for tests and the offline demo.

`build_tiny_owlv2(out_dir)` writes a directory in the layout of a hub checkpoint such as
``google/owlv2-base-patch16-ensemble``, so the normal loading code works on it unchanged::

    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
    processor = AutoProcessor.from_pretrained(out_dir)  # an Owlv2Processor
    model = AutoModelForZeroShotObjectDetection.from_pretrained(out_dir)  # an Owlv2ForObjectDetection

What is kept from OWLv2: the architecture (CLIP text and vision towers, per-patch box, class and objectness
heads), the image processor's pad-to-square then resize (here to 64 px, 16 px patches: 16 boxes per image), and
the tokenizer (OpenAI CLIP's 49408-token BPE padded with ``!`` to 16 tokens, as the hub's).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_OWLV2_IMAGE_SIZE", "build_tiny_owlv2"]

TINY_OWLV2_IMAGE_SIZE = 64
_PATCH_SIZE = 16
_MAX_TOKENS = 16  # OWLv2's text length (max_position_embeddings and the tokenizer's model_max_length)


def _config():
    """An `Owlv2Config` with two-layer, 32-wide text and vision towers.

    The heads' linear layers are drawn with std 0.02 (`initializer_range`; transformers' default for OWLv2 is
    1.0, which saturates every box and score): boxes stay near their patches and scores spread around 0.45.
    """
    from transformers import Owlv2Config

    common = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
    return Owlv2Config(
        text_config={**common, "vocab_size": 49408, "max_position_embeddings": _MAX_TOKENS},
        vision_config={**common, "image_size": TINY_OWLV2_IMAGE_SIZE, "patch_size": _PATCH_SIZE},
        projection_dim=32,
        initializer_range=0.02,
    )


def build_tiny_owlv2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight OWLv2 model and its processor to `out_dir` and return the path.

    Deterministic: the same `seed` gives byte-identical weights.
    """
    import torch
    from transformers import Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from laion_sg.offline.tiny_sdxl import _clip_tokenizer

    out = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(_config())
    model.save_pretrained(out)
    tokenizer = _clip_tokenizer(pad_token="!")
    tokenizer.model_max_length = _MAX_TOKENS
    size = {"height": TINY_OWLV2_IMAGE_SIZE, "width": TINY_OWLV2_IMAGE_SIZE}
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size=size), tokenizer=tokenizer).save_pretrained(out)
    return out
