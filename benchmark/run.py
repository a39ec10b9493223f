"""Run CompSG-Bench for one model: generate → judge → metrics → one `schemas.BenchmarkResult` in RUN_DIR/result.json.

    python -m benchmark.run --input bench.parquet --adapter sdxl-sg --model DIR --output RUN_DIR \\
        [--num-actors 0 --display-name NAME --config run.yaml \\
         --generation.images-per-sample 1 --generation.steps 40 --generation.guidance 5 --generation.seed 42 \\
         --judge.model ID --clip.model ID --clip.pretrained TAG --inception.weights PTH ...]

The settings are one typed model, `BenchRunSettings` (`benchmark.run_settings`, on `schemas.settings`; ``--help``
lists every one with its default): the run's own (``--input``, ``--adapter``, ``--model``, ``--output``,
``--num-actors``, ...) and groups written as dotted flags, or nested mappings in the ``--config`` YAML (flags win
over it): ``generation`` (the pixels: ``--generation.steps``, ``.guidance``, ``.height``, ``.width``, ``.seed``,
``.scheduler``, ...), ``judge`` (the VLM judge, with its graph bounds as a `schemas.Limits`:
``--judge.limits.max-objects``, ...), ``clip`` (CLIP-T, CLIP-I), ``cmmd``, ``inception`` (FID, KID), ``kid`` and
``features``. Generation, judging and feature extraction run on ``--num-actors`` Ray actors (one GPU each on a GPU
cluster), or in this process with ``--num-actors 0``; both give the same images and numbers, because every image
has its own seed and chunks are independent (see `benchmark.generate`, `benchmark.chunks`, `benchmark.features`).
Each image's features are stored by (key, image index) and fed to the metrics in that order, so a run, a resumed
run and `benchmark.leaderboard verify` compute the same numbers:

- FID and KID (Inception pool3, clean resize) of generated images against the reference images;
- CLIP-T (100·max(cos, 0) between a generated image and the sample's caption, or its SG text) and CLIP-I (cosine
  to the reference image), with ``--clip.model``; CMMD with ``--cmmd.model`` (ViT-L/14@336 by default);
- SG-IoU, Entity-IoU, Relation-IoU of the judge's graphs (`benchmark.judge`);
- the question track (on unless ``--no-questions.enabled``): the judge answers the yes/no questions of each
  sample's graph about each image (`benchmark.questions`), scored DSG-style per entity, attribute, relation and
  overall (``question_score``).

On a reference-free set (`benchmark.dataset` ``--reference-free``: prompts and graphs, no images) the metrics
that compare with reference images (FID, KID, CLIP-I, CMMD) are skipped: only CLIP is loaded for the features,
CLIP-T compares each image with its sample's text as above, and the judge's IoUs and the question track run as
usual. The record's ``metric_details["reference_images"]`` says so (``available: false``, the skipped metrics and
the reason); a record of a set with references has no such group.

Each metric is a `benchmark.metrics` class (a `torchmetrics.Metric`); the record's metric keys and their
`metric_details` groups are the ones the classes name (`labels`, `details_key`). ``--display-name`` names the run
on the leaderboard (kept in the record's ``provenance.config``, which holds every setting, nested as in the YAML).

RUN_DIR keeps the images (``images/``), the judge's graphs (``judge/``) and yes/no answers (``questions/``),
the image features (``features/``, one folder per set of metric networks) and ``run.json`` (what the images and judgements depend on); a re-run with the
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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmark.features import REFERENCE_INDEX, FeatureItem, extract_features
from benchmark.generate import generate_images, images_digest, iter_images, model_info, stored_image_ids
from benchmark.judge import judge_images, score_judgements
from benchmark.metrics.graph_iou import GraphIoU
from benchmark.metrics.question_score import QuestionScore
from benchmark.provenance import provenance, weights_sha256
from benchmark.questions.answer import answer_questions, item_scores, question_versions
from benchmark.run_settings import BenchRunSettings, upgrade_run_identity
from benchmark.sample_set import BenchmarkSample, BenchmarkSet, load_benchmark
from schemas import BenchmarkResult
from schemas.layout import RESULT_FILE
from schemas.runs import check_run_identity, pin_run_identity
from schemas.settings import parse_settings

__all__ = ["PROG", "compute_metrics", "main", "recompute", "run_benchmark"]

PROG = "python -m benchmark.run"
NO_REFERENCES = "no reference images: the benchmark set was frozen reference-free (benchmark.dataset --reference-free)"


# ---------------------------------------------------------------------- metrics


def _image_metrics(
    settings: BenchRunSettings,
    samples: Sequence[BenchmarkSample],
    run_dir: Path,
    state_dir: Path,
    fake: list[tuple[str, int]],
    reference_free: bool = False,
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """FID, KID, CLIP-T, CLIP-I and CMMD of the stored images (`fake`: their sorted (key, image_index)) against
    the references, from features extracted on `settings.num_actors` Ray actors (or in this process) and stored
    under `state_dir/features/`; CLIP-T only when `reference_free` (the reference rows are then text-only)."""
    from benchmark.metrics import CMMD, FID, KID, CLIPImageScore, CLIPScore, Precomputed

    features = settings.features_settings(reference_images=not reference_free)
    provenance = features.provenance()
    texts = {s.key: s.caption if settings.clip.text == "caption" else s.sg_text for s in samples}
    references = (
        FeatureItem(s.key, REFERENCE_INDEX, None if reference_free else s.image, texts[s.key]) for s in samples
    )
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
    if reference_free:
        return _clip_t(settings, Precomputed(provenance["clip"]), stored, fake, owners)
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
    _describe_clip_t(results[CLIPScore.details_key], settings)
    return metrics, results


def _describe_clip_t(details: dict[str, Any], settings: BenchRunSettings) -> None:
    details["text"] = settings.clip.text
    # a long prompt (a paragraph) is scored on its first window only, as the long-prompt track states
    details["text_tokens"] = "the first window: the CLIP tokenizer's context (77 tokens)"


def _clip_t(
    settings: BenchRunSettings,
    clip: Any,
    stored: Any,
    fake: list[tuple[str, int]],
    owners: list[tuple[str, int]],
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """CLIP-T alone (a reference-free set): each generated image's CLIP embedding against its key's text's."""
    from benchmark.metrics import CLIPScore

    clip_t = CLIPScore(clip)
    clip_t.update_embeddings(stored.array("clip", fake), stored.array("text_clip", owners))
    metrics, details = _split_record(clip_t, clip_t.compute())
    _describe_clip_t(details, settings)
    return metrics, {CLIPScore.details_key: details}


def _split_record(metric: Any, computed: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """A metric's `compute()` split into its record values (the keys it names in `labels`, except those it
    computed as None: undefined for this run) and its details (the rest); `computed` itself is left as it is
    (torchmetrics caches it)."""
    values = {key: float(computed[key]) for key in metric.labels if computed[key] is not None}
    return values, {key: value for key, value in computed.items() if key not in metric.labels}


def _question_metrics(
    settings: BenchRunSettings, samples: Sequence[BenchmarkSample], run_dir: Path, state_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """The question track: the judge's stored (or new) yes/no answers under `state_dir/questions/`, scored."""
    judge = settings.judge_settings()
    answers = answer_questions(
        samples,
        iter_images(run_dir, ["key", "image_index", "png"]),
        judge,
        state_dir / "questions",
        max_new_tokens=settings.questions.max_new_tokens,
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    scores, answer_details = item_scores(samples, answers)
    metric = QuestionScore()
    metric.update(scores)
    metrics, details = _split_record(metric, metric.compute())
    return metrics, details | answer_details | question_versions() | settings.questions.model_dump()


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
    found = stored_image_ids(run_dir, [s.key for s in samples], settings.generation.images_per_sample, "samples")
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
    metrics, details = _image_metrics(settings, samples, run_dir, state_dir, sorted(found), bench.reference_free)
    if bench.reference_free:
        from benchmark.metrics import CMMD, FID, KID, CLIPImageScore

        skipped = [key for metric in (FID, KID, CLIPImageScore, CMMD) for key in metric.labels]
        details["reference_images"] = {"available": False, "skipped_metrics": skipped, "reason": NO_REFERENCES}
    metrics |= {key: iou[key] for key in GraphIoU.labels}
    details[GraphIoU.details_key] = {
        **judge_details,
        **asdict(judge),
        "judge_weights_sha256": weights_sha256(judge.model),
        "engine": "hf",
        "synonyms": synonyms,
        "normalisation": "benchmark.metrics.graph_iou.normalize_name (case, whitespace, plural -> singular)",
    }
    if settings.questions.enabled:
        values, details[QuestionScore.details_key] = _question_metrics(settings, samples, run_dir, state_dir)
        metrics |= values
    details["images"] = {"n_images": len(found), "sha256": images_digest(run_dir)}
    return metrics, details


# ---------------------------------------------------------------------- runs


def run_benchmark(settings: BenchRunSettings) -> BenchmarkResult:
    """Generate, judge and score; write and return the result record."""
    started = time.perf_counter()
    settings = settings.resolved()
    bench = load_benchmark(settings.input)
    run_dir = settings.output
    generation = settings.generation_settings()
    model = model_info(settings.adapter, settings.model)
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
