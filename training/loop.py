"""The training loop every worker runs (`run_worker`): the frozen SDXL, the SG encoder, its optimizer, the
batches, validation, the unusable-row monitor, TensorBoard events, progress lines and checkpoints."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training.bad_rows import BadDataError, BadRows
from training.batches import RowCollator
from training.cache import CacheCollator, read_cache_meta
from training.checkpoints import TrainState, load_checkpoint, save_checkpoint
from training.rows import find_splits
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
from training.tracking import TensorBoardLog

__all__ = ["BadRowMonitor", "check_cache_matches", "run_worker", "validate"]

log = logging.getLogger(__name__)


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


def split_size(files: list[Path]) -> int:
    """Rows in Parquet files, from their footers (nothing decoded)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


class BadRowMonitor:
    """Sums the workers' tallies of skipped train rows each step (the same collective on every rank, so every
    rank decides alike) and raises `BadDataError` once the unusable rows certainly exceed `max_bad_fraction` of
    the train split."""

    def __init__(self, ctx: Any, config: TrainSettings):
        self.ctx = ctx
        self.max_fraction = config.max_bad_fraction
        self.where = config.cache or config.input
        self.total_rows = split_size(find_splits(self.where)["train"])
        self.local = BadRows()  # this worker's rows, filled by `rebatch`
        self.total = BadRows()  # every worker's, as of the last step

    def sync(self, loss: float) -> float:
        """The mean loss over the workers; updates `total` and raises when there are too many bad rows."""
        local = self.local
        loss_sum, seen, failed, bad = self.ctx.all_sum([loss, local.seen, local.failed_annotation, local.bad])
        new_bad = int(bad) > self.total.bad
        self.total.seen, self.total.failed_annotation, self.total.bad = int(seen), int(failed), int(bad)
        if new_bad and len(self.total.examples) < self.total.keep:  # decided on synced values: all ranks gather
            self.total.examples.clear()
            self.total.merge_examples(self.ctx.all_gather(list(local.examples)))
        if self.total.exceeds(self.max_fraction, self.total_rows):
            raise BadDataError(
                f"too many unusable training rows in {self.where}: {self.total.bad} of the {self.total.seen} "
                f"rows read so far ({self.total.fraction:.2%}; the train split has {self.total_rows} rows) "
                f"exceed --max-bad-fraction {self.max_fraction:g}; first: {self.total.first()}"
            )
        return loss_sum / self.ctx.world_size

    def metrics(self) -> dict[str, Any]:
        return self.total.summary()


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
    resumed_from = state.step
    model = ctx.prepare(encoder)
    collators = _collators(config, frozen.tokenizers)
    has_val = config.val_batches > 0 and ctx.has_split("val")
    monitor = BadRowMonitor(ctx, config)
    val_tally = BadRows()

    with contextlib.ExitStack() as stack:
        # Rank 0 also writes the reported metrics as TensorBoard events (Ray Train's route to tracking).
        tensorboard = None
        if ctx.rank == 0:
            tensorboard = stack.enter_context(TensorBoardLog(ctx.run_dir, first_step=state.step + 1))
        while state.step < config.max_steps:
            collate = collators["train"]
            if isinstance(collate, RowCollator):
                collate = collate.with_epoch(state.epoch)
            consumed = state.batch_in_epoch
            started = time.perf_counter()
            epoch_start = (monitor.local.seen, monitor.local.bad)
            skip, tally = state.batch_in_epoch, monitor.local
            for batch in ctx.batches("train", collate, state.epoch, skip=skip, tally=tally):
                metrics = train_step(
                    frozen,
                    model,
                    optimizer,
                    lr_scheduler,
                    batch.to(ctx.device),
                    seed=step_seed(config.seed, state.step, ctx.rank),
                    grad_clip=config.grad_clip,
                    autocast=autocast,
                )
                state.step += 1
                state.batch_in_epoch += 1
                elapsed = time.perf_counter() - started
                metrics |= {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": monitor.sync(metrics["loss"]),
                    "alpha": float(encoder.alpha.detach()),
                    "samples_per_s": batch.size * ctx.world_size / elapsed,
                    "resumed_from_step": resumed_from,
                }
                metrics |= monitor.metrics()
                last = state.step >= config.max_steps
                if has_val and (last or (config.val_every and state.step % config.val_every == 0)):
                    val = collators["val"]
                    metrics["val_loss"] = validate(frozen, encoder, ctx, val, config, autocast, val_tally)
                if tensorboard is not None:
                    tensorboard.add(metrics)
                    if last or state.step % config.log_every == 0:
                        log.info("%s", _progress_line(metrics, config.max_steps))
                if not ctx.log_step(metrics):
                    return state
                if last or state.step % config.checkpoint_every == 0:
                    _checkpoint(ctx, metrics, encoder, optimizer, lr_scheduler, state)
                if last:
                    return state
                started = time.perf_counter()
            seen, bad = monitor.local.seen - epoch_start[0], monitor.local.bad - epoch_start[1]
            if bad:
                message = "epoch %d, worker %d: skipped %d unusable of %d rows"
                log.warning(message, state.epoch, ctx.rank, bad, seen)
            if state.batch_in_epoch == consumed == 0:
                raise ValueError(
                    f"the train split has fewer than batch_size={config.batch_size} usable rows per worker "
                    f"(this worker: {monitor.local.describe()})"
                )
            state.epoch += 1
            state.batch_in_epoch = 0
        return state


def _progress_line(metrics: dict[str, Any], max_steps: int) -> str:
    line = f"step {metrics['step']}/{max_steps}: loss {metrics['loss']:.4g}, {metrics['samples_per_s']:.3g} samples/s"
    if "val_loss" in metrics:
        line += f", val loss {metrics['val_loss']:.4g}"
    return line + (f", {metrics['bad_rows']} unusable rows skipped" if metrics.get("bad_rows") else "")


def _checkpoint(
    ctx: Any, metrics: dict[str, Any], encoder: SGEncoder, optimizer: Any, lr_scheduler: Any, state: TrainState
) -> None:
    """Save a checkpoint of every rank's state and report it with the step's metrics (`ctx.report`)."""
    with tempfile.TemporaryDirectory(prefix="sdxl_sg_ckpt_") as tmp:
        save_checkpoint(Path(tmp), encoder, optimizer, lr_scheduler, state, ctx.rank)
        ctx.report(metrics, Path(tmp))
