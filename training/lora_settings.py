"""The settings of `python -m training.lora` (`LoraSettings`) and the peft `LoraConfig` they give."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from training.image_transforms import ImageConfig
from training.settings import RayTrainJobSettings

__all__ = ["TARGET_MODULES", "LoraSettings", "lora_config"]

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' SDXL LoRA example


class LoraSettings(RayTrainJobSettings):
    """Everything a LoRA run needs (`python -m training.lora --help`); a `--config` YAML sets any of it, flags
    win."""

    input: str = Field(
        description="exported dataset (Parquet; train split) with caption and spatial_caption columns"
    )
    model: str = Field(description="base SDXL: diffusers directory or hub id")
    output: str = Field(description="run directory: checkpoints in OUTPUT/NAME, the LoRA in OUTPUT/final")
    name: str = Field(
        "sdxl_lora", description="Ray Train run name: checkpoints and TensorBoard events in OUTPUT/NAME"
    )
    max_steps: int = Field(1000, ge=1, description="optimizer steps of the whole run")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each with --use-gpu)")
    use_gpu: bool = Field(
        False, description="train on GPUs (frozen weights in bf16, LoRA in float32, bf16 autocast)"
    )
    batch_size: int = Field(1, ge=1, description="rows per batch per worker")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of AdamW (warmup, then cosine decay)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps of the learning rate")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    rank: int = Field(16, ge=1, description="LoRA rank (lora_alpha = rank)")
    resolution: int = Field(1024, ge=8, multiple_of=8, description="square training resolution in pixels")
    crop: Literal["center", "none"] = Field(
        "center", description="center: resize the shorter side and center-crop; none: squash the whole image"
    )
    seed: int = Field(
        0, description="seed of the LoRA initialisation, noise, timesteps, captions, flips, data order"
    )
    spatial_probability: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the rows with a spatial caption that train on it in each epoch (exact to one row; "
        "SPRIGHT: 0.5)",
    )
    flip: Literal["off", "swap"] = Field(
        "swap",
        description="swap: mirror half of the images and swap left/right in their captions; off: no flips",
    )
    gradient_checkpointing: bool = Field(
        False, description="gradient checkpointing in the UNet (less memory)"
    )

    @property
    def cache(self) -> None:
        """No precompute cache (`training.contexts` reads ``cache or input``): captions vary per epoch."""
        return None

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig(
            resolution=self.resolution, crop=self.crop, flip=self.flip == "swap", seed=self.seed
        )


def lora_config(config: LoraSettings):
    """peft's `LoraConfig` of the run (diffusers' SDXL LoRA recipe)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.rank,
        lora_alpha=config.rank,
        init_lora_weights="gaussian",
        target_modules=list(TARGET_MODULES),
    )
