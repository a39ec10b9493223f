"""Time per image of SDXL-SG generation vs plain SDXL: the same UNet, VAE, scheduler, size and steps.

    python bench/generation_speed.py --size tiny --resolution 64 --steps 2 --rounds 2      # CPU, tiny random SDXL
    python bench/generation_speed.py --size full --resolution 1024 --steps 30 --rounds 3   # GPU, full-size SDXL

- `--size tiny`: the tiny random SDXL of `laion_sg.offline.tiny_sdxl` and a 32-wide SG encoder.
- `--size full`: SDXL base 1.0's architecture with random weights (`bench/train_step.py`'s `full_size_frozen`;
  nothing is downloaded), SDXL's Euler scheduler, the full 14.7M SG encoder; bf16 on GPU, fp32 on CPU.

Plain SDXL is `StableDiffusionXLPipeline` with a caption; SDXL-SG is `training.pipeline.SDXLSGPipeline` with that
caption's scene graph (the two share every SDXL component). Both run classifier-free guidance at SDXL's default
scale and decode with the VAE (`output_type="np"`, one image per call). Each pipeline runs one untimed warm-up
call, then `--rounds` timed calls, alternating which goes first; the median is reported. The conditioning alone
(`encode_prompt` vs `encode_scene_graphs`) is timed the same way. The overhead is SDXL-SG's time per image over
plain SDXL's, minus 1. Speed does not depend on the weights. Prints the figures and, with `--json`, writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from laion_sg.offline.fixtures import FIXTURE_GRAPHS
from laion_sg.offline.tiny_sdxl import build_tiny_sdxl
from schemas import SceneGraph
from training.pipeline import SDXLSGPipeline
from training.sg_encoder import SGEncoder

CAPTION, GRAPH = FIXTURE_GRAPHS["astronaut"][1:]  # a four-object, three-relation graph and its caption


def build_pipelines(size: str, model_dir: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(plain SDXL, SDXL-SG) sharing one set of SDXL components. `model_dir` is a tiny SDXL folder
    (`build_tiny_sdxl`): the tiny model itself, or, for `size="full"`, the tokenizers and scheduler config."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    if size == "tiny":
        components = StableDiffusionXLPipeline.from_pretrained(model_dir, dtype=dtype).to(device).components
        widths = {"hidden_dim": 32, "mlp_hidden_dim": 64}
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from train_step import full_size_frozen

        frozen = full_size_frozen(model_dir, device, dtype)
        components = {
            "vae": frozen.vae,
            "text_encoder": frozen.text_encoders[0],
            "text_encoder_2": frozen.text_encoders[1],
            "tokenizer": frozen.tokenizers[0],
            "tokenizer_2": frozen.tokenizers[1],
            "unet": frozen.unet,
            "scheduler": EulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler"),  # SDXL's
        }
        widths = {}
    components = {k: v for k, v in components.items() if k not in ("image_encoder", "feature_extractor")}
    plain = StableDiffusionXLPipeline(**components, add_watermarker=False)
    encoder = SGEncoder.for_text_encoders(components["text_encoder"], components["text_encoder_2"], **widths)
    sg = SDXLSGPipeline(**components, sg_encoder=encoder.to(device, dtype).eval(), add_watermarker=False)
    for pipe in (plain, sg):
        pipe.set_progress_bar_config(disable=True)
    return plain, sg


def _timed(work: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def alternate(runs: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each run over `rounds` timed calls after one warm-up call each; the order of the runs
    alternates between rounds (ABBA...) so that a slow drift of the machine falls on both alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            times[name].append(_timed(runs[name], device))
    return {name: statistics.median(values) for name, values in times.items()}


def compare(
    plain: Any, sg: Any, resolution: int, steps: int, rounds: int, device: torch.device
) -> dict[str, Any]:
    """Seconds per image (and of the conditioning alone) of plain SDXL and SDXL-SG, and SDXL-SG's overhead."""
    graph = SceneGraph.from_json(GRAPH)

    def generate(pipe: Any, **condition: Any) -> Callable[[], object]:
        def run() -> object:
            generator = torch.Generator(device).manual_seed(0)
            with warnings.catch_warnings():  # random weights can decode to NaN pixels
                warnings.simplefilter("ignore", RuntimeWarning)
                return pipe(
                    **condition,
                    height=resolution,
                    width=resolution,
                    num_inference_steps=steps,
                    generator=generator,
                    output_type="np",
                ).images

        return run

    with torch.inference_mode():
        conditioning = alternate(
            {
                "plain": lambda: plain.encode_prompt(
                    CAPTION, device=device, do_classifier_free_guidance=True
                ),
                "sg": lambda: sg.encode_scene_graphs(graph),
            },
            max(rounds, 5),
            device,
        )
    image = alternate(
        {"plain": generate(plain, prompt=CAPTION), "sg": generate(sg, scene_graph=graph)}, rounds, device
    )
    return {
        "resolution": resolution,
        "steps": steps,
        "rounds": rounds,
        "plain_s_per_image": image["plain"],
        "sg_s_per_image": image["sg"],
        "overhead": image["sg"] / image["plain"] - 1.0,
        "plain_conditioning_s": conditioning["plain"],
        "sg_conditioning_s": conditioning["sg"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default 64 (tiny) or 1024 (full)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per image")
    parser.add_argument("--rounds", type=int, default=3, help="timed images per pipeline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    resolution = args.resolution or (64 if args.size == "tiny" else 1024)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        plain, sg = build_pipelines(args.size, build_tiny_sdxl(Path(tmp) / "sdxl"), device, dtype)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"generation: size={args.size} {resolution}x{resolution} steps={args.steps} rounds={args.rounds} "
          f"device={device} ({name}) dtype={dtype}")  # fmt: skip
    figures = compare(plain, sg, resolution, args.steps, args.rounds, device)
    print(f"{'pipeline':10s} {'s/image':>9s} {'conditioning ms':>16s}")
    for key, label in (("plain", "SDXL"), ("sg", "SDXL-SG")):
        print(
            f"{label:10s} {figures[f'{key}_s_per_image']:9.3f} {1e3 * figures[f'{key}_conditioning_s']:16.1f}"
        )
    print(f"SDXL-SG overhead per image: {100 * figures['overhead']:+.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": name, **figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
