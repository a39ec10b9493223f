"""The step loop every training job shares (SDXL-SG, its SG pre-training, the SPRIGHT LoRA): epochs of batches
after a resumed position, one optimizer step per batch with its per-rank seed, the unusable-row monitor, the
step's metrics (TensorBoard on rank 0, a progress line, `ctx.log_step`), and checkpoints reported to the
context. Each job supplies what differs: its batches, its step and how it saves a checkpoint."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from training.bad_rows import BadDataError, BadRows
from training.checkpoints import TrainState
from training.rows import find_splits
from training.step import step_seed
from training.tracking import TensorBoardLog

__all__ = ["BadRowMonitor", "StepSettings", "progress_line", "run_steps", "split_size"]

log = logging.getLogger(__name__)


class StepSettings(Protocol):
    """The settings `run_steps` and `BadRowMonitor` read (every job's settings have them)."""

    seed: int
    batch_size: int
    max_steps: int
    log_every: int
    checkpoint_every: int
    max_bad_fraction: float
    input: str


def split_size(files: list[Path]) -> int:
    """Rows in Parquet files, from their footers (nothing decoded)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


class BadRowMonitor:
    """Sums the workers' tallies of skipped train rows each step (the same collective on every rank, so every
    rank decides alike) and raises `BadDataError` once the unusable rows certainly exceed `max_bad_fraction` of
    the train split."""

    def __init__(self, ctx: Any, config: StepSettings):
        self.ctx = ctx
        self.max_fraction = config.max_bad_fraction
        self.where = getattr(config, "cache", None) or config.input
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


def progress_line(metrics: Mapping[str, Any], max_steps: int, labels: Mapping[str, str]) -> str:
    """``step 3/10: loss 0.12, 4.5 samples/s`` followed by each of `labels`' metrics the step has (metric key ->
    label) and the unusable rows skipped so far."""
    line = f"step {metrics['step']}/{max_steps}: loss {metrics['loss']:.4g}, {metrics['samples_per_s']:.3g} samples/s"
    line += "".join(f", {label} {metrics[key]:.4g}" for key, label in labels.items() if key in metrics)
    return line + (f", {metrics['bad_rows']} unusable rows skipped" if metrics.get("bad_rows") else "")


def run_steps(
    ctx: Any,
    config: StepSettings,
    state: TrainState,
    *,
    epoch_batches: Callable[[TrainState, BadRows], Iterable[Any]],
    step: Callable[[Any, int], dict[str, Any]],
    save: Callable[[Path, TrainState], None],
    after_step: Callable[[dict[str, Any], bool], None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> TrainState:
    """Train from `state` (a resumed position or step 0) until ``config.max_steps``; returns the final state.

    Per epoch, ``epoch_batches(state, tally)`` gives the batches after the ``state.batch_in_epoch`` already
    consumed, adding the rows it skips to ``tally``. Per batch, ``step(batch, seed)`` takes one optimizer step and
    returns its metrics (``loss`` at least; a collective it runs must run on every rank). The loop adds ``step``,
    ``epoch``, the mean ``loss`` over the workers, ``samples_per_s``, ``resumed_from_step`` and the unusable-row
    counts; ``after_step(metrics, last)`` may add more (a validation loss). Every ``checkpoint_every`` steps and
    at the end, ``save(directory, state)`` writes a checkpoint that `ctx.report` takes over. `ctx.log_step`
    returning False stops the loop (a simulated interruption). `labels` names extra metrics for the progress line.
    """
    monitor = BadRowMonitor(ctx, config)
    resumed_from = state.step
    with contextlib.ExitStack() as stack:
        # Rank 0 also writes the reported metrics as TensorBoard events (Ray Train's route to tracking).
        tensorboard = None
        if ctx.rank == 0:
            tensorboard = stack.enter_context(TensorBoardLog(ctx.run_dir, first_step=state.step + 1))
        while state.step < config.max_steps:
            consumed, started = state.batch_in_epoch, time.perf_counter()
            epoch_start = (monitor.local.seen, monitor.local.bad)
            for batch in epoch_batches(state, monitor.local):
                metrics = step(batch, step_seed(config.seed, state.step, ctx.rank))
                state.step += 1
                state.batch_in_epoch += 1
                metrics |= {
                    "step": state.step,
                    "epoch": state.epoch,
                    "loss": monitor.sync(metrics["loss"]),
                    "samples_per_s": batch.size * ctx.world_size / (time.perf_counter() - started),
                    "resumed_from_step": resumed_from,
                }
                metrics |= monitor.metrics()
                last = state.step >= config.max_steps
                if after_step is not None:
                    after_step(metrics, last)
                if tensorboard is not None:
                    tensorboard.add(metrics)
                    if last or state.step % config.log_every == 0:
                        log.info("%s", progress_line(metrics, config.max_steps, labels or {}))
                if not ctx.log_step(metrics):
                    return state
                if last or state.step % config.checkpoint_every == 0:
                    with tempfile.TemporaryDirectory(prefix="training_ckpt_") as tmp:
                        save(Path(tmp), state)
                        ctx.report(metrics, Path(tmp))
                if last:
                    return state
                started = time.perf_counter()
            seen, bad = monitor.local.seen - epoch_start[0], monitor.local.bad - epoch_start[1]
            if bad:
                log.warning("epoch %d, worker %d: skipped %d unusable of %d rows", state.epoch, ctx.rank, bad, seen)
            if state.batch_in_epoch == consumed == 0:
                raise ValueError(
                    f"the train split has fewer than batch_size={config.batch_size} usable rows per worker "
                    f"(this worker: {monitor.local.describe()})"
                )
            state.epoch += 1
            state.batch_in_epoch = 0
    return state
