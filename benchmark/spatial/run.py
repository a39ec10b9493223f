"""Run the spatial track for one model: generate → detect → VISOR → one `schemas.BenchmarkResult` in
RUN_DIR/result.json.

    python -m benchmark.spatial.run --input spatial_prompts.parquet --adapter diffusers-caption --model DIR \\
        --output RUN_DIR [--num-actors 0 --chunk-size 8 --display-name NAME --config run.yaml \\
         --generation.images-per-sample 4 --generation.steps 40 --generation.seed 42 ... \\
         --detector.model google/owlv2-base-patch16-ensemble --detector.threshold 0.1 ...]

The prompts are a hash-verified prompt file of `benchmark.spatial.prompts`. Each prompt is a sample of
`benchmark.generate` (key = prompt id), so every adapter works: ``diffusers-caption`` generates from the prompt's
text, ``diffusers-sg-text`` from its graph's text and ``sdxl-sg`` from its graph, two objects (subject, object)
and one relation whose predicate is VISOR's phrase of the prompt ("to the left of", "above", ...; `prompt_graph`),
so the graph's text is the prompt without its articles. Image i of a prompt has the seed
``benchmark.generate.image_seed(seed, prompt_id, i)``, the prompt set's seed rule.

The detector (`benchmark.spatial.detect`, ``--detector.*``) finds each prompt's two objects in its images, stored
under RUN_DIR/detections/; `benchmark.metrics.VISORScore` scores them. VISOR-n looks at the first four images of
each prompt, hence ``--generation.images-per-sample 4`` by default; fewer are allowed and the record states it
(``metric_details.visor.n_prompts_short``, and a warning). Generation and detection run on ``--num-actors`` Ray
actors or in this process (0); both give the same images, detections and numbers.

RUN_DIR keeps ``images/``, ``detections/`` and ``run.json`` (the prompt set, model, generation and detector
settings): a re-run with the same settings resumes, one with other settings is refused. `recompute` re-detects a
record's stored images in a scratch folder (what ``python -m benchmark.leaderboard verify`` does for a spatial
record).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmark.generate import (
    ADAPTERS,
    check_adapter,
    generate_images,
    images_digest,
    iter_images,
    local_model,
    model_info,
    stored_image_ids,
)
from benchmark.metrics.visor import IMAGES_PER_PROMPT
from benchmark.metrics.visor_score import VISORScore
from benchmark.provenance import provenance, weights_sha256
from benchmark.run_settings import GenerationOptions
from benchmark.sample_set import BenchmarkSample
from benchmark.spatial.detect import DetectorSettings, detect_images, detect_items, visor_items
from benchmark.spatial.prompts import RELATION_PHRASES, PromptSet, SpatialPrompt, load_prompts
from schemas import BenchmarkInfo, BenchmarkResult, SceneGraph, SGObject, SGRelation
from schemas.layout import RESULT_FILE
from schemas.runs import check_run_identity, pin_run_identity
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "PROG",
    "DetectorOptions",
    "SpatialGenerationOptions",
    "SpatialRunSettings",
    "compute_metrics",
    "main",
    "prompt_graph",
    "prompt_info",
    "prompt_samples",
    "recompute",
    "run_spatial",
]

PROG = "python -m benchmark.spatial.run"
_DETECTOR = DetectorSettings()  # the defaults of the detector group


class SpatialGenerationOptions(GenerationOptions):
    """Image generation, with VISOR's four images per prompt by default."""

    images_per_sample: int = Field(
        IMAGES_PER_PROMPT, ge=1, description="images generated per prompt (VISOR-n looks at the first four)"
    )


class DetectorOptions(BaseModel):
    """The open-vocabulary detector (`benchmark.spatial.detect.DetectorSettings`, which decides the detections)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(_DETECTOR.model, description="detector (OWLv2 or OWL-ViT): hub id or local directory")
    threshold: float = Field(_DETECTOR.threshold, description="keep boxes with score > threshold (VISOR: 0.1)")
    query_template: str = Field(_DETECTOR.query_template, description="the query text of a class name ({})")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(_DETECTOR.dtype, description="the detector's dtype")
    trust_remote_code: bool = Field(_DETECTOR.trust_remote_code, description="let transformers run the model's code")

    def settings(self) -> DetectorSettings:
        return DetectorSettings(**self.model_dump())


# The detector group mirrors `DetectorSettings`; a field added there must be added here.
if set(DetectorOptions.model_fields) != {f.name for f in fields(DetectorSettings)}:
    raise TypeError("DetectorOptions and DetectorSettings have different fields")


class SpatialRunSettings(JobSettings):
    """Every setting of a spatial run (recorded in the result's ``provenance.config``); `display_name` changes
    neither the images nor the numbers."""

    input: Path = Field(description="the prompt Parquet file (python -m benchmark.spatial.prompts)")
    adapter: str = Field(description=f"how the model is conditioned: {', '.join(sorted(ADAPTERS))}")
    model: str = Field(description="the model to benchmark: hub id or local directory")
    output: Path = Field(description="the run directory (images/, detections/, run.json, result.json)")
    num_actors: int = Field(0, ge=0, description="Ray actors (one GPU each on a GPU cluster); 0: in this process")
    chunk_size: int = Field(8, ge=1, description="prompts per generation chunk, images per detection chunk")
    display_name: str | None = Field(None, description="the run's name on the leaderboard (unset: the model id)")
    generation: SpatialGenerationOptions = Field(
        default_factory=SpatialGenerationOptions, description="image generation"
    )
    detector: DetectorOptions = Field(default_factory=DetectorOptions, description="the object detector")

    _known_adapter = field_validator("adapter")(check_adapter)

    def resolved(self) -> SpatialRunSettings:
        """Local paths made absolute (hub ids stay as they are), so the record points at the same files from
        anywhere."""
        return self.model_validate(
            self.model_dump()
            | {
                "input": self.input.resolve(),
                "output": self.output.resolve(),
                "model": local_model(self.model),
                "detector": self.detector.model_dump() | {"model": local_model(self.detector.model)},
            }
        )


def prompt_graph(prompt: SpatialPrompt) -> SceneGraph:
    """The scene graph of a prompt: subject (id 0) --VISOR's phrase of the relation--> object (id 1)."""
    return SceneGraph(
        objects=[SGObject(0, prompt.subject), SGObject(1, prompt.object)],
        relations=[SGRelation(0, RELATION_PHRASES[prompt.relation], 1)],
    )


def prompt_samples(prompt_set: PromptSet) -> list[BenchmarkSample]:
    """The prompts as generation samples (key = prompt id, caption = the prompt's text; no reference image)."""
    samples = []
    for prompt in prompt_set.prompts:
        graph = prompt_graph(prompt)
        samples.append(BenchmarkSample(prompt.prompt_id, prompt.text, graph, graph.to_text(), b""))
    return samples


def prompt_info(prompt_set: PromptSet) -> BenchmarkInfo:
    """The `benchmark` part of a record: the prompt set's name, version, content hash and size."""
    manifest = prompt_set.manifest
    return BenchmarkInfo(
        name=manifest["name"],
        version=manifest["version"],
        content_hash=manifest["content_hash"],
        n_samples=manifest["n_prompts"],
    )


def compute_metrics(
    settings: SpatialRunSettings, prompt_set: PromptSet, run_dir: Path, state_dir: Path
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """VISOR of a run's stored images; detections are stored under, or resumed from, `state_dir/detections/`."""
    keys = [p.prompt_id for p in prompt_set.prompts]
    found = stored_image_ids(run_dir, keys, settings.generation.images_per_sample, "prompts")
    prompts_by_id = {p.prompt_id: p for p in prompt_set.prompts}
    detector = settings.detector.settings()
    detections = detect_images(
        detect_items(iter_images(run_dir, ["key", "image_index", "png"]), prompts_by_id),
        detector,
        state_dir / "detections",
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    metric = VISORScore()
    metric.update(visor_items(prompts_by_id, detections))
    computed = metric.compute()
    metrics = {key: float(computed[key]) for key in VISORScore.labels}
    details = {key: value for key, value in computed.items() if key not in metrics} | {
        "detection_status": dict(sorted(Counter(detections.column("status").to_pylist()).items())),
        "detector": asdict(detector),
        "detector_weights_sha256": weights_sha256(detector.model),
    }
    images = {"n_images": len(found), "sha256": images_digest(run_dir)}
    return metrics, {VISORScore.details_key: details, "images": images}


def run_spatial(settings: SpatialRunSettings) -> BenchmarkResult:
    """Generate, detect and score; write and return the result record."""
    started = time.perf_counter()
    settings = settings.resolved()
    prompt_set = load_prompts(settings.input)
    run_dir = settings.output
    generation = settings.generation.settings(settings.model)
    model = model_info(settings.adapter, settings.model)
    identity = {
        "benchmark": prompt_info(prompt_set).model_dump(),
        "model": model.model_dump(),
        "generation": generation.model_dump(),
        "detector": asdict(settings.detector.settings()),
    }
    # what the stored images and detections depend on
    check_run_identity(run_dir, identity)
    pin_run_identity(run_dir, identity)
    generate_images(
        prompt_samples(prompt_set),
        settings.adapter,
        settings.model,
        generation,
        run_dir,
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    metrics, details = compute_metrics(settings, prompt_set, run_dir, run_dir)
    record = BenchmarkResult(
        benchmark=prompt_info(prompt_set),
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
    """A spatial record's metrics recomputed from the images in `run_dir` with the settings of its
    ``provenance.config``: the detector runs again, in a scratch folder (in this process or on `num_actors` Ray
    actors: the numbers do not depend on that choice)."""
    settings = SpatialRunSettings.model_validate(record.provenance.config | {"num_actors": num_actors})
    prompt_set = load_prompts(settings.input)
    if prompt_set.manifest["content_hash"] != record.benchmark.content_hash:
        raise ValueError(f"{settings.input} is not the prompt set of this record")
    with tempfile.TemporaryDirectory(prefix="spatial-verify-") as scratch:
        return compute_metrics(settings, prompt_set, Path(run_dir), Path(scratch))


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(SpatialRunSettings, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    record = run_spatial(settings)
    print(json.dumps({"run_id": record.run_id, "metrics": record.metrics}, indent=2))
    if short := record.metric_details[VISORScore.details_key]["n_prompts_short"]:
        print(
            f"warning: {short} prompts have fewer than {IMAGES_PER_PROMPT} images; VISOR-n counts what they have",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
