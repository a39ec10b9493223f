"""One SDXL-SG training step as plain functions (no Ray): frozen SDXL, trainable `SGEncoder`, epsilon-MSE.

Noise and timesteps of a step come from a generator seeded with ``step_seed(seed, step, rank)``, never from a
running RNG, so a run resumed from a checkpoint draws exactly the noise an uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.batches import TrainBatch
from training.sg_encoder import SGEncoder
from training.sg_features import SGFeatures, encode_graphs

__all__ = [
    "VALIDATION_STREAM",
    "FrozenSDXL",
    "build_lr_scheduler",
    "build_optimizer",
    "diffusion_loss",
    "load_tokenizers",
    "step_seed",
    "train_step",
]

VALIDATION_STREAM = 2**31 - 1  # the `step` slot of `step_seed` used for validation batches


def step_seed(seed: int, step: int, rank: int, index: int = 0) -> int:
    """A 63-bit seed for (run seed, global step, worker rank, batch index), independent of any RNG state."""
    state = np.random.SeedSequence([seed, step, rank, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def load_tokenizers(model: str | Path) -> list[Any]:
    """SDXL's two CLIP tokenizers."""
    from transformers import CLIPTokenizer

    return [CLIPTokenizer.from_pretrained(model, subfolder=sub) for sub in ("tokenizer", "tokenizer_2")]


@dataclass
class FrozenSDXL:
    """The frozen parts of SDXL, in eval mode with `requires_grad` off. `unet` is None for encoding-only use."""

    vae: nn.Module
    text_encoders: list[nn.Module]
    tokenizers: list[Any]
    unet: nn.Module | None
    noise_scheduler: Any

    @classmethod
    def load(
        cls, model: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, unet: bool = True
    ) -> FrozenSDXL:
        """Load from a diffusers SDXL directory or hub id. Training uses `DDPMScheduler` with SDXL's schedule."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        def frozen(module: nn.Module) -> nn.Module:
            return module.requires_grad_(False).eval().to(device)

        return cls(
            vae=frozen(AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype)),
            text_encoders=[
                frozen(CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype)),
                frozen(CLIPTextModelWithProjection.from_pretrained(model, subfolder="text_encoder_2", dtype=dtype)),
            ],
            tokenizers=load_tokenizers(model),
            unet=frozen(UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype)) if unet else None,
            noise_scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler"),
        )

    def modules(self) -> Iterable[nn.Module]:
        return [m for m in (self.vae, *self.text_encoders, self.unet) if m is not None]

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (the posterior mean), float32."""
        vae = self.vae
        latents = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.mode()
        return latents.float() * vae.config.scaling_factor

    def encode(self, batch: TrainBatch) -> tuple[torch.Tensor, SGFeatures]:
        """Latents and frozen text features of a batch: from the cache when it has them, else by running the
        frozen VAE and text encoders."""
        if batch.latents is not None and batch.features is not None:
            return batch.latents, batch.features
        if batch.pixel_values is None or batch.graphs is None:
            raise ValueError("a TrainBatch needs either latents + features or pixel_values + graphs")
        return self.encode_images(batch.pixel_values), encode_graphs(batch.graphs, self.text_encoders)


def diffusion_loss(
    frozen: FrozenSDXL, encoder: nn.Module, batch: TrainBatch, *, seed: int, autocast: bool = False
) -> torch.Tensor:
    """Epsilon- (or v-) prediction MSE of the frozen UNet conditioned through `encoder`, for one seeded draw of
    noise and timesteps. `batch` must already be on the UNet's device."""
    unet, scheduler = frozen.unet, frozen.noise_scheduler
    latents, features = frozen.encode(batch)
    device = latents.device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction type {scheduler.config.prediction_type!r}")
    with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        prompt_embeds, pooled = encoder(features)
        prediction = unet(
            noisy.to(unet.dtype),
            timesteps,
            encoder_hidden_states=prompt_embeds.to(unet.dtype),
            added_cond_kwargs={"text_embeds": pooled.to(unet.dtype), "time_ids": batch.time_ids.to(unet.dtype)},
        ).sample
    return F.mse_loss(prediction.float(), target.float())


def build_optimizer(encoder: SGEncoder, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices only (not on biases or the gate alpha, whose decay would pull the
    model back toward plain SDXL)."""
    decay = [p for p in encoder.parameters() if p.ndim >= 2]
    no_decay = [p for p in encoder.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup then cosine decay to 0 at `total_steps` (diffusers' schedule)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def train_step(
    frozen: FrozenSDXL,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    batch: TrainBatch,
    *,
    seed: int,
    grad_clip: float = 10.0,
    autocast: bool = False,
) -> dict[str, float]:
    """Forward, backward, clip, optimizer and LR-scheduler step. `model` is the `SGEncoder`, possibly DDP-wrapped.

    Returns the loss, the gradient norm before clipping and the learning rate used.
    """
    lr = lr_scheduler.get_last_lr()[0]
    optimizer.zero_grad(set_to_none=True)
    loss = diffusion_loss(frozen, model, batch, seed=seed, autocast=autocast)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    lr_scheduler.step()
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr)}
