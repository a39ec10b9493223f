"""`python -m training.pretrain_sg`: SGDiff-style masked contrastive pre-training of the SG encoder.

    python -m training.pretrain_sg --input DATA --model SDXL_DIR_OR_ID --output PRE --max-steps 20000 \
        --num-workers 8 --use-gpu --batch-size 64
    python -m training.train ... --init-sg-encoder PRE/final      # then fine-tune SDXL-SG from it

`DATA` is an export as `training.train` reads it (train split: images + scene graphs; unusable rows are
skipped and counted the same way). The graphs go through SDXL's frozen text encoders (`--model`, the features
`SGEncoder` reads in fine-tuning: `training.sg_features`) into the trainable `SGEncoder` (`--encoder.*`); each
image through a frozen open_clip image tower (`--clip.model` / `--clip.pretrained`, loaded as
`benchmark.metrics.clip_embedding.CLIPEmbedder` loads it, which `training` may not import; the image is
resized and cropped as the model's own preprocessing does: bicubic, shorter side + center crop, or squash).
Two losses (`training.pretrain_losses`), weighted by `--loss-weights.*`:

- contrastive: symmetric InfoNCE over the batch between each graph's pooled encoder output (through a linear
  head to the CLIP width) and its image's CLIP embedding, cosines over a fixed `--temperature`;
- masked: `--mask-probability` of the graph items (object nodes and relations) of a batch get a learned mask
  embedding instead of their frozen phrase feature; an MLP head reconstructs each masked item's frozen phrase
  feature from the encoder's output there (cosine distance). Which items are masked at step k on worker r is a
  function of ``step_seed(seed, k, r)`` only.

How this maps to SGDiff (Yang et al. 2022, "Diffusion-Based Scene Graph to Image Generation with Masked
Contrastive Pre-Training"): SGDiff pre-trains its graph encoder with a contrastive loss against frozen CLIP
ViT-B/32 image features (kept: the default `--clip.model ViT-B-32 --clip.pretrained openai`) and a masked
autoencoding loss that masks image regions (object boxes) and reconstructs them from the graph embedding.
Deviations: (1) the masked loss here masks the *graph* (nodes and relations) and reconstructs their frozen
text features, a BERT-style objective: reconstructing image regions needs an image decoder and boxes, which
LAION-SG graphs do not have; (2) SGDiff's encoder reads fixed-vocabulary embeddings (VG's 179 objects / 46
predicates), this one reads frozen CLIP phrase features of open-vocabulary graphs; (3) the negatives are the
other rows of each worker's batch (no cross-worker gather), so `--batch-size` is per-worker contrastive batch.

The gate alpha stays frozen at 0 during pre-training: every other weight of the encoder, including
``project_out`` (the vector fine-tuning adds onto the tokens), is pre-trained, so `training.train
--init-sg-encoder` starts fine-tuning from plain SDXL output and a meaningful, not random, graph signal for
alpha to open.

Runs like `training.train` (Ray Train, `--num-workers`, DDP over the encoder and heads; `pretrain_local`
without Ray). Checkpoints every `--checkpoint-every` steps and at the end (``PRE/NAME/checkpoint_*``; local:
``PRE/checkpoints/step_*``), safetensors and JSON only: ``sg_encoder/`` (`SGEncoder.save_pretrained`),
``heads.safetensors``, ``optimizer.safetensors`` + ``trainer_state.json`` (AdamW moments; param groups and the
LR schedule), ``state.json`` (step, epoch, batch in the epoch), ``rng_rank<r>.safetensors``. Running the same
command again resumes from the latest one, and a resumed local run reproduces the uninterrupted one's losses.
The result ``PRE/final/`` is the encoder's `save_pretrained` folder (alpha = 0) plus ``pretrain_sg.json``
(settings, step, CLIP provenance); the heads are dropped there (they live on in the checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from schemas.runs import log_progress
from schemas.settings import parse_settings
from training.bad_rows import BadRows, NoUsableRowsError, first_usable_row
from training.batches import RowCollator, TrainBatch
from training.checkpoints import (
    FINAL_DIR,
    SG_ENCODER_DIR,
    STATE_JSON,
    TrainState,
    load_training_state,
    save_training_state,
)
from training.image_transforms import ImageConfig
from training.jobs import TrainingJob
from training.pretrain_losses import SGPretrainModel, mask_items
from training.pretrain_settings import CLIPImageSettings, LossWeights, PretrainSettings
from training.rows import find_splits
from training.sg_encoder import SGEncoder
from training.sg_features import SGFeatures, encode_graphs
from training.step import FrozenSDXL, build_lr_scheduler, build_optimizer
from training.step_loop import run_steps

__all__ = [
    "PRETRAIN_JSON",
    "CLIPImageSettings",
    "FrozenCLIPImages",
    "LossWeights",
    "PretrainSettings",
    "export_pretrained",
    "load_pretrain_checkpoint",
    "main",
    "parse_config",
    "preflight",
    "pretrain",
    "pretrain_local",
    "pretrain_step",
    "run_pretrain_worker",
    "save_pretrain_checkpoint",
]

log = logging.getLogger(__name__)

PRETRAIN_JSON = "pretrain_sg.json"
CKPT_HEADS = "heads.safetensors"


# ---------------------------------------------------------------------------------------------- the step


@dataclass
class FrozenCLIPImages:
    """A frozen open_clip image tower, loaded as `CLIPEmbedder` loads it, fed with `RowCollator` pixels:
    `image_config` resizes and crops as the model's preprocessing does, `embed` applies its normalisation."""

    model: nn.Module
    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor
    size: int
    crop: str
    dim: int

    @classmethod
    def load(cls, settings: CLIPImageSettings, device: torch.device) -> FrozenCLIPImages:
        import open_clip

        name, pretrained = settings.open_clip_args()
        model = (
            open_clip.create_model(name, pretrained=pretrained, device=device).eval().requires_grad_(False)
        )
        cfg = model.visual.preprocess_cfg
        crops = {"shortest": "center", "squash": "none"}
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        if (
            cfg["resize_mode"] not in crops
            or cfg["interpolation"] != "bicubic"
            or cfg["size"] not in (size, (size, size))
        ):
            raise ValueError(f"CLIP preprocessing {cfg} is not a bicubic square resize this job reproduces")
        mean, std = (torch.tensor(cfg[k], device=device).view(3, 1, 1) for k in ("mean", "std"))
        return cls(model, mean, std, size, crops[cfg["resize_mode"]], model.visual.output_dim)

    def image_config(self, seed: int) -> ImageConfig:
        """How `RowCollator` should resize and crop for this model (never flipped)."""
        return ImageConfig(resolution=self.size, crop=self.crop, flip=False, seed=seed)

    @torch.no_grad()
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`RowCollator` pixels in [-1, 1] -> image embeddings (float32, not normalised)."""
        return self.model.encode_image(((pixel_values + 1) / 2 - self.mean) / self.std).float()


def batch_inputs(
    frozen: FrozenSDXL, clip: FrozenCLIPImages, batch: TrainBatch, config: PretrainSettings, seed: int
) -> tuple[SGFeatures, torch.Tensor, torch.Tensor]:
    """Frozen text features of the graphs, frozen CLIP embeddings of the images, and the items to mask."""
    features = encode_graphs(batch.graphs, frozen.text_encoders)
    num_items = features.node_feats.shape[0] + features.edge_feats.shape[0]
    return features, clip.embed(batch.pixel_values), mask_items(num_items, config.mask_probability, seed)


def pretrain_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    inputs: tuple[SGFeatures, torch.Tensor, torch.Tensor],
    config: PretrainSettings,
    autocast: bool,
) -> dict[str, float]:
    """Forward (`SGPretrainModel`, maybe DDP-wrapped), weighted loss, backward, clip, AdamW and LR step.
    Returns the total and both losses, the gradient norm before clipping, the learning rate used, the masked
    items."""
    features, image_embeds, mask = inputs
    lr = lr_scheduler.get_last_lr()[0]
    optimizer.zero_grad(set_to_none=True)
    device = image_embeds.device
    with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        losses = model(features, image_embeds, mask, config.temperature)
    weights = config.loss_weights
    loss = weights.contrastive * losses["contrastive"] + weights.masked * losses["masked"]
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    lr_scheduler.step()
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr),
            "masked_items": int(mask.sum())} | {k: float(v.detach()) for k, v in losses.items()}  # fmt: skip


# ---------------------------------------------------------------------------------------------- checkpoints


def save_pretrain_checkpoint(
    directory: Path, model: SGPretrainModel, optimizer: Any, lr_scheduler: Any, state: TrainState, rank: int
) -> None:
    """Rank 0 writes the encoder, the heads, the optimizer and the step; every rank its RNG state (safetensors
    + JSON, no pickle)."""
    if rank == 0:
        model.encoder.save_pretrained(directory / SG_ENCODER_DIR)
        save_file({k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()},
                  str(directory / CKPT_HEADS))  # fmt: skip
    save_training_state(directory, optimizer, lr_scheduler, state, rank)


def load_pretrain_checkpoint(
    directory: Path, model: SGPretrainModel, optimizer: Any, lr_scheduler: Any, rank: int
) -> TrainState:
    """The inverse of `save_pretrain_checkpoint` (strict: every weight must match)."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

    model.encoder.load_state_dict(load_file(str(directory / SG_ENCODER_DIR / SAFETENSORS_WEIGHTS_NAME)))
    model.heads.load_state_dict(load_file(str(directory / CKPT_HEADS)))
    return load_training_state(directory, optimizer, lr_scheduler, rank)


def export_pretrained(checkpoint_dir: str | Path, config: PretrainSettings) -> Path:
    """Write ``output/final``: the checkpoint's `SGEncoder.save_pretrained` folder plus ``pretrain_sg.json``
    (settings, step, CLIP provenance); the heads are left out."""
    final = Path(config.output) / FINAL_DIR
    shutil.copytree(Path(checkpoint_dir) / SG_ENCODER_DIR, final, dirs_exist_ok=True)
    state = json.loads((Path(checkpoint_dir) / STATE_JSON).read_text())
    clip_model, clip_pretrained = config.clip.open_clip_args()
    record = {"step": state["step"], "base_model": config.model, "settings": config.to_record(),
              "clip": {"model": clip_model, "pretrained": clip_pretrained}}  # fmt: skip
    (final / PRETRAIN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return final


# ---------------------------------------------------------------------------------------------- the loop


def run_pretrain_worker(config: PretrainSettings, ctx: Any) -> TrainState:
    """The pre-training loop of one worker (Ray or local). Returns the final state."""
    autocast = ctx.device.type == "cuda"
    frozen = FrozenSDXL.load(
        config.model, ctx.device, torch.bfloat16 if autocast else torch.float32, unet=False
    )
    clip = FrozenCLIPImages.load(config.clip, ctx.device)
    torch.manual_seed(config.seed)  # the same initial encoder and heads on every rank
    encoder = SGEncoder.for_text_encoders(*frozen.text_encoders, **config.encoder.model_dump())
    model = SGPretrainModel(encoder, clip.dim).to(ctx.device)
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, config.warmup_steps, config.max_steps)
    with ctx.resume_dir() as directory:
        if directory is None:
            state = TrainState()
        else:
            state = load_pretrain_checkpoint(directory, model, optimizer, lr_scheduler, ctx.rank)
    wrapped = ctx.prepare(model)
    collate = RowCollator(frozen.tokenizers, clip.image_config(config.seed))

    def epoch_batches(state: TrainState, tally: BadRows) -> Iterable[TrainBatch]:
        return ctx.batches("train", collate, state.epoch, skip=state.batch_in_epoch, tally=tally)

    def step(batch: TrainBatch, seed: int) -> dict[str, Any]:
        inputs = batch_inputs(frozen, clip, batch.to(ctx.device), config, seed)
        metrics = pretrain_step(wrapped, optimizer, lr_scheduler, inputs, config, autocast)
        contrastive, masked = ctx.all_sum([metrics["contrastive"], metrics["masked"]])
        return metrics | {"contrastive": contrastive / ctx.world_size, "masked": masked / ctx.world_size}

    def save(directory: Path, state: TrainState) -> None:
        save_pretrain_checkpoint(directory, model, optimizer, lr_scheduler, state, ctx.rank)

    return run_steps(
        ctx, config, state, epoch_batches=epoch_batches, step=step, save=save,
        labels={"contrastive": "contrastive", "masked": "masked"},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- runs


def preflight(config: PretrainSettings) -> dict[str, Any]:
    """Before any worker starts: the train split has a row that decodes (`NoUsableRowsError` otherwise). Adds
    nothing to the summary."""
    decode = RowCollator([], ImageConfig(seed=config.seed)).decode
    scanned = first_usable_row(find_splits(config.input)["train"], decode)
    if scanned.bad + scanned.failed_annotation == scanned.seen:
        what = scanned.describe() if scanned.seen else "the train split has no rows"
        raise NoUsableRowsError(f"no usable training row in {config.input}: {what}")
    return {}


# The job around the worker loop (`training.jobs`): `pretrain_local` runs it in this process, `pretrain` fits it
# with Ray Train; both export ``output/final`` and draw the loss plot.
JOB = TrainingJob(PretrainSettings, run_pretrain_worker, preflight, export_pretrained)
pretrain_local = JOB.run_local
pretrain = JOB.fit


def parse_config(argv: list[str] | None = None) -> PretrainSettings:
    """Defaults < `--config` YAML < flags; local paths made absolute (Ray workers run elsewhere), hub ids and
    open_clip names kept."""
    description = __doc__.split("\n\n")[0]
    settings = parse_settings(
        PretrainSettings, argv, prog="python -m training.pretrain_sg", description=description
    )
    absolute = {key: str(Path(value).resolve()) for key in ("input", "output")
                if "://" not in (value := getattr(settings, key))}  # fmt: skip
    if Path(settings.model).exists():
        absolute["model"] = str(Path(settings.model).resolve())
    if Path(settings.clip.model).is_dir():
        absolute["clip"] = settings.clip.model_copy(
            update={"model": str(Path(settings.clip.model).resolve())}
        )
    return settings.model_copy(update=absolute)


def main(argv: list[str] | None = None) -> int:
    """Exit code 2 with one line on stderr when the data is unusable (`TrainingJob.main`)."""
    log_progress()
    return JOB.main(parse_config(argv))


if __name__ == "__main__":
    raise SystemExit(main())
