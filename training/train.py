"""`python -m training.train`: fine-tune SDXL-SG (frozen SDXL, trainable `SGEncoder`) with Ray Train.

    python -m training.train --data DATA --model SDXL_DIR_OR_ID --output RUNS --max-steps 20000 \
        --num-workers 8 --use-gpu --batch-size 1 --resolution 512

`DATA` holds Parquet rows of `schemas.row_schema()`: a `pipelines.export` output (``data/train-*.parquet``,
``data/validation-*.parquet``; the test split is never read), or ``train/`` and ``val/`` directories, or just
rows (then all are training rows and there is no validation); `--cache` points at a `training.precompute` output
instead. Every worker runs
`run_worker`: the frozen SDXL in eval mode without gradients (not wrapped), the SG encoder under DDP
(`ray.train.torch.prepare_model`), AdamW + warmup + cosine, bf16 autocast on GPU, gradient clipping, and a
checkpoint with its metrics reported to Ray Train (`ray.train.report`) every `--checkpoint-every` steps and at the
end.

Checkpoints (``RUNS/<name>/checkpoint_*``): ``sg_encoder/`` (safetensors), ``trainer_state.pt`` (optimizer and LR
scheduler, loaded with ``weights_only=True``), ``state.json`` (step, epoch, batch within the epoch) and
``rng_rank<r>.pt`` per worker. Running the same command again (same `--output` and `--name`) resumes from the
latest checkpoint. The final pipeline lands in ``RUNS/final``: a complete diffusers pipeline folder (the base
SDXL given by `--model` plus the trained SG encoder, `model_index.json` naming both) that
`SDXLSGPipeline.from_pretrained(RUNS/final)` loads.

Metrics: rank 0 writes every step's loss, learning rate, gradient norm, samples/s, alpha and validation loss as
TensorBoard events into the run directory ``RUNS/<name>`` (`tensorboard --logdir RUNS`) and logs a progress line
every `--log-every` steps; the end of training draws ``RUNS/<name>/loss.png`` from the events
(`training.tracking`). A local run (`train_local`) writes both into ``RUNS`` itself. Only checkpoint steps go to
`ray.train.report`: in Ray 2.60 a report waits until the Ray Train controller took the previous one (polled every
2 s), so reporting every step would cap a run at about 0.5 steps/s whatever the hardware.

Unusable rows (a corrupt, truncated or missing image, a null or empty scene graph, a cache row precompute could
not encode or whose bytes are broken) are skipped where they are decoded, and batches are refilled to full size
(`training.data.rebatch`). Every step sums the workers' counts; the run fails with `BadDataError` (count,
fraction and the first keys with reasons) once the unusable rows certainly exceed `--max-bad-fraction` of the
train split, whose size comes from the Parquet metadata. The counts and the first keys are in the metrics of
every step (``bad_rows``, ``bad_fraction``, ``bad_row_examples``, ...; reported with each checkpoint), logged as
they appear, and in the summary `main` prints. Rows whose annotation failed are skipped as before and counted apart, not as faults. Before Ray
Train starts, `preflight` reads the train split until one row decodes: when none does, `main` exits with code
2 and one line naming the data path; with `--cache`, rows of `--data` missing from the cache count as unusable.

Reproducibility: noise and timesteps of step k on rank r are drawn from ``step_seed(seed, k, r)``, and flips from
(seed, epoch, row key), so they do not depend on RNG state. `LocalContext` (no Ray, one process) also fixes the
data order (a seeded permutation per epoch), so a resumed local run reproduces an uninterrupted one exactly. Under
Ray, the rows each worker receives come from Ray Data's streaming split and a seeded local shuffle buffer, which
Ray does not guarantee to be identical across runs; a resumed Ray run skips the batches already consumed in the
current epoch but may see them in another order.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.runs import init_ray, log_progress
from schemas.settings import JobSettings, parse_settings
from training.data import (
    ANNOTATION_FAILED,
    BadDataError,
    BadRows,
    CacheCollator,
    ImageConfig,
    NoUsableRowsError,
    RowCollator,
    TrainBatch,
    find_splits,
    first_usable_row,
    read_cache_meta,
    read_rows,
    rebatch,
    row_problem,
)
from training.sg_encoder import POOLINGS, SGEncoder
from training.step import (
    VALIDATION_STREAM,
    FrozenSDXL,
    build_lr_scheduler,
    build_optimizer,
    diffusion_loss,
    step_seed,
    train_step,
)
from training.tracking import TensorBoardLog, plot_losses

__all__ = [
    "EncoderSettings",
    "LocalContext",
    "RayContext",
    "TrainConfig",
    "TrainSettings",
    "TrainState",
    "build_trainer",
    "export_final",
    "main",
    "parse_config",
    "preflight",
    "run_dir",
    "run_worker",
    "train",
    "train_local",
]

FINAL_DIR = "final"
TRAINER_STATE = "trainer_state.pt"
STATE_JSON = "state.json"
SG_ENCODER_DIR = "sg_encoder"
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


class TrainSettings(JobSettings):
    """Everything a run needs (`python -m training.train --help` lists it); a `--config` YAML sets any of it, flags
    win. Ray Train hands it to every worker as `model_dump()`, rebuilt there with `model_validate`."""

    data: str = Field(description="Parquet dataset: a pipelines.export output, train/ + val/ dirs, or rows")
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


@dataclass
class TrainState:
    """Where a run is: the global step, the epoch and how many batches of that epoch were consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


# ---------------------------------------------------------------------------------------------- contexts


class LocalContext:
    """Single-process training without Ray: seeded data order, checkpoints under ``output/checkpoints``, the
    run directory (TensorBoard events, loss plot) is ``output``."""

    rank = 0
    world_size = 1

    def __init__(self, config: TrainSettings, stop_after: int | None = None):
        self.config = config
        self.device = torch.device("cuda" if config.use_gpu else "cpu")
        self.run_dir = Path(config.output)
        self.checkpoints = self.run_dir / "checkpoints"
        self.history: list[dict[str, Any]] = []  # every step's metrics
        self.stop_after = stop_after  # simulate an interruption after this many steps of this process
        source = config.cache or config.data
        # Unusable rows stay in: `batches` skips and counts them where they are decoded, as under Ray.
        self.splits = {name: read_rows(files) for name, files in find_splits(source).items()}

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        found = sorted(self.checkpoints.glob("step_*")) if self.checkpoints.is_dir() else []
        yield found[-1] if found else None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def batches(
        self, split: str, collate: Any, epoch: int, skip: int, tally: BadRows | None = None
    ) -> Iterator[TrainBatch]:
        """Batches of usable rows (the last partial train batch dropped); skipped rows are counted into `tally`.
        The `skip` batches already consumed are decoded again, so the tally covers the whole epoch."""
        rows = self.splits.get(split, [])
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(rows)) if split == "train" else None
        ordered = [rows[i] for i in order] if order is not None else rows
        size = self.config.batch_size
        chunks = (collate.decode(ordered[start : start + size]) for start in range(0, len(ordered), size))
        for index, batch in enumerate(rebatch(chunks, size, collate.assemble, drop_last=split == "train", tally=tally)):
            if index >= skip:
                yield batch

    def has_split(self, split: str) -> bool:
        return bool(self.splits.get(split))

    def all_sum(self, values: list[float]) -> list[float]:
        return values

    def all_gather(self, value: Any) -> list[Any]:
        return [value]

    def log_step(self, metrics: dict[str, Any]) -> bool:
        """Record a step's metrics in `history`; False asks the loop to stop (`stop_after`)."""
        self.history.append(metrics)
        return self.stop_after is None or len(self.history) < self.stop_after

    def report(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        """Copy a checkpoint to ``output/checkpoints/step_<step>``, keeping the latest `keep_checkpoints`."""
        target = self.checkpoints / f"step_{metrics['step']:08d}"
        shutil.copytree(checkpoint, target, dirs_exist_ok=True)
        for old in sorted(self.checkpoints.glob("step_*"))[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)


class RayContext:
    """Inside a Ray Train worker: dataset shards, DDP, `ray.train.report` and `ray.train.get_checkpoint`."""

    def __init__(self, config: TrainSettings):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.config = config
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = run_dir(config)

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as directory:
                yield Path(directory)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, parallel_strategy="ddp")

    def batches(
        self, split: str, collate: Any, epoch: int, skip: int, tally: BadRows | None = None
    ) -> Iterator[TrainBatch]:
        """Ray Data's prefetch threads decode chunks of `batch_size` rows (skipping unusable ones); `rebatch`
        refills full batches here and counts the skipped rows into `tally`."""
        import ray.train
        from ray.data.collate_fn import ArrowBatchCollateFn

        class Collate(ArrowBatchCollateFn):
            def __call__(self, table):  # pyarrow.Table -> Decoded
                return collate.decode(table.to_pylist())

        shard = ray.train.get_dataset_shard(split)
        shuffle = split == "train" and self.config.shuffle_buffer > 0
        iterator = shard.iter_torch_batches(
            batch_size=self.config.batch_size,
            collate_fn=Collate(),
            device="cpu",
            local_shuffle_buffer_size=max(self.config.shuffle_buffer, self.config.batch_size) if shuffle else None,
            local_shuffle_seed=self.config.seed + epoch if shuffle else None,
        )
        drop_last = split == "train"
        size = self.config.batch_size
        for index, batch in enumerate(rebatch(iterator, size, collate.assemble, drop_last=drop_last, tally=tally)):
            if index >= skip:
                yield batch

    def has_split(self, split: str) -> bool:
        import ray.train

        try:
            ray.train.get_dataset_shard(split)
        except KeyError:
            return False
        return True

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def all_gather(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def log_step(self, metrics: dict[str, Any]) -> bool:
        """Nothing beyond the TensorBoard events and progress lines `run_worker` writes; never stops the loop."""
        return True

    def report(self, metrics: dict[str, Any], checkpoint: Path) -> None:
        import ray.train

        checkpoint_dir_name = f"checkpoint_{metrics['step']:08d}"
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint),
                         checkpoint_dir_name=checkpoint_dir_name)  # fmt: skip


# ---------------------------------------------------------------------------------------------- the loop


def save_checkpoint(
    directory: Path, encoder: SGEncoder, optimizer: Any, lr_scheduler: Any, state: TrainState, rank: int
) -> None:
    """Rank 0 writes the shared state; every rank writes its RNG state (Ray merges the ranks' directories)."""
    if rank == 0:
        encoder.save_pretrained(directory / SG_ENCODER_DIR)
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, directory / TRAINER_STATE)
        (directory / STATE_JSON).write_text(json.dumps(asdict(state)) + "\n")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, directory / f"rng_rank{rank}.pt")


def load_checkpoint(directory: Path, encoder: SGEncoder, optimizer: Any, lr_scheduler: Any, rank: int) -> TrainState:
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    encoder.load_state_dict(load_file(str(directory / SG_ENCODER_DIR / SAFETENSORS_WEIGHTS_NAME)))
    trainer_state = torch.load(directory / TRAINER_STATE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(trainer_state["optimizer"])
    lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.exists():  # absent when the run resumes with more workers than it had
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**json.loads((directory / STATE_JSON).read_text()))


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
        self.where = config.cache or config.data
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
    encoder = SGEncoder.for_text_encoders(*frozen.text_encoders, **config.encoder.model_dump()).to(ctx.device)
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


def export_final(checkpoint_dir: str | Path, config: TrainSettings) -> Path:
    """Write ``output/final``: the complete diffusers pipeline folder of the trained SG encoder on top of the
    base SDXL (`config.model`), loadable with `SDXLSGPipeline.from_pretrained`."""
    from training.pipeline import SDXLSGPipeline

    encoder = SGEncoder.from_pretrained(Path(checkpoint_dir) / SG_ENCODER_DIR)
    return SDXLSGPipeline.save_encoder(Path(config.output) / FINAL_DIR, encoder, base_model=config.model)


def run_dir(config: TrainSettings) -> Path:
    """The directory of a Ray Train run, ``output/name`` (the trainer's storage path and run name): its
    checkpoints, TensorBoard events and loss plot."""
    return Path(config.output) / config.name


def _missing_from_cache(config: TrainSettings) -> BadRows:
    """Rows of the train split of `--data` (failed annotations aside) whose key the cache lacks, as bad rows."""
    import pyarrow.parquet as pq

    tally = BadRows()
    if not Path(config.data).exists():
        return tally
    cached = set()
    for f in find_splits(config.cache)["train"]:
        cached.update(pq.read_table(f, columns=["key"])["key"].to_pylist())
    for f in find_splits(config.data)["train"]:
        columns = [c for c in ("key", "annotation") if c in pq.read_schema(f).names]
        for row in pq.read_table(f, columns=columns).to_pylist():
            if row_problem(row) == ANNOTATION_FAILED:  # precompute leaves these out
                tally.add(1, [(str(row["key"]), ANNOTATION_FAILED)])
            else:
                tally.add(1, [] if row["key"] in cached else [(str(row["key"]), "missing from the cache")])
    return tally


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


def preflight(config: TrainSettings) -> dict[str, Any]:
    """Checks before any worker starts: the train split has at least one row that decodes (`NoUsableRowsError`
    naming the path otherwise), and, with `--cache`, that the cache was written for this model and these image
    settings and that no more than `max_bad_fraction` of the data's rows are missing from it. Reads only until the
    first usable row, and only keys for the cache comparison."""
    source = config.cache or config.data
    files = find_splits(source)["train"]
    if config.cache:
        decode = CacheCollator(check_cache_matches(config)).decode
    else:
        decode = RowCollator([], dataclasses.replace(config.image_config, flip=False)).decode
    scanned = first_usable_row(files, decode)
    if scanned.bad + scanned.failed_annotation == scanned.seen:
        what = scanned.describe() if scanned.seen else "the train split has no rows"
        raise NoUsableRowsError(f"no usable training row in {source}: {what}")
    summary: dict[str, Any] = {}
    if config.cache:
        missing = _missing_from_cache(config)
        if missing.bad:
            message = f"rows of {config.data} missing from the cache {config.cache}: {missing.describe()}"
            if missing.exceeds(config.max_bad_fraction):
                raise BadDataError(f"too many {message} (over --max-bad-fraction {config.max_bad_fraction:g})")
            log.warning("%s", message)
        summary["missing_from_cache"] = missing.summary()
    return summary


def train_local(config: TrainSettings, stop_after: int | None = None) -> tuple[LocalContext, TrainState]:
    """Train in this process without Ray (resumes from ``output/checkpoints``); when done, export
    ``output/final`` and draw ``output/loss.png`` from the TensorBoard events in ``output``."""
    preflight(config)
    ctx = LocalContext(config, stop_after=stop_after)
    state = run_worker(config, ctx)
    if state.step >= config.max_steps:
        with ctx.resume_dir() as directory:
            export_final(directory, config)
        plot_losses(ctx.run_dir)
    return ctx, state


# ---------------------------------------------------------------------------------------------- Ray


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    log_progress()
    train_config = TrainSettings.model_validate(config)
    run_worker(train_config, RayContext(train_config))


def build_trainer(config: TrainSettings, train_loop: Callable[[dict[str, Any]], None] | None = None):
    """A `TorchTrainer` over Ray Data Parquet datasets (raw rows or the cache; the workers skip unusable rows).

    `train_loop` replaces the per-worker function (it receives `config.model_dump()`, which
    `TrainSettings.model_validate` turns back into `config`); by default `run_worker` with a `RayContext`."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    datasets = {}
    for split, files in find_splits(config.cache or config.data).items():
        datasets[split] = ray.data.read_parquet([str(f) for f in files])
    return TorchTrainer(
        train_loop or _train_loop_per_worker,
        train_loop_config=config.model_dump(),
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=config.name,
            storage_path=str(Path(config.output).resolve()),  # the run directory is `run_dir(config)`
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
        datasets=datasets,
    )


def train(config: TrainSettings, *, check: bool = True):
    """Fit with Ray Train (resuming when ``output/name`` has checkpoints), then export ``output/final`` and
    draw ``output/name/loss.png``.
    `preflight` runs first (unless `check` is off: the caller ran it), so data without a usable row fails before
    Ray Train starts."""
    if check:
        preflight(config)
    result = build_trainer(config).fit()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        export_final(directory, config)
    plot_losses(run_dir(config))
    return result


# ---------------------------------------------------------------------------------------------- CLI


def parse_config(argv: list[str] | None = None) -> TrainSettings:
    """The run's settings: defaults < the `--config` YAML < flags (bad input exits 2 naming the flag or the file).
    Ray Train workers run in their own working directory, so local paths are made absolute; a model that is not a
    local directory is a hub id and stays as it is."""
    settings = parse_settings(TrainSettings, argv, prog="python -m training.train", description=__doc__.split("\n\n")[0])
    absolute = {}
    for key in ("data", "output", "cache", "model"):
        path = getattr(settings, key)
        if path and "://" not in path and (key != "model" or Path(path).exists()):
            absolute[key] = str(Path(path).resolve())
    return settings.model_copy(update=absolute)


def _data_error(exc: BaseException) -> BadDataError | None:
    """The `BadDataError` behind `exc` (Ray Train wraps a worker's error: `WorkerGroupError.worker_failures`),
    if any."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, BadDataError):
            return error
        stack += [error.__cause__, error.__context__, getattr(error, "cause", None)]
        stack += [getattr(error, "controller_failure", None), *getattr(error, "worker_failures", {}).values()]
    return None


def main(argv: list[str] | None = None) -> int:
    """Exit code 2 with one line on stderr when the data is unusable (no usable row: before Ray starts)."""
    log_progress()
    config = parse_config(argv)
    try:
        checks = preflight(config)
    except (BadDataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    init_ray()
    try:
        result = train(config, check=False)
    except Exception as exc:
        if (error := _data_error(exc)) is None:
            raise
        line = str(error).splitlines()[0] if str(error) else repr(error)
        print(f"error: {line}", file=sys.stderr)
        return 2
    summary = {"final": str(Path(config.output) / FINAL_DIR), "tensorboard": str(run_dir(config))}
    summary |= {"metrics": result.metrics} | checks
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
