"""Training metrics for people: TensorBoard event files and a loss plot, both in the run directory.

Ray Train's route to experiment tracking is the tracking library's own calls inside the training function, on
rank 0: every step `run_worker` reports its metrics (`ray.train.report`), and rank 0 also writes them with
PyTorch's `SummaryWriter` into the run directory (``OUTPUT/NAME``, Ray Train's storage path for the run; the
output directory itself for a local run)::

    tensorboard --logdir OUTPUT

A resumed run starts its event file with a purge at its first step, so TensorBoard drops what an interrupted
attempt logged after its last checkpoint. At the end, `plot_losses` reads the event files back and draws
``loss.png`` (train loss per step, validation loss where it was measured).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["LOSS_PLOT", "SCALARS", "TensorBoardLog", "plot_losses", "read_scalars"]

LOSS_PLOT = "loss.png"
# metric reported every step -> TensorBoard tag
SCALARS = {
    "loss": "train/loss",
    "val_loss": "val/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "samples_per_s": "train/samples_per_s",
    "alpha": "train/alpha",
    "contrastive": "train/contrastive",
    "masked": "train/masked",
    "bad_fraction": "data/bad_fraction",
}


class TensorBoardLog:
    """A TensorBoard event file in `run_dir`; `add` writes the `SCALARS` of one step's metrics.

    `first_step` is the first step this process will log: events an earlier attempt logged from that step on are
    purged (a resumed run repeats the steps after its last checkpoint)."""

    def __init__(self, run_dir: str | Path, first_step: int, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(run_dir), purge_step=first_step, flush_secs=flush_secs)

    def add(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["step"])
        for key, tag in SCALARS.items():
            if metrics.get(key) is not None:
                self.writer.add_scalar(tag, float(metrics[key]), step)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in `run_dir`, as (step, value) per tag, after TensorBoard's purges."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS as KIND
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={KIND: 0})  # 0: keep every step
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()[KIND]}


def plot_losses(run_dir: str | Path) -> Path | None:
    """Draw ``run_dir/loss.png`` from the run's event files; None when they hold no train loss."""
    from matplotlib.figure import Figure

    scalars = read_scalars(run_dir)
    train = scalars.get(SCALARS["loss"], [])
    if not train:
        return None
    figure = Figure(figsize=(8, 4.5))
    axes = figure.add_subplot()
    steps, values = zip(*train, strict=True)
    axes.plot(steps, values, linewidth=1, label="train loss")
    val = [(s, v) for s, v in scalars.get(SCALARS["val_loss"], []) if math.isfinite(v)]
    if val:
        val_steps, val_values = zip(*val, strict=True)
        axes.plot(val_steps, val_values, marker="o", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("diffusion loss (MSE)")
    axes.set_title(f"SDXL-SG training: {Path(run_dir).name}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = Path(run_dir) / LOSS_PLOT
    figure.savefig(out, dpi=100)
    return out
