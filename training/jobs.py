"""What the three training jobs (`training.train`, `training.pretrain_sg`, `training.lora`) do around their worker
loop: the check before any worker starts, a local run or a Ray Train fit (resuming from the run directory), the
export of the final model, the loss plot, and `main`'s exit codes and summary. Each job describes itself as a
`TrainingJob`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from schemas.runs import init_ray, log_progress
from schemas.settings import JobSettings
from training.bad_rows import BadDataError, exit_on_bad_data
from training.checkpoints import FINAL_DIR, TrainState
from training.contexts import LocalContext, RayContext
from training.rows import find_splits
from training.settings import run_dir
from training.tracking import plot_losses

__all__ = ["TrainingJob", "build_trainer"]


def _loop_per_worker(
    settings: type[JobSettings], worker: Callable[[Any, Any], TrainState], values: dict[str, Any]
) -> None:
    """Ray Train's per-worker function: the settings rebuilt from `model_dump`, the worker loop in a
    `RayContext`."""
    log_progress()
    config = settings.model_validate(values)
    worker(config, RayContext(config))


def build_trainer(config: Any, train_loop: Callable[[dict[str, Any]], None]):
    """A `TorchTrainer` over Ray Data Parquet datasets (the splits of ``config.cache`` or ``config.input``; the
    workers skip unusable rows) that runs `train_loop` on ``config.model_dump()`` in every worker, resuming from
    the run directory ``output/name``."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    datasets = {}
    for split, files in find_splits(getattr(config, "cache", None) or config.input).items():
        datasets[split] = ray.data.read_parquet([str(f) for f in files])
    return TorchTrainer(
        train_loop,
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


@dataclass(frozen=True)
class TrainingJob:
    """A training job: its settings class, its worker loop ``worker(config, ctx) -> TrainState``, the check
    ``preflight(config) -> dict`` that runs before any worker starts (raising `BadDataError` or
    `FileNotFoundError` on unusable data; what it returns joins the summary), and ``export(checkpoint_dir,
    config)``, which writes ``output/final`` from the last checkpoint."""

    settings: type[JobSettings]
    worker: Callable[[Any, Any], TrainState]
    preflight: Callable[[Any], dict[str, Any]]
    export: Callable[[Path, Any], Any]

    def run_local(self, config: Any, stop_after: int | None = None) -> tuple[LocalContext, TrainState]:
        """Train in this process without Ray (resuming from ``output/checkpoints``); when done, export
        ``output/final`` and draw ``output/loss.png``. `stop_after` simulates an interruption after that many
        steps."""
        self.preflight(config)
        ctx = LocalContext(config, stop_after=stop_after)
        state = self.worker(config, ctx)
        if state.step >= config.max_steps:
            with ctx.resume_dir() as directory:
                self.export(directory, config)
            plot_losses(ctx.run_dir)
        return ctx, state

    def fit(self, config: Any):
        """Fit with Ray Train (resuming when ``output/name`` has checkpoints), then export ``output/final`` and
        draw ``output/name/loss.png``."""
        result = build_trainer(config, partial(_loop_per_worker, self.settings, self.worker)).fit()
        if result.checkpoint is None:
            raise RuntimeError("training finished without a checkpoint")
        with result.checkpoint.as_directory() as directory:
            self.export(Path(directory), config)
        plot_losses(run_dir(config))
        return result

    def main(self, config: Any) -> int:
        """Run `config` on Ray (a cluster when ``RAY_ADDRESS`` names one) and print the summary. Exit code 2 with
        one line on stderr when the data is unusable: no usable row (before Ray starts), or too many bad rows
        (when a worker finds them)."""
        try:
            checks = self.preflight(config)
        except (BadDataError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        init_ray()
        try:
            result = self.fit(config)
        except Exception as exc:
            return exit_on_bad_data(exc)
        summary = {"final": str(Path(config.output) / FINAL_DIR), "tensorboard": str(run_dir(config))}
        print(json.dumps(summary | checks | {"metrics": result.metrics}, indent=2, default=str))
        return 0
