"""A tiny random-weight open_clip model for tests and the offline demo.

`build_tiny_open_clip(out_dir)` writes open_clip's own hub layout (``open_clip_config.json`` with ``model_cfg``
and ``preprocess_cfg``, weights in ``open_clip_model.safetensors``), which open_clip loads from a local folder
through its ``local-dir:`` schema, exactly as it loads ``hf-hub:org/repo``::

    import open_clip
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(out_dir))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(out_dir))  # OpenAI CLIP's BPE, 77 tokens

The model is a ViT (64 px images, 16 px patches) and a text transformer with CLIP's 49408-token vocabulary,
both projecting to a 32-d joint embedding.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TINY_OPEN_CLIP_CONFIG", "build_tiny_open_clip"]

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_open_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight open_clip model to `out_dir` and return the path.

    Deterministic: the same `seed` gives byte-identical weights.
    """
    from dataclasses import asdict

    import torch
    from open_clip import CLIP
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.transform import PreprocessCfg
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**TINY_OPEN_CLIP_CONFIG)
    set_model_preprocess_cfg(model, asdict(PreprocessCfg(size=TINY_OPEN_CLIP_CONFIG["vision_cfg"]["image_size"])))
    save_config_for_hf(model, out / HF_CONFIG_NAME, model_config=TINY_OPEN_CLIP_CONFIG)
    save_file(model.state_dict(), out / HF_SAFE_WEIGHTS_NAME)
    return out
