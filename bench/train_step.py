"""Throughput, peak memory and model-FLOPs utilisation of one SDXL-SG training step, with and without the cache.

    python bench/train_step.py --size tiny --resolution 64 --batch-size 4 --steps 5      # CPU, tiny random SDXL
    python bench/train_step.py --size full --resolution 512 --batch-size 1 --steps 10    # GPU, full-size SDXL
    python bench/train_step.py --size full --resolution 1024 --batch-size 1 --device meta # FLOPs only, any machine

- `--size tiny`: the tiny random SDXL of `laion_sg.offline.tiny_sdxl` and a 32-wide SG encoder.
- `--size full`: SDXL base 1.0's architecture (UNet 2.57B, VAE 84M, CLIP-L 123M, OpenCLIP-bigG 695M parameters)
  built from its config values with random weights (nothing is downloaded), the full 14.7M SG encoder, bf16
  weights and bf16 autocast on GPU (fp32 on CPU).
- "raw" runs the frozen VAE and text encoders inside the step (training from images); "cache" feeds the step
  with the precomputed latents and text features (`training.precompute`), as `--cache` training does.

Each path: one warm-up step, then `--steps` timed steps (`train_step`: forward, backward, clip, AdamW); the
median step time is reported (robust to other jobs on a shared machine); data collation is outside the timing.
Model FLOPs of one step (forward + backward; matmuls, convolutions, attention) are counted with
`torch.utils.flop_counter.FlopCounterMode` on a weightless copy on the meta device, where attention runs as
matmuls: a real CPU step hides attention inside a kernel the counter does not know, and gradient checkpointing's
recompute is not model FLOPs. `--device meta` only counts, so full-size FLOPs need no GPU and no memory.
MFU = FLOPs per step / step time / peak, with the peak
from `--peak-tflops`, else a table of GPU bf16 dense peaks, else (CPU) the measured fp32 matmul rate of this
machine. Peak memory: `torch.cuda.max_memory_allocated` on GPU, the process's peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laion_sg.offline.fixtures import FIXTURE_GRAPHS
from laion_sg.offline.tiny_sdxl import build_tiny_sdxl
from schemas import SceneGraph
from training.batches import RowCollator, TrainBatch
from training.image_transforms import ImageConfig
from training.sg_encoder import SGEncoder
from training.step import (
    FrozenSDXL,
    build_lr_scheduler,
    build_optimizer,
    load_tokenizers,
    step_seed,
    train_step,
)

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
# vae/config.json
SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}
# text_encoder/config.json (CLIP ViT-L/14) and text_encoder_2/config.json (OpenCLIP ViT-bigG/14)
CLIP_COMMON = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
SDXL_TEXT_ENCODER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SDXL_TEXT_ENCODER_2 = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
# scheduler/scheduler_config.json (training uses DDPM with the same betas)
SDXL_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
# bf16 dense peak FLOP/s by GPU name fragment (vendor data sheets, SXM parts)
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}  # fmt: skip


def full_size_frozen(tokenizer_dir: Path, device: torch.device, dtype: torch.dtype) -> FrozenSDXL:
    """SDXL base 1.0's architecture with random weights, built directly on `device`."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def frozen(module: torch.nn.Module) -> torch.nn.Module:
        return module.requires_grad_(False).eval()

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise the weights directly in `dtype`
    try:
        with torch.device(device):
            return FrozenSDXL(
                vae=frozen(AutoencoderKL(**SDXL_VAE)),
                text_encoders=[
                    frozen(CLIPTextModel(CLIPTextConfig(**CLIP_COMMON, **SDXL_TEXT_ENCODER))),
                    frozen(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_COMMON, **SDXL_TEXT_ENCODER_2))),
                ],
                tokenizers=load_tokenizers(tokenizer_dir),
                unet=frozen(UNet2DConditionModel(**SDXL_UNET)),
                noise_scheduler=DDPMScheduler(**SDXL_SCHEDULER),
            )
    finally:
        torch.set_default_dtype(default_dtype)


def bench_rows(count: int, resolution: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` training rows: the fixture scene graphs (`FIXTURE_GRAPHS`) on random-pixel PNGs of resolution².
    Speed does not depend on the pixels, and this needs neither scikit-image (the fixture photos) nor `datasets`
    (split discovery), so the benchmark runs on a bare CUDA machine (bench/gpu_check.sh)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    graphs = [SceneGraph.from_json(graph).validate().to_dict() for _, _, graph in FIXTURE_GRAPHS.values()]
    rows = []
    for index in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        rows.append(
            {
                "key": f"bench-{index:05d}",
                "image": {"bytes": buffer.getvalue(), "path": None},
                "scene_graph": graphs[index % len(graphs)],
                "annotation": {"status": "ok"},
            }
        )
    return rows


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float, str]:
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, flops in GPU_PEAK_BF16.items():
            if fragment in name:
                return flops, f"{name} bf16 dense data sheet"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")
    n = 4096  # large enough to reach the machine's GEMM peak (1024² stays well below it)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(5))
    return 2 * n**3 / best, f"best of 5 fp32 {n}² matmuls on {torch.get_num_threads()} CPU threads"


def _seconds(work: Any) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(
    frozen: FrozenSDXL, encoder: SGEncoder, batch: TrainBatch, steps: int, device: torch.device
) -> dict[str, Any]:
    """Median time of `steps` training steps after one warm-up step, and the peak memory."""
    optimizer = build_optimizer(encoder, lr=5e-4, weight_decay=0.2)
    scheduler = build_lr_scheduler(optimizer, warmup_steps=0, total_steps=steps + 2)
    autocast = device.type == "cuda"

    def step(index: int) -> None:
        train_step(
            frozen, encoder, optimizer, scheduler, batch, seed=step_seed(0, index, 0), autocast=autocast
        )

    def timed(index: int) -> float:
        start = time.perf_counter()
        step(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed(0)
    seconds = statistics.median(timed(index) for index in range(1, steps + 1))
    return {"step_s": seconds, "samples_per_s": batch.size / seconds, "peak_mem_mib": peak_memory_mib(device)}


def count_flops(frozen: FrozenSDXL, encoder: SGEncoder, batch: TrainBatch) -> dict[str, Any]:
    """FLOPs of one step's forward and backward (the optimizer's are negligible; a raw batch's include the frozen
    VAE and text encoders). On the meta device this costs no memory and no compute, so any size can be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.step import diffusion_loss

    with FlopCounterMode(display=False) as counter:
        diffusion_loss(frozen, encoder, batch, seed=0).backward()
    return {"flops": counter.get_total_flops()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) or 512 (full)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda, cpu, or meta (count FLOPs only: no weights, no timing; any size on any machine)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the device for MFU, in TFLOP/s")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    resolution = args.resolution or (64 if args.size == "tiny" else 512)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    meta = torch.device("meta")

    def build(tiny_dir: Path, device: torch.device) -> FrozenSDXL:
        if args.size == "tiny":
            return FrozenSDXL.load(tiny_dir, device, dtype)
        return full_size_frozen(tiny_dir, device, dtype)  # takes only the tokenizers (CLIP's vocabulary)

    with tempfile.TemporaryDirectory() as tmp:
        tiny_dir = build_tiny_sdxl(Path(tmp) / "sdxl")
        frozen = build(tiny_dir, device)
        counting = frozen if device == meta else build(tiny_dir, meta)  # FLOPs are counted on a weightless copy
    small = {"hidden_dim": 32, "mlp_hidden_dim": 64} if args.size == "tiny" else {}

    def new_encoder() -> SGEncoder:
        return SGEncoder.for_text_encoders(*frozen.text_encoders, **small)

    if args.gradient_checkpointing:
        frozen.unet.enable_gradient_checkpointing()  # not on the counting copy: model FLOPs exclude recompute
    rows = bench_rows(args.batch_size, resolution)
    raw = RowCollator(frozen.tokenizers, ImageConfig(resolution=resolution))(rows)

    def batches(frozen: FrozenSDXL, device: torch.device) -> dict[str, TrainBatch]:
        on_device = raw.to(device)
        latents, features = frozen.encode(on_device)
        cached = TrainBatch(keys=raw.keys, time_ids=on_device.time_ids, latents=latents, features=features.to(device))
        return {"raw": on_device, "cache": cached}

    sg_params = new_encoder().num_parameters()
    frozen_params = sum(p.numel() for m in frozen.modules() for p in m.parameters())
    print(f"SDXL-SG training step: size={args.size} resolution={resolution} batch={args.batch_size} "
          f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type}) "
          f"dtype={dtype} gradient_checkpointing={args.gradient_checkpointing}")  # fmt: skip
    print(f"parameters: frozen SDXL {frozen_params / 1e6:,.1f}M, SG encoder {sg_params / 1e6:,.2f}M")

    results = {
        path: count_flops(counting, new_encoder().to(meta), batch)
        for path, batch in batches(counting, meta).items()
    }
    print("model FLOPs of one step's forward + backward (FlopCounterMode on the meta device, attention as matmuls)")
    for path, r in results.items():
        print(f"{path:6s} {r['flops'] / 1e12:9.3f} TFLOP/step {r['flops'] / 1e12 / args.batch_size:9.3f} TFLOP/sample")
    ratio = results["raw"]["flops"] / results["cache"]["flops"]
    print(f"raw/cache FLOP ratio {ratio:.3f}: the cache gain in samples/s if both paths ran at the same MFU")
    if device == meta:
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        return 0

    peak, peak_source = peak_flops(device, args.peak_tflops)
    for path, batch in batches(frozen, device).items():
        torch.manual_seed(0)
        encoder = new_encoder().to(device)
        results[path] |= measure(frozen, encoder, batch, args.steps, device)
        results[path]["mfu"] = results[path]["flops"] / results[path]["step_s"] / peak
    print(f"peak for MFU: {peak / 1e12:.3f} TFLOP/s ({peak_source})")
    print(f"{'path':6s} {'step s':>9s} {'samples/s':>10s} {'GFLOP/step':>11s} {'MFU':>7s} {'peak MiB':>9s}")
    for path, r in results.items():
        print(f"{path:6s} {r['step_s']:9.4f} {r['samples_per_s']:10.2f} {r['flops'] / 1e9:11.2f} "
              f"{100 * r['mfu']:6.2f}% {r['peak_mem_mib']:9.0f}")  # fmt: skip
    if device.type == "cpu":
        print("(CPU peak memory is the process's peak RSS, cumulative over both paths)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "peak_flops": peak, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
