"""The settings of a training run (`python -m training.train --help`): `TrainSettings` and its nested
`EncoderSettings`, and where a run's files go (`run_dir`)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from torch import nn

from schemas.settings import JobSettings
from training.image_transforms import ImageConfig
from training.sg_encoder import POOLINGS, SGEncoder

__all__ = ["DEFAULT_MAX_BAD_FRACTION", "EncoderSettings", "RayTrainJobSettings", "TrainConfig", "TrainSettings", "run_dir"]

DEFAULT_MAX_BAD_FRACTION = 0.01

log = logging.getLogger(__name__)

_ENCODER_ARGS = inspect.signature(SGEncoder.__init__).parameters


class EncoderSettings(BaseModel):
    """`SGEncoder`'s arguments (``--encoder.hidden-dim 16`` or ``encoder: {hidden_dim: 16}`` in a `--config`
    YAML); `text_dim` and `sequence_length` come from the loaded text encoders."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    hidden_dim: int = Field(_ENCODER_ARGS["hidden_dim"].default, ge=1, description="node/edge width of the graph network")
    mlp_hidden_dim: int = Field(
        _ENCODER_ARGS["mlp_hidden_dim"].default, ge=1, description="hidden width of the MLPs of every graph convolution"
    )
    num_layers: int = Field(
        _ENCODER_ARGS["num_layers"].default, ge=0, description="graph convolutions after the first one"
    )
    pooling: Literal[POOLINGS] = Field(  # type: ignore[valid-type]
        _ENCODER_ARGS["pooling"].default, description="how edge messages are pooled onto their nodes"
    )
    residual: bool = Field(
        _ENCODER_ARGS["residual"].default, description="add each convolution's input to its output"
    )


# EncoderSettings mirrors SGEncoder's arguments; an argument added there must be added here.
if set(EncoderSettings.model_fields) != set(_ENCODER_ARGS) - {"self", "text_dim", "sequence_length"}:
    raise TypeError("EncoderSettings and SGEncoder.__init__ have different arguments")


class RayTrainJobSettings(JobSettings):
    """Checkpointing, logging, data and failure settings of the newer Ray Train jobs (`training.lora`,
    `training.pretrain_sg`), with `training.train`'s defaults."""

    checkpoint_every: int = Field(
        500, ge=1, description="steps between checkpoints, each reported to Ray Train (one is also written at the end)"
    )
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept (the latest ones)")
    log_every: int = Field(50, ge=1, description="steps between rank 0's progress lines (TensorBoard gets every step)")
    shuffle_buffer: int = Field(64, ge=0, description="rows in Ray Data's local shuffle buffer (0: no shuffle)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts Ray Train allows (-1: unlimited)")
    max_bad_fraction: float = Field(
        DEFAULT_MAX_BAD_FRACTION,
        ge=0,
        le=1,
        description="unusable rows (the job's docstring says which) are skipped and counted; the run fails once "
        "they exceed this fraction of the train split",
    )


class TrainSettings(JobSettings):
    """Everything a run needs (`python -m training.train --help` lists it); a `--config` YAML sets any of it, flags
    win. Ray Train hands it to every worker as `model_dump()`, rebuilt there with `model_validate`."""

    input: str = Field(description="Parquet dataset: a pipelines.export output, train/ + val/ dirs, or rows")
    model: str = Field(description="base SDXL: diffusers directory or hub id")
    output: str = Field(description="storage path: checkpoints in OUTPUT/NAME, the pipeline in OUTPUT/final")
    cache: str | None = Field(None, description="training.precompute output to read instead of raw images")
    name: str = Field("sdxl_sg", description="run name: checkpoints and TensorBoard events in OUTPUT/NAME")
    max_steps: int = Field(1000, ge=1, description="optimizer steps of the whole run")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each with --use-gpu)")
    use_gpu: bool = Field(False, description="train on GPUs (bf16 autocast)")
    batch_size: int = Field(1, ge=1, description="rows per batch per worker")
    lr: float = Field(5e-4, gt=0, description="peak learning rate of AdamW (warmup, then cosine decay)")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(10_000, ge=0, description="linear warmup steps of the learning rate")
    grad_clip: float = Field(10.0, gt=0, description="gradient norm clipping")
    checkpoint_every: int = Field(
        500, ge=1, description="steps between checkpoints, each reported to Ray Train (one is also written at the end)"
    )
    log_every: int = Field(50, ge=1, description="steps between rank 0's progress lines (TensorBoard gets every step)")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept (the latest ones)")
    val_every: int = Field(500, ge=0, description="steps between validations (0: validate only at the end)")
    val_batches: int = Field(16, ge=0, description="validation batches per worker (0: no validation)")
    resolution: int = Field(512, ge=8, multiple_of=8, description="square training resolution in pixels")
    crop: Literal["center", "none"] = Field(
        "center", description="center: resize the shorter side and center-crop; none: squash the whole image"
    )
    flip: bool = Field(False, description="random horizontal flips, left/right swapped in the graph (not with --cache)")
    gradient_checkpointing: bool = Field(False, description="gradient checkpointing in the frozen UNet (less memory)")
    seed: int = Field(0, description="seed of the encoder's initialisation, noise, timesteps, flips and data order")
    shuffle_buffer: int = Field(64, ge=0, description="rows in Ray Data's local shuffle buffer (0: no shuffle)")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts Ray Train allows (-1: unlimited)")
    max_bad_fraction: float = Field(
        DEFAULT_MAX_BAD_FRACTION,
        ge=0,
        le=1,
        description="unusable rows (corrupt, truncated or missing image, null or empty scene graph, broken cache "
        "row) are skipped, counted and logged with their keys; the run fails once they exceed this fraction of the "
        "train split (0 fails on the first, 1 never). Rows whose annotation failed are skipped but not counted",
    )
    encoder: EncoderSettings = Field(default_factory=EncoderSettings, description="SG encoder widths")
    init_sg_encoder: Path | None = Field(
        None,
        description="start from this SGEncoder folder (e.g. training.pretrain_sg's OUTPUT/final) instead of a "
        "random graph network; its widths must equal --encoder.*; its gate alpha is reset to 0",
    )

    @model_validator(mode="after")
    def _init_encoder_matches(self) -> TrainSettings:
        """Refuse an `init_sg_encoder` saved with other widths than `encoder` (the run's record must not lie)."""
        if self.init_sg_encoder is not None:
            if not (self.init_sg_encoder / SGEncoder.config_name).is_file():
                missing = SGEncoder.config_name
                raise ValueError(f"{self.init_sg_encoder} is not an SGEncoder folder (no {missing})")
            saved = SGEncoder.load_config(self.init_sg_encoder)
            wanted = self.encoder.model_dump()
            if wrong := {k: saved.get(k) for k, v in wanted.items() if saved.get(k) != v}:
                raise ValueError(
                    f"{self.init_sg_encoder} was saved with {wrong}, but --encoder.* give "
                    f"{ {k: wanted[k] for k in wrong} }: pass the pre-training's --encoder.* widths"
                )
        return self

    def initial_encoder(self, text_encoders: Sequence[nn.Module]) -> SGEncoder:
        """The SG encoder before step 1: `init_sg_encoder` loaded, else a fresh one of `encoder`'s widths
        (random graph network). Either way alpha is 0, so training starts from plain SDXL."""
        if self.init_sg_encoder is None:
            return SGEncoder.for_text_encoders(*text_encoders, **self.encoder.model_dump())
        encoder = SGEncoder.from_pretrained(self.init_sg_encoder)
        text_dim = sum(e.config.hidden_size for e in text_encoders)
        if encoder.config.text_dim != text_dim:
            raise ValueError(f"{self.init_sg_encoder} has text_dim {encoder.config.text_dim}, {self.model}'s "
                             f"text encoders give {text_dim}")  # fmt: skip
        if float(encoder.alpha.detach()) != 0.0:
            log.warning("%s has alpha %g: reset to 0 (training starts from plain SDXL)", self.init_sg_encoder,
                        float(encoder.alpha.detach()))  # fmt: skip
            encoder.alpha.data.zero_()
        return encoder

    @field_validator("flip")
    @classmethod
    def _no_flip_from_cache(cls, flip: bool, info: ValidationInfo) -> bool:
        if flip and info.data.get("cache"):
            raise ValueError("the cache holds unflipped latents and texts: train from a cache with flip off")
        return flip

    @property
    def image_config(self) -> ImageConfig:
        return ImageConfig(resolution=self.resolution, crop=self.crop, flip=self.flip, seed=self.seed)


# The name before the settings layer, used by the tests and scripts that build a run by keyword.
TrainConfig = TrainSettings


def run_dir(config: TrainSettings) -> Path:
    """The directory of a Ray Train run, ``output/name`` (the trainer's storage path and run name): its
    checkpoints, TensorBoard events and loss plot."""
    return Path(config.output) / config.name
