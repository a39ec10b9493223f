"""`laion-sg`: one console script in front of the package's jobs.

Each subcommand forwards its arguments to the `main(argv)` of a job module, so `laion-sg annotate ...`,
`python -m pipelines.annotate ...` and `ray job submit -- python -m pipelines.annotate ...` run the same code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from laion_sg.offline import make_tiny_models

# subcommand -> (module whose main(argv) runs it, one-line help)
JOBS: dict[str, tuple[str, str]] = {
    "annotate": ("pipelines.annotate", "images -> scene graphs (Ray Data; hf | vllm | openai engines)"),
    "export": ("pipelines.export", "annotated shards -> splits, dataset card, statistics and plots"),
    "compose": ("pipelines.compositing", "Gen4Gen: concept folders -> composites with boxes and scene graphs"),
    "precompute": ("training.precompute", "cache VAE latents and frozen text-encoder outputs (Ray Data)"),
    "train": ("training.train", "fine-tune SDXL-SG (Ray Train)"),
    "lora": ("training.lora", "SPRIGHT-style spatial LoRA fine-tuning of SDXL's UNet (Ray Train)"),
    "bench-set": ("benchmark.dataset", "freeze the CompSG-Bench sample set (or a long-prompt set)"),
    "bench": ("benchmark.run", "run CompSG-Bench (and its question track) for one model -> result record"),
    "long-prompts": ("benchmark.long_prompts", "a ParaPrompts-style CSV -> keyed captions Parquet"),
    "spatial-prompts": ("benchmark.spatial.prompts", "write VISOR's SR2D spatial prompt set (or a stable sample)"),
    "spatial": ("benchmark.spatial.run", "run the spatial track (VISOR) for one model -> result record"),
    "compose-scores": ("benchmark.compositing", "CP-CLIP and TI-CLIP of a compositing output"),
    "leaderboard": ("benchmark.leaderboard", "render or verify leaderboard records"),
    "demo": ("laion_sg.demo", "the whole chain offline with tiny random-weight models"),
}

def _make_tiny_models_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="laion-sg make-tiny-models", description=make_tiny_models.__doc__)
    parser.add_argument("dir", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in make_tiny_models(args.dir, seed=args.seed).items():
        print(f"{name:12s} {path}")
    print("These are random-weight stand-ins for tests and the offline demo, not usable models.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {**{name: help_ for name, (_, help_) in JOBS.items()},
                "make-tiny-models": "write tiny random-weight models (Qwen2.5-VL, SDXL, open_clip, Inception, OWLv2)"}
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in commands:
        width = max(map(len, commands))
        print("usage: laion-sg COMMAND [ARGS...]\n\ncommands:")
        for name, help_ in commands.items():
            print(f"  {name:{width}s}  {help_}")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    command, rest = argv[0], argv[1:]
    if command == "make-tiny-models":
        return _make_tiny_models_main(rest)
    module = importlib.import_module(JOBS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
