"""A training checkpoint on disk and the final pipeline folder.

A checkpoint directory holds ``sg_encoder/`` (safetensors), ``trainer_state.pt`` (optimizer and LR scheduler,
loaded with ``weights_only=True``), ``state.json`` (`TrainState`: step, epoch, batch within the epoch) and
``rng_rank<r>.pt`` per worker. `export_final` turns one into ``OUTPUT/final``, a complete diffusers pipeline
folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.settings import TrainSettings
from training.sg_encoder import SGEncoder

__all__ = ["FINAL_DIR", "SG_ENCODER_DIR", "TrainState", "export_final", "load_checkpoint", "save_checkpoint"]

FINAL_DIR = "final"
TRAINER_STATE = "trainer_state.pt"
STATE_JSON = "state.json"
SG_ENCODER_DIR = "sg_encoder"


@dataclass
class TrainState:
    """Where a run is: the global step, the epoch and how many batches of that epoch were consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


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


def export_final(checkpoint_dir: str | Path, config: TrainSettings) -> Path:
    """Write ``output/final``: the complete diffusers pipeline folder of the trained SG encoder on top of the
    base SDXL (`config.model`), loadable with `SDXLSGPipeline.from_pretrained`."""
    from training.pipeline import SDXLSGPipeline

    encoder = SGEncoder.from_pretrained(Path(checkpoint_dir) / SG_ENCODER_DIR)
    return SDXLSGPipeline.save_encoder(Path(config.output) / FINAL_DIR, encoder, base_model=config.model)
