"""The settings of `python -m training.pretrain_sg`: `PretrainSettings`, with its frozen CLIP image encoder
(`CLIPImageSettings`) and loss weights (`LossWeights`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from training.settings import EncoderSettings, RayTrainJobSettings

__all__ = ["CLIPImageSettings", "LossWeights", "PretrainSettings"]


class CLIPImageSettings(BaseModel):
    """The frozen open_clip image encoder of the contrastive target (as `CLIPEmbedder` names it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        "ViT-B-32", description="open_clip model name or local open_clip folder (SGDiff: ViT-B/32)"
    )
    pretrained: str | None = Field(
        "openai", description="open_clip pretrained tag (ignored for a local folder)"
    )

    def open_clip_args(self) -> tuple[str, str | None]:
        """open_clip's model name and pretrained tag, as `CLIPEmbedder` makes them: a local folder loads
        through open_clip's ``local-dir:`` schema, and a schema name takes no tag."""
        name = "local-dir:" + self.model if Path(self.model).is_dir() else self.model
        return name, None if name.startswith(("local-dir:", "hf-hub:")) else self.pretrained


class LossWeights(BaseModel):
    """Weights of the two pre-training losses in their sum."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    contrastive: float = Field(1.0, ge=0, description="weight of the graph-image InfoNCE loss")
    masked: float = Field(1.0, ge=0, description="weight of the masked-item reconstruction loss")


class PretrainSettings(RayTrainJobSettings):
    """Everything a pre-training run needs (`python -m training.pretrain_sg --help`); a `--config` YAML sets
    any of it, flags win."""

    input: str = Field(description="exported dataset (Parquet; train split: images + scene graphs)")
    model: str = Field(description="base SDXL (diffusers directory or hub id): its frozen text encoders")
    output: str = Field(description="run directory: checkpoints in OUTPUT/NAME, the encoder in OUTPUT/final")
    name: str = Field(
        "sg_pretrain", description="Ray Train run name: checkpoints and TensorBoard in OUTPUT/NAME"
    )
    clip: CLIPImageSettings = Field(
        default_factory=CLIPImageSettings, description="frozen CLIP image encoder"
    )
    max_steps: int = Field(1000, ge=1, description="optimizer steps of the whole run")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each with --use-gpu)")
    use_gpu: bool = Field(False, description="train on GPUs (bf16 autocast)")
    batch_size: int = Field(32, ge=2, description="rows per batch per worker: the contrastive batch (>= 2)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of AdamW (warmup, then cosine decay)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (weight matrices only)")
    warmup_steps: int = Field(100, ge=0, description="linear warmup steps of the learning rate")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    seed: int = Field(0, description="seed of the initialisation, the masks and the data order")
    temperature: float = Field(0.07, gt=0, description="fixed InfoNCE temperature (CLIP's initial 0.07)")
    mask_probability: float = Field(
        0.15,
        ge=0,
        le=1,
        description="share of graph items (nodes and relations) masked per batch (at least one)",
    )
    loss_weights: LossWeights = Field(default_factory=LossWeights, description="weights of the two losses")
    encoder: EncoderSettings = Field(default_factory=EncoderSettings, description="SG encoder widths")

    @property
    def cache(self) -> None:
        """No precompute cache (`training.contexts` reads ``cache or input``): images go through CLIP here."""
        return None
