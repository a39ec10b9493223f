"""`laion-sg demo` / `make demo`: the whole product offline, on a local in-process Ray, with tiny random-weight models.

Chain: tiny models -> annotate scikit-image's sample photographs (scene_graph, spatial_caption and paragraph
tasks) -> export (splits, card, statistics, plots) -> pre-train the SG encoder (SGDiff) -> train SDXL-SG from it
for a few steps -> freeze a CompSG-Bench set
-> benchmark a baseline (tiny SDXL prompted with the SG text) and the trained SDXL-SG (graph IoUs, image metrics,
question track) -> the long-prompt track (the test images prompted with their paragraphs) -> the spatial track
(VISOR prompts, OWLv2 detections) for the tiny SDXL and a SPRIGHT LoRA trained on the spatial captions ->
Gen4Gen compositing of concept folders (layout, CLIPSeg masks, SDXL inpainting, scene graphs) and its CP-CLIP /
TI-CLIP scores -> leaderboard.

Every stage is the same job module a cluster runs (`python -m pipelines.annotate ...`), called through its `main()`.
The models are random-weight stand-ins, so the graphs, images and metrics are meaningless; the README shows the
same commands with real model ids.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# scikit-image ships these photographs with the package (no download); each gets a short alt-text caption, as
# LAION rows have (a sidecar .txt, which the folder reader takes as the caption).
SAMPLE_PHOTOS = {
    "astronaut": "an astronaut in a white spacesuit holding a helmet, a flag on the left",
    "chelsea": "a tabby cat looking up at the camera",
    "coffee": "a cup of coffee on a saucer with a spoon on the right",
    "rocket": "a rocket standing on a launch pad under a blue sky",
    "hubble_deep_field": "many small galaxies in dark space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "camera": "a man standing behind a camera on a tripod",
    "coins": "rows of old coins on a grey table",
    "moon": "the cratered surface of the moon",
    "horse": "the black silhouette of a horse on a white background",
    "clock": "a clock on a wall above a shelf",
    "colorwheel": "a round color wheel on a white background",
    "motorcycle_left": "a motorcycle in a garage, seen from the left",
    "motorcycle_right": "a motorcycle in a garage, seen from the right",
}


def write_sample_photos(folder: Path) -> list[Path]:
    """scikit-image's sample photographs (and the stereo motorcycle pair) as JPEG files in `folder`, each with its
    caption beside it (``{name}.txt``)."""
    from skimage import data, img_as_ubyte

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(data, name)() for name in SAMPLE_PHOTOS if not name.startswith("motorcycle")}
    left, right, _ = data.stereo_motorcycle()
    arrays.update(motorcycle_left=left, motorcycle_right=right)
    paths = []
    for name, array in arrays.items():
        image = Image.fromarray(img_as_ubyte(array)).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        path = folder / f"{name}.jpg"
        path.write_bytes(buffer.getvalue())
        path.with_suffix(".txt").write_text(SAMPLE_PHOTOS[name])
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Stage:
    """One job of the chain: `python -m module argv` (or `module.main(argv)` in-process)."""

    title: str
    module: str
    argv: list[str]


RUNS = {"baseline": "diffusers-sg-text", "sdxl_sg": "sdxl-sg"}
# runs of the other tracks (the long-prompt and the spatial track): name -> adapter; on the same leaderboard
COMPOSITIONS_PER_SCENE = 2
TRACK_RUNS = {"long_prompts": "diffusers-caption", "spatial": "diffusers-caption", "spatial_lora": "sdxl-lora"}
# The file that marks a directory as made by the demo: only such a directory is ever emptied.
DEMO_MARKER = ".laion-sg-demo"


class DemoOutputError(RuntimeError):
    """--output cannot be used: it is a file, or a non-empty directory that an earlier demo did not make."""


def prepare_output(output: Path) -> Path:
    """`output` (resolved) as an empty directory holding only the demo's marker file.

    A missing or empty directory is created or taken and marked; a directory an earlier demo made (it holds the
    marker) is emptied; anything else raises `DemoOutputError` and nothing is deleted.
    """
    output = output.resolve()
    marker = output / DEMO_MARKER
    if output.exists():
        if not output.is_dir():
            raise DemoOutputError(f"--output {output} is a file, not a directory; choose another --output")
        if not marker.is_file() and any(output.iterdir()):
            raise DemoOutputError(
                f"--output {output} is not empty and was not made by the demo (it has no {DEMO_MARKER} file); "
                "nothing was deleted. Choose a new or empty directory, or delete this one yourself."
            )
        for child in output.iterdir():
            if child == marker:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        output.mkdir(parents=True)
    marker.write_text("Made by `laion-sg demo`: a later demo run into this directory empties it.\n")
    return output


def prepare_inputs(output: Path, models: dict[str, Path] | None = None) -> tuple[dict[str, Path], Path]:
    """Tiny models (built unless given), the sample photographs and the annotate config, under `output`."""
    from laion_sg.offline import make_tiny_models
    from laion_sg.offline.fixtures import write_concept_scenes, write_layout_answers

    if models is None:
        print("Building tiny random-weight models (stand-ins: every number below is meaningless).", flush=True)
        models = make_tiny_models(output / "models")
    write_sample_photos(output / "photos")
    # The random annotator only finishes a schema-valid graph within its token budget under small bounds;
    # a real Qwen2.5-VL runs with the defaults (64 objects, 128 relations, 8 attributes).
    (output / "annotate_demo.yaml").write_text(
        "engine: hf\nengine_options:\n  max_new_tokens: 256\n"
        "limits:\n  max_objects: 3\n  max_relations: 3\n  max_attributes: 1\n"
        "  text_pattern: '^[a-z][a-z ]{0,7}$'\n"
    )
    # Gen4Gen: concept folders, and a hand-made layout per composition for the fixed engine (the tiny model's
    # boxes are unusable; a real run asks Qwen2.5-VL, see README)
    write_concept_scenes(output / "scenes")
    write_layout_answers(output / "scenes", COMPOSITIONS_PER_SCENE, output / "layouts.jsonl")
    return models, output / "photos"


def plan(output: Path, models: dict[str, Path], photos: Path, train_steps: int = 4) -> list[Stage]:
    """The chain, each job's outputs being the next one's inputs."""
    annotate = ["--config", str(output / "annotate_demo.yaml"), "--model", str(models["qwen2_5_vl"])]
    bench_file = output / "bench" / "compsg_bench.parquet"
    metric_models = [
        "--judge.model", str(models["qwen2_5_vl"]), "--judge.max-new-tokens", "256",
        "--judge.limits.max-objects", "3", "--judge.limits.max-relations", "3", "--judge.limits.max-attributes", "1",
        "--clip.model", str(models["open_clip"]), "--cmmd.model", str(models["open_clip"]),
        "--inception.weights", str(models["inception"]), "--generation.height", "64", "--generation.width", "64",
        "--generation.steps", "2", "--kid.subsets", "10",
    ]
    run_models = {"baseline": models["sdxl"], "sdxl_sg": output / "train" / "final"}
    long_file = output / "bench" / "long_prompts.parquet"
    spatial_file = output / "bench" / "spatial_prompts.parquet"
    all_runs = [*RUNS, *TRACK_RUNS]
    return [
        Stage("annotate (scene_graph)", "pipelines.annotate", [
            "--input", str(photos), "--output", str(output / "annotated"), "--task", "scene_graph", *annotate]),
        Stage("annotate (spatial_caption)", "pipelines.annotate", [
            "--input", str(photos), "--output", str(output / "spatial"), "--task", "spatial_caption", *annotate]),
        # 100 to 300 words: the token budget of a whole paragraph
        Stage("annotate (paragraph)", "pipelines.annotate", [
            "--input", str(photos), "--output", str(output / "paragraph"), "--task", "paragraph", *annotate,
            "--engine-options.max-new-tokens", "512"]),
        Stage("export", "pipelines.export", [
            "--input", str(output / "annotated"), "--output", str(output / "dataset"), "--split-proportions", "6,2,2"]),
        # SGDiff: pre-train the SG encoder against CLIP image embeddings (and masked graphs), then fine-tune from it
        Stage("SGDiff pre-training of the SG encoder", "training.pretrain_sg", [
            "--input", str(output / "dataset"), "--model", str(models["sdxl"]), "--output", str(output / "pretrain"),
            "--clip.model", str(models["open_clip"]), "--max-steps", str(train_steps), "--num-workers", "1",
            "--batch-size", "4", "--warmup-steps", "1", "--checkpoint-every", "2"]),
        Stage("train SDXL-SG", "training.train", [
            "--input", str(output / "dataset"), "--model", str(models["sdxl"]), "--output", str(output / "train"),
            "--max-steps", str(train_steps), "--num-workers", "1", "--resolution", "64", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--val-every", "0", "--lr", "0.02",  # a visible change in a few steps
            "--init-sg-encoder", str(output / "pretrain" / "final")]),
        # The random annotator rarely writes more than 4 relations: the demo keeps every test row.
        Stage("freeze the benchmark set", "benchmark.dataset", [
            "--input", str(output / "dataset"), "--output", str(bench_file), "--min-relations", "0"]),
        *(Stage(f"CompSG-Bench: {name}", "benchmark.run", [
            "--input", str(bench_file), "--adapter", adapter, "--model", str(run_models[name]),
            "--output", str(output / "runs" / name), *metric_models]) for name, adapter in RUNS.items()),
        # the long-prompt track: images prompted with their paragraphs, scored with the questions of their graphs
        # (and CLIP-T on the first window); the text adapter encodes every 75-token window. The tiny annotator
        # finishes few paragraphs within its token budget, none of the 3 test images': the demo takes the train
        # split (a real run freezes the test split, the default)
        Stage("freeze the long-prompt set", "benchmark.dataset", [
            "--input", str(output / "dataset"), "--output", str(long_file), "--min-relations", "0", "--split", "train",
            "--caption-column", "paragraph", "--prompts", str(output / "paragraph")]),
        Stage("long prompts: tiny SDXL", "benchmark.run", [
            "--input", str(long_file), "--adapter", TRACK_RUNS["long_prompts"], "--model", str(models["sdxl"]),
            "--output", str(output / "runs" / "long_prompts"), "--generation.long-prompt", *metric_models]),
        # the spatial track: VISOR's two-object prompts (a stable sample), four images each, detected by OWLv2
        Stage("spatial prompts (VISOR SR2D sample)", "benchmark.spatial.prompts", [
            "--output", str(spatial_file), "--max-prompts", "4"]),
        Stage("spatial track: tiny SDXL", "benchmark.spatial.run", [
            "--input", str(spatial_file), "--adapter", TRACK_RUNS["spatial"], "--model", str(models["sdxl"]),
            "--output", str(output / "runs" / "spatial"), "--detector.model", str(models["owlv2"]),
            "--generation.height", "64", "--generation.width", "64", "--generation.steps", "2"]),
        # SPRIGHT: LoRA on SDXL's UNet from the spatial captions (half of each epoch's samples), then the same
        # spatial track for the LoRA model, beside the plain tiny SDXL
        Stage("export (spatial captions)", "pipelines.export", [
            "--input", str(output / "spatial"), "--output", str(output / "dataset_spatial"),
            "--split-proportions", "6,2,2"]),
        Stage("SPRIGHT LoRA", "training.lora", [
            "--input", str(output / "dataset_spatial"), "--model", str(models["sdxl"]), "--output", str(output / "lora"),
            "--max-steps", str(train_steps), "--num-workers", "1", "--resolution", "64", "--rank", "4",
            "--checkpoint-every", "2", "--lr", "0.02"]),
        Stage("spatial track: SPRIGHT LoRA", "benchmark.spatial.run", [
            "--input", str(spatial_file), "--adapter", TRACK_RUNS["spatial_lora"], "--model", str(output / "lora"),
            "--output", str(output / "runs" / "spatial_lora"), "--detector.model", str(models["owlv2"]),
            "--generation.height", "64", "--generation.width", "64", "--generation.steps", "2"]),
        # Gen4Gen: compose the concept folders into new scenes (layout, CLIPSeg masks, SDXL background and inpainting,
        # scene graphs of the composites), then score them with CP-CLIP and TI-CLIP
        Stage("Gen4Gen compositing", "pipelines.compositing", [
            "--input", str(output / "scenes"), "--output", str(output / "compositing"), "--model",
            str(models["qwen2_5_vl"]), "--layout-engine", "fixed", "--layout-model", str(output / "layouts.jsonl"),
            "--compositions-per-scene", str(COMPOSITIONS_PER_SCENE), "--masks.model", str(models["clipseg"]),
            "--compositor.model", str(models["sdxl"]), "--compositor.inpaint-model", str(models["sdxl"]),
            "--compositor.size", "64", "--compositor.steps", "2", "--engine-options.max-new-tokens", "256",
            "--limits.max-objects", "3", "--limits.max-relations", "3", "--limits.max-attributes", "1"]),
        Stage("Gen4Gen scores (CP-CLIP, TI-CLIP)", "benchmark.compositing", [
            "--input", str(output / "compositing"), "--output", str(output / "compositing_scores"),
            "--detector.model", str(models["owlv2"]), "--clip.model", str(models["open_clip"])]),
        Stage("leaderboard", "benchmark.leaderboard", [
            "render", *(str(output / "runs" / name) for name in all_runs), "--output", str(output / "leaderboard")]),
    ]  # fmt: skip


def artifacts(output: Path) -> dict[str, Path]:
    return {
        "annotated Parquet (scene_graph)": output / "annotated" / "data",
        "annotated Parquet (spatial_caption)": output / "spatial" / "data",
        "dataset (datasets.load_dataset)": output / "dataset",
        "dataset card": output / "dataset" / "README.md",
        "pre-trained SG encoder (SGEncoder.from_pretrained)": output / "pretrain" / "final",
        "SDXL-SG pipeline (SDXLSGPipeline.from_pretrained)": output / "train" / "final",
        "benchmark set": output / "bench" / "compsg_bench.parquet",
        "long-prompt set": output / "bench" / "long_prompts.parquet",
        "spatial prompt set": output / "bench" / "spatial_prompts.parquet",
        "SPRIGHT LoRA (load_lora_weights)": output / "lora" / "final",
        "Gen4Gen composites (datasets.load_dataset)": output / "compositing" / "data",
        "Gen4Gen scores (CP-CLIP, TI-CLIP)": output / "compositing_scores" / "scores.json",
        **{f"result record ({name})": output / "runs" / name / "result.json" for name in [*RUNS, *TRACK_RUNS]},
        "leaderboard (Markdown)": output / "leaderboard" / "leaderboard.md",
        "leaderboard (HTML)": output / "leaderboard" / "index.html",
    }


def verify_artifacts(output: Path) -> dict[str, str]:
    """Load every artifact the way a user would; raise if one is missing or unreadable. Returns a line each."""
    import datasets

    from schemas import BenchmarkResult
    from training.pipeline import SDXLSGPipeline

    paths = artifacts(output)
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        raise RuntimeError(f"demo artifacts missing: {', '.join(missing)}")
    # A fresh cache: `datasets` keys its cache by the folder name and card, so an older demo's rows could answer.
    with tempfile.TemporaryDirectory() as cache_dir:
        dataset = datasets.load_dataset(str(output / "dataset"), cache_dir=cache_dir, keep_in_memory=True)
    rows = sum(len(split) for split in dataset.values())
    first = dataset["train"][0]
    if not isinstance(first["image"], Image.Image) or not isinstance(first["scene_graph"]["objects"], list):
        raise RuntimeError("the exported dataset does not decode images and graphs")
    pipeline = SDXLSGPipeline.from_pretrained(str(paths["SDXL-SG pipeline (SDXLSGPipeline.from_pretrained)"]))
    records = {
        name: BenchmarkResult.from_json((output / "runs" / name / "result.json").read_text())
        for name in [*RUNS, *TRACK_RUNS]
    }
    page = paths["leaderboard (HTML)"].read_text()
    if not all(record.model.adapter in page for record in records.values()):
        raise RuntimeError("the leaderboard page does not list every record")
    return {
        "dataset": f"{rows} rows in {sorted(dataset)}; images decode as PIL, graphs as nested lists",
        "pipeline": f"{type(pipeline).__name__} loaded, SG encoder alpha={float(pipeline.sg_encoder.alpha):.2e}",
        **{f"record {name}": ", ".join(f"{k}={v:.4g}" for k, v in r.metrics.items()) for name, r in records.items()},
    }


def run_demo(output: Path, train_steps: int = 4, num_cpus: int = 4) -> dict[str, Path]:
    """Run the chain into `output` in-process and return the artifacts by name. `output` is created, or emptied
    if an earlier demo made it (`prepare_output`); any other non-empty directory is refused."""
    import importlib

    import ray

    output = prepare_output(output)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the hub: prove it
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):  # `ray job submit`: every stage's Ray work runs on that cluster
            ray.init()
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    models, photos = prepare_inputs(output)
    timings = {}
    for stage in plan(output, models, photos, train_steps):
        print(f"\n=== {stage.title}\n    python -m {stage.module} {' '.join(stage.argv)}", flush=True)
        start = time.perf_counter()
        if code := importlib.import_module(stage.module).main(stage.argv):
            raise SystemExit(f"demo stage '{stage.title}' failed with exit code {code}")
        timings[stage.title] = time.perf_counter() - start

    checks = verify_artifacts(output)
    print("\n=== Demo finished. Artifacts:")
    for name, path in artifacts(output).items():
        print(f"  {name:52s} {path}")
    print("\nChecked:\n" + "\n".join(f"  {name}: {line}" for name, line in checks.items()))
    print("\nStage times: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    print("\nNOTE: all models above are tiny RANDOM-WEIGHT stand-ins built offline; the graphs, images and metrics are")
    print("meaningless. README.md shows the same commands with real model ids (Qwen2.5-VL, SDXL, ViT-L-14, ...).")
    return artifacts(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="laion-sg demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        default="demo_out",
        help="directory for every artifact: new, empty, or one an earlier demo made (then emptied first)",
    )
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--num-cpus", type=int, default=4, help="CPUs of the local in-process Ray")
    args = parser.parse_args(argv)
    try:
        run_demo(Path(args.output), train_steps=args.train_steps, num_cpus=args.num_cpus)
    except DemoOutputError as exc:
        print(f"laion-sg demo: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
