"""`python -m training.lora`: SPRIGHT-style spatial LoRA fine-tuning of SDXL's UNet with Ray Train.

    python -m training.lora --input DATA --model SDXL_DIR_OR_ID --output RUN --max-steps 15000 \
        --num-workers 8 --use-gpu --batch-size 4 --resolution 1024 --rank 16 --flip swap

`DATA` is an export with a ``spatial_caption`` column (`pipelines.export` of the ``spatial_caption`` task):
each epoch the share ``--spatial-probability`` (SPRIGHT's half by default, exact to one row) of the train rows that
have a spatial caption train on it and the others on their original caption; rows without one train on the
original caption and are counted (``fallback_captions``). With ``--flip swap`` half of the images are mirrored and
their caption has left and right swapped (`training.lora_data`). The VAE and both text encoders are frozen; LoRA adapters (peft, as diffusers'
``train_dreambooth_lora_sdxl.py``: rank `--rank`, alpha = rank, gaussian init, targets ``to_q``, ``to_k``,
``to_v``, ``to_out.0`` of every attention block) are the only trained weights of the UNet. The loss is
`training.step.diffusion_loss` (SDXL's epsilon/v MSE, time ids, pooled text embeds; noise and timesteps from
``step_seed``), conditioned on the captions as `StableDiffusionXLPipeline.encode_prompt` encodes them (77
tokens).

Runs like `training.train`: every worker runs `run_lora_worker` in a `training.contexts.RayContext` (gradients
of the LoRA weights averaged over the workers), a checkpoint every `--checkpoint-every` steps and at the end,
and re-running the same command resumes from the latest one (``RUN/NAME/checkpoint_*``; `train_lora_local`
without Ray: ``RUN/checkpoints/step_*``). A checkpoint holds ``lora.safetensors`` (the peft LoRA state),
``optimizer.safetensors`` + ``trainer_state.json`` (AdamW moments; param groups and LR schedule),
``state.json`` (step, epoch, batch in the epoch) and ``rng_rank<r>.safetensors``: no pickle. The result is
``RUN/final/pytorch_lora_weights.safetensors`` in diffusers' LoRA format
(`StableDiffusionXLPipeline.load_lora_weights(RUN/final)`) and ``RUN/final/lora.json`` (base model, settings);
`LoraSDXLPipeline.from_pretrained(RUN)` loads both (benchmark adapter ``sdxl-lora``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from schemas.runs import log_progress
from schemas.settings import parse_settings
from training.bad_rows import BadRows, NoUsableRowsError, first_usable_row
from training.batches import TrainBatch
from training.checkpoints import FINAL_DIR, STATE_JSON, TrainState, load_training_state, save_training_state
from training.jobs import TrainingJob
from training.lora_data import CaptionBatch, CaptionCollator, CaptionPlanner
from training.lora_pipeline import LORA_JSON, LORA_WEIGHTS, LoraSDXLPipeline
from training.lora_settings import TARGET_MODULES, LoraSettings, lora_config
from training.rows import find_splits
from training.step import FrozenSDXL, build_lr_scheduler, diffusion_loss
from training.step_loop import run_steps

__all__ = [
    "LORA_JSON",
    "LORA_WEIGHTS",
    "TARGET_MODULES",
    "LoraSDXLPipeline",
    "LoraSettings",
    "epoch_batches",
    "export_lora",
    "load_lora_checkpoint",
    "lora_config",
    "lora_loss",
    "lora_step",
    "lora_unet",
    "main",
    "parse_config",
    "preflight",
    "run_lora_worker",
    "save_lora_checkpoint",
    "text_pipeline",
    "train_lora",
    "train_lora_local",
]

log = logging.getLogger(__name__)

CKPT_LORA = "lora.safetensors"


# ---------------------------------------------------------------------------------------------- the step


def text_pipeline(frozen: FrozenSDXL) -> StableDiffusionXLPipeline:
    """An SDXL pipeline over the frozen parts, for `encode_prompt` (the very text conditioning of
    inference)."""
    encoders, tokenizers = frozen.text_encoders, frozen.tokenizers
    return StableDiffusionXLPipeline(
        vae=frozen.vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=frozen.unet, scheduler=frozen.noise_scheduler,
    )  # fmt: skip


def lora_loss(
    frozen: FrozenSDXL, text: StableDiffusionXLPipeline, batch: CaptionBatch, *, seed: int, autocast: bool
) -> torch.Tensor:
    """`diffusion_loss` of the (LoRA-adapted) ``frozen.unet`` on a caption batch. The VAE latents and the
    caption embeddings are computed here, without gradients, and handed over as a cached `TrainBatch` whose
    `features` are ``(prompt_embeds, pooled)``; the identity plays the conditioning encoder (SDXL-SG's
    `SGEncoder` slot)."""
    device = frozen.vae.device
    with torch.no_grad():
        latents = frozen.encode_images(batch.pixel_values.to(device))
        embeds, _, pooled, _ = text.encode_prompt(
            batch.captions, device=device, do_classifier_free_guidance=False
        )
    cached = TrainBatch(
        keys=batch.keys, time_ids=batch.time_ids.to(device), latents=latents, features=(embeds, pooled)
    )
    return diffusion_loss(frozen, torch.nn.Identity(), cached, seed=seed, autocast=autocast)


def _average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Mean of every worker's LoRA gradients (what DDP would do; the UNet stays unwrapped)."""
    if world_size == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def lora_step(
    frozen: FrozenSDXL,
    text: StableDiffusionXLPipeline,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    batch: CaptionBatch,
    seed: int,
    config: LoraSettings,
    ctx: Any,
) -> dict[str, float]:
    """Forward, backward, gradients averaged over the workers, clip, optimizer and LR-scheduler step.
    Returns this worker's loss, the gradient norm before clipping and the learning rate used."""
    lr = lr_scheduler.get_last_lr()[0]
    optimizer.zero_grad(set_to_none=True)
    loss = lora_loss(frozen, text, batch, seed=seed, autocast=ctx.device.type == "cuda")
    loss.backward()
    _average_gradients(params, ctx.world_size)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    lr_scheduler.step()
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr)}


# ---------------------------------------------------------------------------------------------- checkpoints


def _lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora_checkpoint(
    directory: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: TrainState,
    rank: int,
) -> None:
    """Rank 0 writes the LoRA weights, the optimizer and the step; every rank its RNG state (safetensors +
    JSON)."""
    from safetensors.torch import save_file

    if rank == 0:
        save_file(_lora_state(unet), str(directory / CKPT_LORA))
    save_training_state(directory, optimizer, lr_scheduler, state, rank)


def load_lora_checkpoint(
    directory: Path, unet: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler: Any, rank: int
) -> TrainState:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(unet, load_file(str(directory / CKPT_LORA)))
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint {directory} has LoRA weights this UNet lacks: {result.unexpected_keys[:3]}"
        )
    return load_training_state(directory, optimizer, lr_scheduler, rank)


def export_lora(checkpoint_dir: str | Path, config: LoraSettings) -> Path:
    """Write ``output/final``: the checkpoint's LoRA in diffusers' format
    (``pytorch_lora_weights.safetensors``, with peft's adapter config as metadata) and ``lora.json`` (base
    model and settings)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from safetensors.torch import load_file

    final = Path(config.output) / FINAL_DIR
    state = json.loads((Path(checkpoint_dir) / STATE_JSON).read_text())
    StableDiffusionXLPipeline.save_lora_weights(
        final,
        unet_lora_layers=convert_state_dict_to_diffusers(load_file(str(Path(checkpoint_dir) / CKPT_LORA))),
        unet_lora_adapter_metadata=lora_config(config).to_dict(),
        weight_name=LORA_WEIGHTS,
    )
    meta = {"base_model": config.model, "step": state["step"], "target_modules": list(TARGET_MODULES)}
    (final / LORA_JSON).write_text(json.dumps(meta | {"settings": config.to_record()}, indent=2) + "\n")
    return final


# ---------------------------------------------------------------------------------------------- the loop


def lora_unet(config: LoraSettings, device: torch.device) -> tuple[FrozenSDXL, list[torch.nn.Parameter]]:
    """The frozen SDXL with LoRA adapters on its UNet (the same initial weights on every rank) and those
    adapters' parameters, in float32."""
    autocast = device.type == "cuda"
    frozen = FrozenSDXL.load(config.model, device, torch.bfloat16 if autocast else torch.float32)
    torch.manual_seed(config.seed)
    frozen.unet.add_adapter(lora_config(config))
    if config.gradient_checkpointing:
        frozen.unet.enable_gradient_checkpointing()
    params = [p for p in frozen.unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return frozen, params


def epoch_batches(
    ctx: Any, config: LoraSettings, planner: CaptionPlanner, state: TrainState, tally: BadRows | None = None
) -> Iterator[CaptionBatch]:
    """The train batches of `state.epoch` after the `state.batch_in_epoch` already consumed (the job's data
    path)."""
    collate = CaptionCollator(config.image_config, state.epoch, planner.plan(state.epoch).cut)
    return ctx.batches("train", collate, state.epoch, skip=state.batch_in_epoch, tally=tally)


def run_lora_worker(config: LoraSettings, ctx: Any) -> TrainState:
    """The training loop of one worker (Ray or local). Returns the final state."""
    frozen, params = lora_unet(config, ctx.device)
    text = text_pipeline(frozen)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, config.warmup_steps, config.max_steps)
    with ctx.resume_dir() as directory:
        state = (
            TrainState()
            if directory is None
            else load_lora_checkpoint(directory, frozen.unet, optimizer, lr_scheduler, ctx.rank)
        )
    planner = CaptionPlanner(find_splits(config.input)["train"], config.seed, config.spatial_probability)

    def step(batch: CaptionBatch, seed: int) -> dict[str, Any]:
        plan = planner.plan(state.epoch)
        metrics = lora_step(frozen, text, params, optimizer, lr_scheduler, batch, seed, config, ctx)
        return metrics | {
            "spatial_captions": plan.spatial, "original_captions": plan.original, "fallback_captions": plan.fallback
        }  # fmt: skip

    def save(directory: Path, state: TrainState) -> None:
        save_lora_checkpoint(directory, frozen.unet, optimizer, lr_scheduler, state, ctx.rank)

    return run_steps(
        ctx, config, state, epoch_batches=partial(epoch_batches, ctx, config, planner), step=step, save=save
    )


# ---------------------------------------------------------------------------------------------- runs


def preflight(config: LoraSettings) -> dict[str, Any]:
    """Before any worker starts: the train split has a row that decodes (`NoUsableRowsError` otherwise);
    returns epoch 0's caption counts."""
    files = find_splits(config.input)["train"]
    scanned = first_usable_row(files, CaptionCollator(config.image_config, 0, 0).decode)
    if scanned.bad == scanned.seen:
        what = scanned.describe() if scanned.seen else "the train split has no rows"
        raise NoUsableRowsError(f"no usable training row in {config.input}: {what}")
    plan = CaptionPlanner(files, config.seed, config.spatial_probability).plan(0)
    if plan.fallback:
        log.warning("%d of %d train rows have no spatial caption: they train on their original caption",
                    plan.fallback, plan.eligible + plan.fallback)  # fmt: skip
    return {"captions": {"spatial": plan.spatial, "original": plan.original, "fallback": plan.fallback}}


# The job around the worker loop (`training.jobs`): `train_lora_local` runs it in this process, `train_lora` fits it
# with Ray Train; both export ``output/final`` and draw the loss plot.
JOB = TrainingJob(LoraSettings, run_lora_worker, preflight, export_lora)
train_lora_local = JOB.run_local
train_lora = JOB.fit


def parse_config(argv: list[str] | None = None) -> LoraSettings:
    """Defaults < `--config` YAML < flags; local paths made absolute (Ray workers run elsewhere), hub ids
    kept."""
    settings = parse_settings(
        LoraSettings, argv, prog="python -m training.lora", description=__doc__.split("\n\n")[0]
    )
    absolute = {}
    for key in ("input", "output", "model"):
        path = getattr(settings, key)
        if "://" not in path and (key != "model" or Path(path).exists()):
            absolute[key] = str(Path(path).resolve())
    return settings.model_copy(update=absolute)


def main(argv: list[str] | None = None) -> int:
    """Exit code 2 with one line on stderr when the data is unusable (`TrainingJob.main`)."""
    log_progress()
    return JOB.main(parse_config(argv))


if __name__ == "__main__":
    raise SystemExit(main())
