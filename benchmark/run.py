"""Run CompSG-Bench for one model: generate → judge → metrics → one `schemas.BenchmarkResult` in RUN_DIR/result.json.

    python -m benchmark.run --input bench.parquet --adapter sdxl-sg --model DIR --output RUN_DIR \\
        [--num-actors 0 --display-name NAME --config run.yaml \\
         --generation.images-per-sample 1 --generation.steps 40 --generation.guidance 5 --generation.seed 42 \\
         --judge.model ID --clip.model ID --clip.pretrained TAG --inception.weights PTH ...]

The settings are one typed model, `BenchRunSettings` (`schemas.settings`; ``--help`` lists every one with its
default): the run's own (``--input``, ``--adapter``, ``--model``, ``--output``, ``--num-actors``, ...) and groups
written as dotted flags, or nested mappings in the ``--config`` YAML (flags win over it): ``generation`` (the
pixels: ``--generation.steps``, ``.guidance``, ``.height``, ``.width``, ``.seed``, ``.scheduler``, ...), ``judge``
(the VLM judge, with its graph bounds as a `schemas.Limits`: ``--judge.limits.max-objects``, ...), ``clip``
(CLIP-T, CLIP-I), ``cmmd``, ``inception`` (FID, KID), ``kid`` and ``features``. Generation, judging and feature
extraction run on ``--num-actors`` Ray actors (one GPU each on a GPU cluster), or in this process with
``--num-actors 0``; both give the same images and numbers, because every image has its own seed and chunks are
independent (see `benchmark.generate`, `benchmark.chunks`, `benchmark.features`).
Each image's features are stored by (key, image index) and fed to the metrics in that order, so a run, a resumed
run and `benchmark.leaderboard verify` compute the same numbers:

- FID and KID (Inception pool3, clean resize) of generated images against the reference images;
- CLIP-T (100·max(cos, 0) between a generated image and the sample's caption, or its SG text) and CLIP-I (cosine
  to the reference image), with ``--clip.model``; CMMD with ``--cmmd.model`` (ViT-L/14@336 by default);
- SG-IoU, Entity-IoU, Relation-IoU of the judge's graphs (`benchmark.judge`).

Each metric is a `benchmark.metrics` class (a `torchmetrics.Metric`); the record's metric keys and their
`metric_details` groups are the ones the classes name (`labels`, `details_key`). ``--display-name`` names the run
on the leaderboard (kept in the record's ``provenance.config``, which holds every setting, nested as in the YAML).

RUN_DIR keeps the images (``images/``), the judge's answers (``judge/``), the image features (``features/``, one
folder per set of metric networks) and ``run.json`` (what the images and judgements depend on); a re-run with the
same settings resumes, one with other settings is refused. Older layouts still read: records whose
``provenance.config`` has flat keys (``judge_model``, from before the settings were grouped), ``bench`` (the
benchmark file, now ``input``) or flat judge bounds (``judge.max_objects``, now ``judge.limits.max_objects``)
are read by `BenchRunSettings.from_record`, so they still verify; a ``run.json`` with flat judge bounds is read
in today's layout (`upgrade_run_identity`), so such a run still resumes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmark.dataset import BenchmarkSample, BenchmarkSet, load_benchmark
from benchmark.features import REFERENCE_INDEX, FeatureItem, FeatureSettings, extract_features
from benchmark.generate import ADAPTERS, generate_images, image_index, images_digest, iter_images
from benchmark.judge import FLAT_LIMITS, JudgeSettings, judge_images, nest_limits, score_judgements
from benchmark.metrics.graph_iou import GraphIoU
from benchmark.provenance import provenance, weights_sha256
from schemas import BenchmarkResult, GenerationSettings, Limits, ModelInfo
from schemas.layout import RESULT_FILE
from schemas.runs import check_run_identity, pin_run_identity
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "LEGACY_KEYS",
    "PROG",
    "RENAMED_KEYS",
    "BenchRunSettings",
    "ClipOptions",
    "CmmdOptions",
    "FeatureOptions",
    "GenerationOptions",
    "InceptionOptions",
    "JudgeOptions",
    "KidOptions",
    "compute_metrics",
    "main",
    "recompute",
    "run_benchmark",
    "upgrade_run_identity",
]

PROG = "python -m benchmark.run"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationOptions(_Group):
    """What decides the generated pixels besides the model (recorded as the result's `GenerationSettings`)."""

    images_per_sample: int = Field(1, ge=1, description="images generated per benchmark sample")
    steps: int = Field(40, ge=1, description="denoising steps")
    guidance: float = Field(5.0, ge=0, description="classifier-free guidance scale")
    height: int = Field(1024, ge=8, description="image height in pixels")
    width: int = Field(1024, ge=8, description="image width in pixels")
    seed: int = Field(42, description="base seed; each image's seed depends only on it, its key and its index")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="the generator's weight dtype")
    scheduler: str | None = Field(
        None, description="diffusers scheduler class (unset: the one in the model's model_index.json)"
    )
    long_prompt: bool = Field(
        False,
        description="encode text prompts in 75-token windows, beyond CLIP's 77 tokens (SDXL text adapters only)",
    )

    def settings(self, model: str) -> GenerationSettings:
        return GenerationSettings(
            seed=self.seed,
            images_per_sample=self.images_per_sample,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            scheduler=self.scheduler or _default_scheduler(model),
            dtype=self.dtype,
            long_prompt=self.long_prompt,
        )


class JudgeOptions(_Group):
    """The VLM judge (`benchmark.judge.JudgeSettings`, which decides its answers) and the synonyms its graphs are
    scored with."""

    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="judge VLM: hub id or local directory")
    restrict_vocabulary: bool = Field(
        True, description="answer in the intended graph's vocabulary (off: the open scene_graph task)"
    )
    max_new_tokens: int = Field(1024, ge=1, description="token bound of each answer")
    batch_size: int = Field(1, ge=1, description="images per judge batch (1: answers independent of batching)")
    limits: Limits = Field(default_factory=Limits, description="size bounds of the judged graphs")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="the judge's weight dtype")
    synonyms: Path | None = Field(
        None, description="YAML (or JSON) mapping of term -> canonical term for the graph IoUs"
    )

    def settings(self) -> JudgeSettings:
        return JudgeSettings(**{name: getattr(self, name) for name in JudgeOptions.model_fields if name != "synonyms"})


class ClipOptions(_Group):
    """The CLIP model of CLIP-T and CLIP-I."""

    model: str = Field("ViT-B-32", description="open_clip model name, hf-hub: id or local directory")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag (None: no tag)")
    text: Literal["caption", "sg_text"] = Field(
        "caption", description="the sample text CLIP-T compares each image with"
    )


class CmmdOptions(_Group):
    """The CLIP model of CMMD."""

    model: str = Field("ViT-L-14-336", description="open_clip model name, hf-hub: id or local directory")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag (None: no tag)")


class InceptionOptions(_Group):
    """The Inception network of FID and KID."""

    weights: Path | None = Field(
        None, description="pt_inception weights file (unset: $LAION_SG_INCEPTION_WEIGHTS, else torch hub's cache)"
    )
    allow_download: bool = Field(False, description="download the weights into torch hub's cache when missing")


class KidOptions(_Group):
    """KID's subset sampling."""

    subsets: int = Field(100, ge=1, description="random subsets KID is averaged over")
    subset_size: int = Field(1000, ge=1, description="images per subset (capped at the smaller set)")


class FeatureOptions(_Group):
    """Image feature extraction (Inception and CLIP)."""

    batch_size: int = Field(32, ge=1, description="images per feature batch (part of the features' identity)")


# The judge group mirrors `benchmark.judge.JudgeSettings`; a field added there must be added here.
if set(JudgeOptions.model_fields) - {"synonyms"} != {f.name for f in fields(JudgeSettings)}:
    raise TypeError("JudgeOptions and JudgeSettings have different fields")

# Flat keys of records written before the settings were grouped -> (group, name) now. The judge's graph bounds
# (``judge_max_objects``, ...) then go on into ``judge.limits`` (`benchmark.judge.nest_limits`).
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("generation", name) for name in ("images_per_sample", "steps", "guidance", "height", "width", "seed")},
    "dtype": ("generation", "dtype"),
    "scheduler": ("generation", "scheduler"),
    **{
        f"judge_{name}": ("judge", name)
        for name in ("model", "restrict_vocabulary", "max_new_tokens", "batch_size", *FLAT_LIMITS, "dtype")
    },
    "synonyms": ("judge", "synonyms"),
    "clip_model": ("clip", "model"),
    "clip_pretrained": ("clip", "pretrained"),
    "clip_t_text": ("clip", "text"),
    "cmmd_clip_model": ("cmmd", "model"),
    "cmmd_clip_pretrained": ("cmmd", "pretrained"),
    "inception_weights": ("inception", "weights"),
    "allow_download": ("inception", "allow_download"),
    "kid_subsets": ("kid", "subsets"),
    "kid_subset_size": ("kid", "subset_size"),
    "feature_batch_size": ("features", "batch_size"),
}

# Top-level keys of records written before a setting was renamed -> its name now.
RENAMED_KEYS: dict[str, str] = {"bench": "input"}


class BenchRunSettings(JobSettings):
    """Every setting of a benchmark run (recorded in the result's ``provenance.config``).

    `display_name` is the run's name on the leaderboard (default: the model id); it changes neither the images
    nor the numbers (a run can be resumed under another name)."""

    input: Path = Field(description="the benchmark Parquet file (python -m benchmark.dataset)")
    adapter: str = Field(description=f"how the model is conditioned: {', '.join(sorted(ADAPTERS))}")
    model: str = Field(description="the model to benchmark: hub id or local directory")
    output: Path = Field(description="the run directory (images/, judge/, features/, run.json, result.json)")
    num_actors: int = Field(0, ge=0, description="Ray actors (one GPU each on a GPU cluster); 0: in this process")
    chunk_size: int = Field(8, ge=1, description="samples per generation and judge chunk (the unit of resuming)")
    display_name: str | None = Field(None, description="the run's name on the leaderboard (unset: the model id)")
    generation: GenerationOptions = Field(default_factory=GenerationOptions, description="image generation")
    judge: JudgeOptions = Field(default_factory=JudgeOptions, description="the VLM judge")
    clip: ClipOptions = Field(default_factory=ClipOptions, description="CLIP-T and CLIP-I")
    cmmd: CmmdOptions = Field(default_factory=CmmdOptions, description="CMMD")
    inception: InceptionOptions = Field(default_factory=InceptionOptions, description="FID and KID")
    kid: KidOptions = Field(default_factory=KidOptions, description="KID")
    features: FeatureOptions = Field(default_factory=FeatureOptions, description="image feature extraction")

    @field_validator("adapter")
    @classmethod
    def _known_adapter(cls, value: str) -> str:
        if value not in ADAPTERS:
            raise ValueError(f"unknown adapter; choose one of {', '.join(sorted(ADAPTERS))}")
        return value

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> BenchRunSettings:
        """The settings of a record's ``provenance.config``: nested as these settings, or as older records wrote
        them: flat, before they were grouped (``judge_model``, ``steps``, ...; see `LEGACY_KEYS`), with the
        benchmark file under ``bench`` before it was ``input`` (`RENAMED_KEYS`), with the judge's graph bounds flat
        before they were ``judge.limits`` (`benchmark.judge.nest_limits`)."""
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key in LEGACY_KEYS:
                group, name = LEGACY_KEYS[key]
                values.setdefault(group, {})[name] = value
            else:
                values[RENAMED_KEYS.get(key, key)] = value
        if isinstance(values.get("judge"), Mapping):
            values["judge"] = nest_limits(values["judge"])
        return cls.model_validate(values)

    def generation_settings(self) -> GenerationSettings:
        return self.generation.settings(self.model)

    def judge_settings(self) -> JudgeSettings:
        return self.judge.settings()

    def features_settings(self) -> FeatureSettings:
        return FeatureSettings(
            inception_weights=None if self.inception.weights is None else str(self.inception.weights),
            allow_download=self.inception.allow_download,
            clip_model=self.clip.model,
            clip_pretrained=self.clip.pretrained,
            cmmd_clip_model=self.cmmd.model,
            cmmd_clip_pretrained=self.cmmd.pretrained,
            batch_size=self.features.batch_size,
        )

    def resolved(self) -> BenchRunSettings:
        """Local paths made absolute (hub ids stay as they are, model directories become absolute), so the
        record points at the same files from anywhere."""

        def local(model: str) -> str:
            return str(Path(model).resolve()) if Path(model).exists() else model

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else path.resolve()

        return self.model_validate(
            self.model_dump()
            | {
                "input": self.input.resolve(),
                "output": self.output.resolve(),
                "model": local(self.model),
                "judge": self.judge.model_dump()
                | {"model": local(self.judge.model), "synonyms": absolute(self.judge.synonyms)},
                "clip": self.clip.model_dump() | {"model": local(self.clip.model)},
                "cmmd": self.cmmd.model_dump() | {"model": local(self.cmmd.model)},
                "inception": self.inception.model_dump() | {"weights": absolute(self.inception.weights)},
            }
        )


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
    settings: BenchRunSettings,
    samples: Sequence[BenchmarkSample],
    run_dir: Path,
    state_dir: Path,
    fake: list[tuple[str, int]],
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """FID, KID, CLIP-T, CLIP-I and CMMD of the stored images (`fake`: their sorted (key, image_index)) against
    the references, from features extracted on `settings.num_actors` Ray actors (or in this process) and stored
    under `state_dir/features/`."""
    from benchmark.metrics import CMMD, FID, KID, CLIPImageScore, CLIPScore, Precomputed

    features = settings.features_settings()
    provenance = features.provenance()
    texts = {s.key: s.caption if settings.clip.text == "caption" else s.sg_text for s in samples}
    references = (FeatureItem(s.key, REFERENCE_INDEX, s.image, texts[s.key]) for s in samples)
    generated = (
        FeatureItem(row["key"], row["image_index"], row["png"])
        for table in iter_images(run_dir, ["key", "image_index", "png"])
        for row in table.sort_by([("key", "ascending"), ("image_index", "ascending")]).to_pylist()
    )
    stored = extract_features(
        itertools.chain(references, generated),
        features,
        state_dir / "features" / features.digest(provenance, [texts[s.key] for s in samples]),
        num_actors=settings.num_actors,
    )
    real = [(s.key, REFERENCE_INDEX) for s in samples]
    owners = [(key, REFERENCE_INDEX) for key, _ in fake]
    inception, clip, cmmd_clip = (Precomputed(provenance[name]) for name in ("inception", "clip", "cmmd"))

    fid = FID(inception)
    kid = KID(inception, subsets=settings.kid.subsets, subset_size=settings.kid.subset_size)
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
    results[CLIPScore.details_key]["text"] = settings.clip.text
    return metrics, results


def _split_record(metric: Any, computed: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """A metric's `compute()` split into its record values (the keys it names in `labels`) and its details (the
    rest); `computed` itself is left as it is (torchmetrics caches it)."""
    values = {key: float(computed[key]) for key in metric.labels}
    return values, {key: value for key, value in computed.items() if key not in metric.labels}


def _read_synonyms(path: Path | None) -> dict[str, str] | None:
    """A YAML (or JSON) mapping of term -> canonical term, for the graph IoUs."""
    import yaml

    return {str(k): str(v) for k, v in yaml.safe_load(Path(path).read_text()).items()} if path else None


def compute_metrics(
    settings: BenchRunSettings, bench: BenchmarkSet, run_dir: Path, state_dir: Path
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Every metric of a run from its stored images. Judgements and image features are stored under, or resumed
    from, `state_dir` (``judge/``, ``features/``)."""
    samples = bench.samples
    stored = image_index(run_dir)
    expected = {(s.key, i) for s in samples for i in range(settings.generation.images_per_sample)}
    found = set(zip(stored.column("key").to_pylist(), stored.column("image_index").to_pylist(), strict=True))
    if found != expected:
        raise ValueError(
            f"{run_dir}: {len(expected - found)} images missing and {len(found - expected)} unexpected "
            f"for {len(samples)} samples x {settings.generation.images_per_sample} images"
        )
    synonyms = _read_synonyms(settings.judge.synonyms)
    judge = settings.judge_settings()
    judgements = judge_images(
        samples,
        iter_images(run_dir, ["key", "image_index", "png"]),
        judge,
        state_dir / "judge",
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    iou, judge_details = score_judgements(samples, judgements, synonyms)
    metrics, details = _image_metrics(settings, samples, run_dir, state_dir, sorted(found))
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


def upgrade_run_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's ``run.json`` in today's layout: one pinned before the judge's graph bounds were nested (flat
    ``max_objects``, ... in ``judge``) reads as the same judge settings (`benchmark.judge.nest_limits`)."""
    judge = stored.get("judge")
    return stored | {"judge": nest_limits(judge)} if isinstance(judge, Mapping) else stored


def run_benchmark(settings: BenchRunSettings) -> BenchmarkResult:
    """Generate, judge and score; write and return the result record."""
    started = time.perf_counter()
    settings = settings.resolved()
    bench = load_benchmark(settings.input)
    run_dir = settings.output
    generation = settings.generation_settings()
    model = ModelInfo(
        adapter=settings.adapter,
        model_id=settings.model,
        weights_hash=weights_sha256(settings.model),
        conditioning=ADAPTERS[settings.adapter].conditioning,
    )
    identity = {
        "benchmark": bench.info().model_dump(),
        "model": model.model_dump(),
        "generation": generation.model_dump(),
        "judge": asdict(settings.judge_settings()),
    }
    # what the stored images and judgements depend on
    check_run_identity(run_dir, identity, upgrade=upgrade_run_identity)
    pin_run_identity(run_dir, identity)
    generate_images(
        bench.samples,
        settings.adapter,
        settings.model,
        generation,
        run_dir,
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    metrics, details = compute_metrics(settings, bench, run_dir, run_dir)
    record = BenchmarkResult(
        benchmark=bench.info(),
        model=model,
        generation=generation,
        metrics=metrics,
        metric_details=details,
        provenance=provenance(settings.to_record(), time.perf_counter() - started),
    )
    (run_dir / RESULT_FILE).write_text(record.to_json() + "\n")
    return record


def recompute(
    record: BenchmarkResult, run_dir: str | Path, *, num_actors: int = 0
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """A record's metrics recomputed from the images in `run_dir`, with the settings of its ``provenance.config``
    (either layout, `BenchRunSettings.from_record`). The judge runs again (in a scratch folder), in this process
    or on `num_actors` Ray actors: the numbers do not depend on that choice."""
    import tempfile

    settings = BenchRunSettings.from_record(record.provenance.config).model_copy(update={"num_actors": num_actors})
    bench = load_benchmark(settings.input)
    if bench.info().content_hash != record.benchmark.content_hash:
        raise ValueError(f"{settings.input} is not the benchmark set of this record")
    with tempfile.TemporaryDirectory(prefix="compsg-verify-") as scratch:
        return compute_metrics(settings, bench, Path(run_dir), Path(scratch))


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(BenchRunSettings, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    record = run_benchmark(settings)
    print(json.dumps({"run_id": record.run_id, "metrics": record.metrics}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
