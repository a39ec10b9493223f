"""Inference with a `training.lora` result: `LoraSDXLPipeline`, the base SDXL named in ``lora.json`` plus the
LoRA weights (the benchmark adapter ``sdxl-lora``). Imports no training code, so generation actors stay light."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import StableDiffusionXLPipeline

from training.checkpoints import FINAL_DIR

__all__ = ["LORA_JSON", "LORA_WEIGHTS", "LoraSDXLPipeline"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA weight file name
LORA_JSON = "lora.json"


class LoraSDXLPipeline(StableDiffusionXLPipeline):
    """SDXL with a `training.lora` result: the base named in ``lora.json`` plus the LoRA weights."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> LoraSDXLPipeline:
        """`pretrained_model_name_or_path` is a run directory or its ``final/``; `kwargs` (``dtype=``, ...) go
        to the base's `StableDiffusionXLPipeline.from_pretrained` (safetensors only)."""
        final = Path(pretrained_model_name_or_path)
        if not (final / LORA_JSON).exists():
            final = final / FINAL_DIR
        base = json.loads((final / LORA_JSON).read_text())["base_model"]
        kwargs.setdefault("use_safetensors", True)
        pipe = super().from_pretrained(base, **kwargs)
        pipe.load_lora_weights(str(final), weight_name=LORA_WEIGHTS)
        return pipe
