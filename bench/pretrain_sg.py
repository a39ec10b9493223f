"""Does SGDiff-style pre-training help SDXL-SG fine-tuning? Fine-tuning loss curves from both inits.

    python bench/pretrain_sg.py --pretrain-steps 20 --steps 20      # CPU: tiny random models
    python bench/pretrain_sg.py --input DATA --model stabilityai/stable-diffusion-xl-base-1.0 \
        --clip-model ViT-B-32 --clip-pretrained openai --use-gpu --full-size --pretrain-steps 2000 \
        --steps 500 --batch-size 4 --pretrain-batch-size 64 --resolution 512 --json figures.json  # GPU

1. `training.pretrain_sg.pretrain_local` pre-trains the SG encoder for `--pretrain-steps` (contrastive +
   masked).
2. `training.train.train_local` fine-tunes SDXL-SG twice for `--steps`, on the same data, seed, noise,
   timesteps and data order (`step_seed`, `LocalContext`): once with ``--init-sg-encoder PRE/final``, once
   from the default initialisation. Step k of both runs sees the same batch with the same noise, so their
   losses pair up.

Printed: both per-step loss curves, the per-step ratio (pre-trained / default) and, at the end, the ratio of
the mean losses over the last quarter of the steps (< 1: pre-training helped). Both runs start at the same
loss (alpha is 0 at step 1: plain SDXL) and part as alpha opens. Without `--input`/`--model`/`--clip-model`
the data is the fixture export and the models are the tiny random ones (`laion_sg.offline`): the mechanics
run, the figure means nothing; it matters with real SDXL, real CLIP and a real export, on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from laion_sg.offline.fixtures import write_fixture_dataset
from laion_sg.offline.tiny_clip import build_tiny_open_clip
from laion_sg.offline.tiny_sdxl import build_tiny_sdxl
from training.checkpoints import FINAL_DIR
from training.pretrain_sg import PretrainSettings, pretrain_local
from training.settings import TrainSettings
from training.train import train_local

TINY_ENCODER = {"hidden_dim": 32, "mlp_hidden_dim": 64}


def loss_curves(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Pre-train, fine-tune from it and from the default init; the two loss curves and their ratios."""
    data = args.input or str(write_fixture_dataset(work / "data", max_side=args.resolution))
    model = args.model or str(build_tiny_sdxl(work / "tiny_sdxl"))
    clip = {"model": args.clip_model or str(build_tiny_open_clip(work / "tiny_open_clip")),
            "pretrained": args.clip_pretrained}  # fmt: skip
    encoder = {} if args.full_size else TINY_ENCODER
    common = {"input": data, "model": model, "seed": args.seed, "use_gpu": args.use_gpu, "encoder": encoder}
    pretrain = PretrainSettings(output=str(work / "pretrain"), clip=clip, max_steps=args.pretrain_steps,
                                batch_size=args.pretrain_batch_size, checkpoint_every=args.pretrain_steps,
                                warmup_steps=0, lr=args.pretrain_lr, **common)  # fmt: skip
    pre_ctx, _ = pretrain_local(pretrain)
    curves = {}
    for name, init in (("pretrained", Path(pretrain.output) / FINAL_DIR), ("default", None)):
        config = TrainSettings(
            output=str(work / name), init_sg_encoder=init, max_steps=args.steps, lr=args.lr, warmup_steps=0,
            batch_size=args.batch_size, resolution=args.resolution, checkpoint_every=args.steps,
            val_batches=0, **common,
        )  # fmt: skip
        ctx, _ = train_local(config)
        curves[name] = [m["loss"] for m in ctx.history]
    tail = max(1, args.steps // 4)
    pretrained, default = curves["pretrained"], curves["default"]
    return {
        "pretrain_loss": [m["loss"] for m in pre_ctx.history],
        "pretrained": pretrained,
        "default": default,
        "ratio_per_step": [p / d for p, d in zip(pretrained, default, strict=True)],
        "ratio_last_quarter": statistics.mean(pretrained[-tail:]) / statistics.mean(default[-tail:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="exported dataset (default: the fixture export)")
    parser.add_argument("--model", help="base SDXL directory or hub id (default: the tiny random SDXL)")
    parser.add_argument("--clip-model", help="open_clip model or folder (default: the tiny random open_clip)")
    parser.add_argument("--clip-pretrained", default=None, help="open_clip pretrained tag")
    parser.add_argument(
        "--full-size", action="store_true", help="the full 14.7M SG encoder (default: 32 wide)"
    )
    parser.add_argument("--pretrain-steps", type=int, default=20)
    parser.add_argument("--pretrain-batch-size", type=int, default=4)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps of each run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-3, help="fine-tuning learning rate (no warmup)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--output", help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        figures = loss_curves(args, Path(args.output or tmp))
    print(f"pre-training loss: {figures['pretrain_loss'][0]:.4f} -> {figures['pretrain_loss'][-1]:.4f}")
    print(f"{'step':>5} {'pretrained':>11} {'default':>11} {'ratio':>9}")
    for step, (p, d, r) in enumerate(zip(figures["pretrained"], figures["default"], figures["ratio_per_step"],
                                         strict=True), start=1):  # fmt: skip
        print(f"{step:>5} {p:>11.7f} {d:>11.7f} {r:>9.6f}")
    print(
        "fine-tuning loss ratio, pre-trained / default, mean of the last quarter: "
        f"{figures['ratio_last_quarter']:.6f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
