"""Where `run_worker` runs: `LocalContext` (one process, no Ray) or `RayContext` (a Ray Train worker). Both give
the device, the batches of a split, the collectives, the resume checkpoint and the place checkpoints go."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.bad_rows import BadRows, rebatch
from training.batches import TrainBatch
from training.rows import find_splits, read_rows
from training.settings import TrainSettings, run_dir

__all__ = ["LocalContext", "RayContext"]


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
        source = config.cache or config.input
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
