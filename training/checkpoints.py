"""A training checkpoint on disk and the final pipeline folder.

A checkpoint directory holds ``sg_encoder/`` (safetensors), ``trainer_state.pt`` (optimizer and LR scheduler,
loaded with ``weights_only=True``), ``state.json`` (`TrainState`: step, epoch, batch within the epoch) and
``rng_rank<r>.pt`` per worker. `export_final` turns one into ``OUTPUT/final``, a complete diffusers pipeline
folder. The newer jobs (`training.lora`, `training.pretrain_sg`) keep the same state without pickle:
`save_training_state` / `load_training_state` (optimizer moments in safetensors, the rest in JSON).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from training.settings import TrainSettings
from training.sg_encoder import SGEncoder

__all__ = [
    "FINAL_DIR",
    "SG_ENCODER_DIR",
    "TrainState",
    "export_final",
    "load_checkpoint",
    "load_training_state",
    "save_checkpoint",
    "save_training_state",
]

FINAL_DIR = "final"
TRAINER_STATE = "trainer_state.pt"
STATE_JSON = "state.json"
SG_ENCODER_DIR = "sg_encoder"
# the pickle-free training state of the newer jobs (`save_training_state`)
OPTIMIZER_SAFETENSORS, TRAINER_JSON = "optimizer.safetensors", "trainer_state.json"


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


def save_training_state(directory: Path, optimizer: Any, lr_scheduler: Any, state: TrainState, rank: int) -> None:
    """What every job's checkpoint holds besides its weights, without pickle: rank 0 writes the optimizer's
    moments (``optimizer.safetensors``), its parameter groups and the LR scheduler (``trainer_state.json``) and
    the step (``state.json``); every rank its RNG state (``rng_rank<r>.safetensors``)."""
    from safetensors.torch import save_file

    if rank == 0:
        optimizer_state = optimizer.state_dict()
        moments = {
            f"{i}.{name}": t.contiguous().cpu() for i, s in optimizer_state["state"].items() for name, t in s.items()
        }
        save_file(moments, str(directory / OPTIMIZER_SAFETENSORS))
        trainer = {"param_groups": optimizer_state["param_groups"], "lr_scheduler": lr_scheduler.state_dict()}
        (directory / TRAINER_JSON).write_text(json.dumps(trainer) + "\n")
        (directory / STATE_JSON).write_text(json.dumps(asdict(state)) + "\n")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, str(directory / f"rng_rank{rank}.safetensors"))


def load_training_state(directory: Path, optimizer: Any, lr_scheduler: Any, rank: int) -> TrainState:
    """The inverse of `save_training_state`: optimizer, scheduler and this rank's RNG restored; the step returned.
    A rank without an RNG file (the run resumes with more workers than it had) keeps its own."""
    from safetensors.torch import load_file

    trainer = json.loads((directory / TRAINER_JSON).read_text())
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in load_file(str(directory / OPTIMIZER_SAFETENSORS)).items():
        index, key = name.split(".", 1)
        moments.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": moments, "param_groups": trainer["param_groups"]})
    lr_scheduler.load_state_dict(trainer["lr_scheduler"])
    rng_file = directory / f"rng_rank{rank}.safetensors"
    if rng_file.exists():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and "cuda.0" in rng:
            torch.cuda.set_rng_state_all(
                [rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng]
            )
    return TrainState(**json.loads((directory / STATE_JSON).read_text()))


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
