"""Images/s of our Inception feature extraction vs torchmetrics' FID feature extraction, on the same images.

    .venv/bin/python bench/metrics_throughput.py [--images 64] [--size 512] [--batch-size 32] [--rounds 2] [--weights PATH]
    .venv/bin/python bench/metrics_throughput.py --features-only --clip ViT-B-32 --clip ViT-L-14-336 --json OUT

Both run the same weights (random ones are built if `--weights` is not given: speed does not depend on them),
on CUDA when available, else CPU. Ours: clean resize (PIL bicubic per float channel) on the CPU, then the
network. torchmetrics: `FrechetInceptionDistance.update` on uint8 tensors (its default antialiased bilinear
resize on the device, then the network, then float64 sums). Each measurement runs one batch untimed
first; methods alternate for `--rounds` rounds and the best rate of each is shown (the machine may be shared).

`--clip MODEL` (repeatable) adds the CLIP image embeddings of `benchmark.metrics.CLIPEmbedder` (open_clip's
preprocessing, then the network) of an open_clip model name, built with random weights, or a local model folder;
``tiny`` builds `laion_sg.offline.tiny_clip`'s. `--features-only` times only our extractors, on random pixels, and
needs neither torchmetrics nor scikit-image (as `bench/gpu_check.sh` runs it on a bare CUDA machine).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchmark.metrics import CLIPEmbedder, InceptionFeatureExtractor
from benchmark.metrics.inception import clean_resize
from laion_sg.offline.tiny_clip import build_tiny_open_clip
from laion_sg.offline.tiny_inception import build_random_inception


def _images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Random size×size crops of scikit-image's sample photos (rescaled up when smaller), uint8 N×H×W×3."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(count):
        source = Image.fromarray(sources[i % len(sources)])
        scale = max(1.0, size / min(source.size)) * rng.uniform(1.0, 1.3)
        source = source.resize(
            (round(source.width * scale), round(source.height * scale)), Image.Resampling.BICUBIC
        )
        left, top = rng.integers(0, source.width - size + 1), rng.integers(0, source.height - size + 1)
        out.append(np.asarray(source.crop((left, top, left + size, top + size))))
    return np.stack(out)


def _random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels, N×size×size×3 (the extractors' speed does not depend on the content)."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _rate(run: Callable[[np.ndarray], object], images: np.ndarray, batch_size: int) -> float:
    run(images[:batch_size])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        run(images[i : i + batch_size])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--clip", action="append", default=[], help="open_clip name, local folder, or 'tiny'")
    parser.add_argument("--features-only", action="store_true", help="only our extractors, on random pixels")
    parser.add_argument("--json", type=Path, help="also write the images/s to this file")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = _random_images(args.images, args.size) if args.features_only else _images(args.images, args.size)
    clip: dict[str, CLIPEmbedder] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or build_random_inception(Path(tmp) / "inception-random.pth")
        ours = InceptionFeatureExtractor(weights, device=device, batch_size=args.batch_size)
        if not args.features_only:
            from torchmetrics.image.fid import FrechetInceptionDistance

            reference = FrechetInceptionDistance(
                feature=2048, feature_extractor_weights_path=str(weights)
            ).to(device)
        for model in args.clip:
            source = build_tiny_open_clip(Path(tmp) / "open_clip") if model == "tiny" else model
            clip[model] = CLIPEmbedder(source, pretrained=None, device=device, batch_size=args.batch_size)

    def torchmetrics_update(batch: np.ndarray) -> None:
        reference.update(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device), real=True)

    pool = ThreadPoolExecutor(max_workers=os.cpu_count())

    def clean_resize_only(batch: np.ndarray) -> None:
        list(pool.map(clean_resize, batch))

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"Inception feature extraction, {args.images} images {args.size}x{args.size}, batch {args.batch_size}, {name}"
    )
    runs = {"ours: clean resize + network": ours}
    if not args.features_only:
        runs["ours: clean resize only (CPU threads)"] = clean_resize_only
        runs["torchmetrics FID.update (bilinear-aa)"] = torchmetrics_update
    for model, embedder in clip.items():
        runs[f"CLIP {model}: preprocess + network"] = embedder.embed_images
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):  # alternate the methods, keep each one's best round
        for label, run in runs.items():
            best[label] = max(best[label], _rate(run, images, args.batch_size))
    pool.shutdown()
    for label, rate in best.items():
        print(f"{label:40s} {rate:8.2f} images/s")
    if args.json:
        figures = {
            "args": vars(args) | {"json": str(args.json), "weights": args.weights and str(args.weights)},
            "device": name,
            "images_per_s": best,
            "inception_images_per_s": best["ours: clean resize + network"],
            "clip_images_per_s": {model: best[f"CLIP {model}: preprocess + network"] for model in clip},
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
