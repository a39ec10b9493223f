"""SDXL-SG's worker (`run_worker`): the frozen SDXL, the SG encoder, its optimizer, the collators of raw rows or
the cache, validation, and checkpoints of the encoder, run by `training.step_loop.run_steps`."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from training.bad_rows import BadDataError, BadRows
from training.batches import RowCollator, TrainBatch
from training.cache import CacheCollator, read_cache_meta
from training.checkpoints import TrainState, load_checkpoint, save_checkpoint
from training.settings import TrainSettings
from training.sg_encoder import SGEncoder
from training.step import (
    VALIDATION_STREAM,
    FrozenSDXL,
    build_lr_scheduler,
    build_optimizer,
    diffusion_loss,
    step_seed,
    train_step,
)
from training.step_loop import run_steps

__all__ = ["check_cache_matches", "run_worker", "validate"]


def _same_model(a: str, b: str) -> bool:
    """Two model references name the same model: equal hub ids, or local paths to the same directory."""
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def check_cache_matches(config: TrainSettings, model: bool = True) -> dict[str, Any]:
    """``cache.json`` of `config.cache`, refused (`BadDataError`) when it was written for other image settings or
    (with `model`) another model: its latents and text features would silently train the wrong thing. Workers
    skip the model check, done by the driver, where a relative model path resolves as the user meant it."""
    meta = read_cache_meta(config.cache)
    expected = {"resolution": config.resolution, "crop": config.crop}
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if model and not _same_model(str(meta.get("model")), str(config.model)):
        wrong["model"] = meta.get("model")
        expected["model"] = config.model
    if wrong:
        wanted = {k: expected[k] for k in wrong}
        raise BadDataError(f"cache {config.cache} was written for {wrong}, the run wants {wanted}")
    return meta


def _collators(config: TrainSettings, tokenizers: list[Any]) -> dict[str, Any]:
    """One collator per split, each with its own copy of the tokenizers (see `RowCollator`)."""
    if config.cache:
        meta = check_cache_matches(config, model=False)
        return {split: CacheCollator(meta) for split in ("train", "val")}
    val_images = dataclasses.replace(config.image_config, flip=False)  # validation images are never flipped
    return {
        "train": RowCollator(copy.deepcopy(tokenizers), config.image_config),
        "val": RowCollator(copy.deepcopy(tokenizers), val_images),
    }


def validate(
    frozen: FrozenSDXL,
    encoder: SGEncoder,
    ctx: Any,
    collate: Any,
    config: TrainSettings,
    autocast: bool,
    tally: BadRows | None = None,
) -> float:
    """Mean loss over the first `val_batches` validation batches of every worker, with fixed noise per batch
    index; NaN when there are none. Unusable validation rows are skipped and logged (into `tally`), never fatal."""
    total, count = 0.0, 0
    with torch.no_grad():
        for index, batch in enumerate(ctx.batches("val", collate, epoch=0, skip=0, tally=tally)):
            if index >= config.val_batches:
                break
            seed = step_seed(config.seed, VALIDATION_STREAM, ctx.rank, index)
            total += float(diffusion_loss(frozen, encoder, batch.to(ctx.device), seed=seed, autocast=autocast))
            count += 1
    total, count = ctx.all_sum([total, float(count)])
    return total / count if count else float("nan")


def run_worker(config: TrainSettings, ctx: Any) -> TrainState:
    """The training loop of one worker (Ray or local). Returns the final state."""
    autocast = ctx.device.type == "cuda"
    frozen = FrozenSDXL.load(config.model, ctx.device, torch.bfloat16 if autocast else torch.float32)
    if config.gradient_checkpointing:
        frozen.unet.enable_gradient_checkpointing()
    torch.manual_seed(config.seed)  # the same initial encoder on every rank
    encoder = config.initial_encoder(frozen.text_encoders).to(ctx.device)
    optimizer = build_optimizer(encoder, config.lr, config.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, config.warmup_steps, config.max_steps)
    with ctx.resume_dir() as directory:
        state = TrainState() if directory is None else load_checkpoint(directory, encoder, optimizer, lr_scheduler, ctx.rank)
    model = ctx.prepare(encoder)
    collators = _collators(config, frozen.tokenizers)
    has_val = config.val_batches > 0 and ctx.has_split("val")
    val_tally = BadRows()

    def epoch_batches(state: TrainState, tally: BadRows) -> Iterable[TrainBatch]:
        collate = collators["train"]
        if isinstance(collate, RowCollator):
            collate = collate.with_epoch(state.epoch)
        return ctx.batches("train", collate, state.epoch, skip=state.batch_in_epoch, tally=tally)

    def step(batch: TrainBatch, seed: int) -> dict[str, Any]:
        batch = batch.to(ctx.device)
        metrics = train_step(
            frozen, model, optimizer, lr_scheduler, batch, seed=seed, grad_clip=config.grad_clip, autocast=autocast
        )
        return metrics | {"alpha": float(encoder.alpha.detach())}

    def after_step(metrics: dict[str, Any], last: bool) -> None:
        if has_val and (last or (config.val_every and metrics["step"] % config.val_every == 0)):
            metrics["val_loss"] = validate(frozen, encoder, ctx, collators["val"], config, autocast, val_tally)

    def save(directory: Path, state: TrainState) -> None:
        save_checkpoint(directory, encoder, optimizer, lr_scheduler, state, ctx.rank)

    return run_steps(
        ctx, config, state, epoch_batches=epoch_batches, step=step, save=save, after_step=after_step,
        labels={"val_loss": "val loss"},
    )  # fmt: skip
