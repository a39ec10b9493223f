"""Run CompSG-Bench for one model: generate → judge → metrics → one `schemas.BenchmarkResult` in RUN_DIR/result.json.

    python -m benchmark.run --bench bench.parquet --adapter sdxl-sg --model DIR --output RUN_DIR \\
        [--images-per-sample 1 --steps 40 --guidance 5 --height 1024 --width 1024 --seed 42 --num-actors 0 \\
         --judge-model ID --clip-model ID --clip-pretrained TAG --inception-weights PTH --config run.yaml \\
         --display-name NAME]

``--config`` reads a YAML mapping whose keys are the option names with underscores (``images_per_sample: 4``);
options on the command line override it. Generation, judging and feature extraction run on ``--num-actors`` Ray
actors (one GPU each on a GPU cluster), or in this process with ``--num-actors 0``; both give the same images and
numbers, because every image has its own seed and chunks are independent (see `benchmark.generate`,
`benchmark.chunks`, `benchmark.features`). Each image's features are stored by (key, image index) and fed to the
metrics in that order, so a run, a resumed run and `benchmark.leaderboard verify` compute the same numbers:

- FID and KID (Inception pool3, clean resize) of generated images against the reference images;
- CLIP-T (100·max(cos, 0) between a generated image and the sample's caption, or its SG text) and CLIP-I (cosine
  to the reference image), with ``--clip-model``; CMMD with ``--cmmd-clip-model`` (ViT-L/14@336 by default);
- SG-IoU, Entity-IoU, Relation-IoU of the judge's graphs (`benchmark.judge`).

Each metric is a `benchmark.metrics` class (a `torchmetrics.Metric`); the record's metric keys and their
`metric_details` groups are the ones the classes name (`labels`, `details_key`). ``--display-name`` names the run
on the leaderboard (kept in the record's ``provenance.config``).

RUN_DIR keeps the images (``images/``), the judge's answers (``judge/``), the image features (``features/``, one
folder per set of metric networks) and ``run.json`` (what the images and judgements depend on); a re-run with the
same configuration resumes, one with another configuration is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from benchmark.dataset import BenchmarkSample, BenchmarkSet, load_benchmark
from benchmark.features import REFERENCE_INDEX, FeatureItem, FeatureSettings, extract_features
from benchmark.generate import ADAPTERS, generate_images, image_index, images_digest, iter_images
from benchmark.judge import JudgeSettings, judge_images, score_judgements
from benchmark.metrics.graph_iou import GraphIoU
from benchmark.provenance import provenance, weights_sha256
from schemas import BenchmarkResult, GenerationSettings, ModelInfo
from schemas.layout import RESULT_FILE
from schemas.runs import check_run_identity, pin_run_identity

__all__ = ["RunConfig", "compute_metrics", "main", "parse_config", "recompute", "run_benchmark"]

_PATH_OPTIONS = ("bench", "output", "inception_weights", "synonyms")
_MODEL_OPTIONS = ("model", "judge_model", "clip_model", "cmmd_clip_model")


@dataclass(frozen=True)
class RunConfig:
    """Every option of a benchmark run (recorded in the result's provenance).

    `display_name` is the run's name on the leaderboard (default: the model id); it is stored with the other
    options in ``provenance.config`` and changes neither the images nor the numbers (a run can be resumed under
    another name)."""

    bench: str
    adapter: str
    model: str
    output: str
    images_per_sample: int = 1
    steps: int = 40
    guidance: float = 5.0
    height: int = 1024
    width: int = 1024
    seed: int = 42
    dtype: str = "float32"
    scheduler: str | None = None
    num_actors: int = 0
    chunk_size: int = 8
    judge_model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    judge_restrict_vocabulary: bool = True
    judge_max_new_tokens: int = 1024
    judge_batch_size: int = 1
    judge_max_objects: int = 64
    judge_max_relations: int = 128
    judge_max_attributes: int = 8
    synonyms: str | None = None
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = "openai"
    clip_t_text: Literal["caption", "sg_text"] = "caption"
    cmmd_clip_model: str = "ViT-L-14-336"
    cmmd_clip_pretrained: str | None = "openai"
    inception_weights: str | None = None
    allow_download: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    feature_batch_size: int = 32
    display_name: str | None = None

    def generation(self) -> GenerationSettings:
        return GenerationSettings(
            seed=self.seed,
            images_per_sample=self.images_per_sample,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            scheduler=self.scheduler or _default_scheduler(self.model),
            dtype=self.dtype,
        )

    def judge(self) -> JudgeSettings:
        return JudgeSettings(
            model=self.judge_model,
            restrict_vocabulary=self.judge_restrict_vocabulary,
            max_new_tokens=self.judge_max_new_tokens,
            batch_size=self.judge_batch_size,
            max_objects=self.judge_max_objects,
            max_relations=self.judge_max_relations,
            max_attributes=self.judge_max_attributes,
        )

    def features(self) -> FeatureSettings:
        return FeatureSettings(
            inception_weights=self.inception_weights,
            allow_download=self.allow_download,
            clip_model=self.clip_model,
            clip_pretrained=self.clip_pretrained,
            cmmd_clip_model=self.cmmd_clip_model,
            cmmd_clip_pretrained=self.cmmd_clip_pretrained,
            batch_size=self.feature_batch_size,
        )

    def resolved(self) -> RunConfig:
        """Local paths made absolute (hub ids stay as they are), so the record points at the same files from
        anywhere."""
        values = asdict(self)
        for name in _PATH_OPTIONS:
            if values[name] is not None:
                values[name] = str(Path(values[name]).resolve())
        for name in _MODEL_OPTIONS:
            if Path(values[name]).exists():
                values[name] = str(Path(values[name]).resolve())
        return RunConfig(**values)


def _default_scheduler(model: str) -> str | None:
    """The scheduler class named in a diffusers model's ``model_index.json``, when it has one."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(model)
    except (OSError, ValueError):
        return None
    entry = config.get("scheduler")
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


# ---------------------------------------------------------------------- metrics


def _image_metrics(
    config: RunConfig,
    samples: Sequence[BenchmarkSample],
    run_dir: Path,
    state_dir: Path,
    fake: list[tuple[str, int]],
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """FID, KID, CLIP-T, CLIP-I and CMMD of the stored images (`fake`: their sorted (key, image_index)) against
    the references, from features extracted on `config.num_actors` Ray actors (or in this process) and stored
    under `state_dir/features/`."""
    from benchmark.metrics import CMMD, FID, KID, CLIPImageScore, CLIPScore, Precomputed

    settings = config.features()
    provenance = settings.provenance()
    texts = {s.key: s.caption if config.clip_t_text == "caption" else s.sg_text for s in samples}
    references = (FeatureItem(s.key, REFERENCE_INDEX, s.image, texts[s.key]) for s in samples)
    generated = (
        FeatureItem(row["key"], row["image_index"], row["png"])
        for table in iter_images(run_dir, ["key", "image_index", "png"])
        for row in table.sort_by([("key", "ascending"), ("image_index", "ascending")]).to_pylist()
    )
    stored = extract_features(
        itertools.chain(references, generated),
        settings,
        state_dir / "features" / settings.digest(provenance, [texts[s.key] for s in samples]),
        num_actors=config.num_actors,
    )
    real = [(s.key, REFERENCE_INDEX) for s in samples]
    owners = [(key, REFERENCE_INDEX) for key, _ in fake]
    inception, clip, cmmd_clip = (Precomputed(provenance[name]) for name in ("inception", "clip", "cmmd"))

    fid = FID(inception)
    kid = KID(inception, subsets=config.kid_subsets, subset_size=config.kid_subset_size)
    for metric in (fid, kid):
        metric.update_features(stored.array("inception", real), real=True)
        metric.update_features(stored.array("inception", fake), real=False)
    clip_t, clip_i, cmmd = CLIPScore(clip), CLIPImageScore(clip), CMMD(cmmd_clip)
    clip_t.update_embeddings(stored.array("clip", fake), stored.array("text_clip", owners))
    clip_i.update_embeddings(stored.array("clip", fake), stored.array("clip", owners))
    cmmd.update_embeddings(stored.array("cmmd", real), real=True)
    cmmd.update_embeddings(stored.array("cmmd", fake), real=False)

    metrics, results = {}, {}
    for metric in (fid, kid, clip_t, clip_i, cmmd):
        values, details = _split_record(metric, metric.compute())
        metrics |= values
        results[metric.details_key] = details
    results[CLIPScore.details_key]["text"] = config.clip_t_text
    return metrics, results


def _split_record(metric: Any, computed: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """A metric's `compute()` split into its record values (the keys it names in `labels`) and its details (the
    rest); `computed` itself is left as it is (torchmetrics caches it)."""
    values = {key: float(computed[key]) for key in metric.labels}
    return values, {key: value for key, value in computed.items() if key not in metric.labels}


def _read_synonyms(path: str | None) -> dict[str, str] | None:
    """A YAML (or JSON) mapping of term -> canonical term, for the graph IoUs."""
    import yaml

    return {str(k): str(v) for k, v in yaml.safe_load(Path(path).read_text()).items()} if path else None


def compute_metrics(
    config: RunConfig, bench: BenchmarkSet, run_dir: Path, state_dir: Path
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Every metric of a run from its stored images. Judgements and image features are stored under, or resumed
    from, `state_dir` (``judge/``, ``features/``)."""
    samples = bench.samples
    stored = image_index(run_dir)
    expected = {(s.key, i) for s in samples for i in range(config.images_per_sample)}
    found = set(zip(stored.column("key").to_pylist(), stored.column("image_index").to_pylist(), strict=True))
    if found != expected:
        raise ValueError(
            f"{run_dir}: {len(expected - found)} images missing and {len(found - expected)} unexpected "
            f"for {len(samples)} samples x {config.images_per_sample} images"
        )
    synonyms = _read_synonyms(config.synonyms)
    judge = config.judge()
    judgements = judge_images(
        samples,
        iter_images(run_dir, ["key", "image_index", "png"]),
        judge,
        state_dir / "judge",
        num_actors=config.num_actors,
        chunk_size=config.chunk_size,
    )
    iou, judge_details = score_judgements(samples, judgements, synonyms)
    metrics, details = _image_metrics(config, samples, run_dir, state_dir, sorted(found))
    metrics |= {key: iou[key] for key in GraphIoU.labels}
    details[GraphIoU.details_key] = {
        **judge_details,
        **asdict(judge),
        "judge_weights_sha256": weights_sha256(judge.model),
        "engine": "hf",
        "synonyms": synonyms,
        "normalisation": "benchmark.metrics.graph_iou.normalize_name (case, whitespace, plural -> singular)",
    }
    details["images"] = {"n_images": len(found), "sha256": images_digest(run_dir)}
    return metrics, details


# ---------------------------------------------------------------------- runs


def run_benchmark(config: RunConfig) -> BenchmarkResult:
    """Generate, judge and score; write and return the result record."""
    started = time.perf_counter()
    config = config.resolved()
    if config.adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {config.adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
    bench = load_benchmark(config.bench)
    run_dir = Path(config.output)
    generation = config.generation()
    model = ModelInfo(
        adapter=config.adapter,
        model_id=config.model,
        weights_hash=weights_sha256(config.model),
        conditioning=ADAPTERS[config.adapter].conditioning,
    )
    identity = {
        "benchmark": bench.info().model_dump(),
        "model": model.model_dump(),
        "generation": generation.model_dump(),
        "judge": asdict(config.judge()),
    }
    check_run_identity(run_dir, identity)  # what the stored images and judgements depend on
    pin_run_identity(run_dir, identity)
    generate_images(
        bench.samples,
        config.adapter,
        config.model,
        generation,
        run_dir,
        num_actors=config.num_actors,
        chunk_size=config.chunk_size,
    )
    metrics, details = compute_metrics(config, bench, run_dir, run_dir)
    record = BenchmarkResult(
        benchmark=bench.info(),
        model=model,
        generation=generation,
        metrics=metrics,
        metric_details=details,
        provenance=provenance(asdict(config), time.perf_counter() - started),
    )
    (run_dir / RESULT_FILE).write_text(record.to_json() + "\n")
    return record


def recompute(
    record: BenchmarkResult, run_dir: str | Path, *, num_actors: int = 0
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """A record's metrics recomputed from the images in `run_dir`. The judge runs again (in a scratch folder), in
    this process or on `num_actors` Ray actors: the numbers do not depend on that choice."""
    import tempfile

    config = dataclasses.replace(RunConfig(**record.provenance.config), num_actors=num_actors)
    bench = load_benchmark(config.bench)
    if bench.info().content_hash != record.benchmark.content_hash:
        raise ValueError(f"{config.bench} is not the benchmark set of this record")
    with tempfile.TemporaryDirectory(prefix="compsg-verify-") as scratch:
        return compute_metrics(config, bench, Path(run_dir), Path(scratch))


# ---------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmark.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", help="YAML file of options (keys with underscores); the command line wins"
    )
    defaults = {f.name: None if f.default is dataclasses.MISSING else f.default for f in fields(RunConfig)}
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults[f.name])
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        choices = ("caption", "sg_text") if f.name == "clip_t_text" else None
        parser.add_argument(flag, type=kind, default=defaults[f.name], choices=choices)
    return parser


def parse_config(argv: list[str] | None = None) -> RunConfig:
    """A `RunConfig` from the command line and an optional ``--config`` YAML file."""
    import yaml

    parser = _parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        unknown = sorted(set(values) - {f.name for f in fields(RunConfig)})
        if unknown:
            parser.error(f"unknown options in {known.config}: {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    missing = [name for name in ("bench", "adapter", "model", "output") if args[name] is None]
    if missing:
        parser.error("missing required options: " + ", ".join("--" + m for m in missing))
    return RunConfig(**args)


def main(argv: list[str] | None = None) -> int:
    record = run_benchmark(parse_config(argv))
    print(json.dumps({"run_id": record.run_id, "metrics": record.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
