"""The scoring job of a compositing output: Gen4Gen's CP-CLIP and TI-CLIP (`benchmark.compositing`'s docstring
has the definitions and what is detected how).

    python -m benchmark.compositing --input COMPOSE_OUT --output SCORES_DIR [--concepts INPUT] \\
        [--num-actors 0 --chunk-size 8 --device cuda --config scores.yaml \\
         --detector.model google/owlv2-base-patch16-ensemble --detector.threshold 0.1 \\
         --clip.model ViT-L-14 --clip.pretrained openai]
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from benchmark.chunks import map_stored
from benchmark.compositing.workers import STORED_SCHEMA, CompositeItem, CompositingWorker, ReferenceItem
from benchmark.metrics.clip_embedding import clip_provenance
from benchmark.metrics.concept_clip_score import CPCLIPScore, TICLIPScore
from benchmark.provenance import package_versions, weights_sha256
from benchmark.spatial.run import DetectorOptions
from pipelines.compositing.plan import concept_phrase, scan_scenes
from schemas.runs import check_run_identity, pin_run_identity, write_atomically
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "PER_IMAGE_SCHEMA",
    "PROG",
    "SCORES_FILE",
    "PER_IMAGE_FILE",
    "ClipOptions",
    "CompositingScoreSettings",
    "main",
    "reference_files",
    "score_compositing",
]

PROG = "python -m benchmark.compositing"
SCORES_FILE = "scores.json"
PER_IMAGE_FILE = "per_image.parquet"
# the keys of the stored rows (SCORES_DIR/embeddings/): what a row is of
REFERENCE_PREFIX, COMPOSITE_PREFIX = "reference/", "composite/"

PER_IMAGE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("scene", pa.string()),
        pa.field("concepts", pa.list_(pa.string())),
        pa.field("caption", pa.string()),
        # "scored"; "compositing failed" (compositing.status != "ok" or no image); "undecodable"
        pa.field("status", pa.string(), nullable=False),
        pa.field("stage", pa.string()),  # the compositing stage that failed
        pa.field("cp_clip", pa.float64()),  # null unless scored
        pa.field("concept_scores", pa.list_(pa.float64())),  # s_c per concept, 0 when undetected
        pa.field("detected", pa.list_(pa.bool_())),
        pa.field(
            "boxes",  # the detected box of each concept (null: undetected), pixels of the image
            pa.list_(
                pa.struct(
                    [
                        pa.field("score", pa.float64()),
                        pa.field("x0", pa.float64()),
                        pa.field("y0", pa.float64()),
                        pa.field("x1", pa.float64()),
                        pa.field("y1", pa.float64()),
                    ]
                )
            ),
        ),
        pa.field("ti_clip", pa.float64()),
    ]
)


class ClipOptions(BaseModel):
    """The open_clip model (`benchmark.metrics.clip_embedding.CLIPEmbedder`), as the rest of the benchmark."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field("ViT-L-14", description="open_clip model name, hub schema name or local folder")
    pretrained: str | None = Field(
        "openai", description="open_clip pretrained tag (ignored for a local folder)"
    )


class CompositingScoreSettings(JobSettings):
    """Every setting of a compositing scoring run (written to scores.json)."""

    input: Path = Field(description="the compositing output (run.json, data/*.parquet)")
    output: Path = Field(description="the scores directory (embeddings/, per_image.parquet, scores.json)")
    concepts: Path | None = Field(
        None, description="the concept folders scene/concept/*.jpg (unset: run.json's input)"
    )
    num_actors: int = Field(
        0, ge=0, description="Ray actors (one GPU each on a GPU cluster); 0: in this process"
    )
    chunk_size: int = Field(8, ge=1, description="images per chunk")
    device: str | None = Field(
        None, description="torch device of the detector and CLIP (unset: cuda if available)"
    )
    detector: DetectorOptions = Field(
        default_factory=DetectorOptions, description="the open-vocabulary detector"
    )
    clip: ClipOptions = Field(default_factory=ClipOptions, description="the CLIP model")

    def resolved(self) -> CompositingScoreSettings:
        """Paths absolute; the concepts root from the compositing output's run.json when unset."""
        concepts = self.concepts
        if concepts is None:
            run_file = self.input / "run.json"
            try:
                concepts = Path(json.loads(run_file.read_text())["input"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"no --concepts given and {run_file} names no input: {exc}") from None
        return self.model_validate(
            self.model_dump()
            | {"input": self.input.resolve(), "output": self.output.resolve(), "concepts": concepts.resolve()}
        )


def reference_files(concepts_root: Path, concepts: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Path]]:
    """The reference images of each (scene, concept): the images the compositing job draws from
    (`pipelines.compositing.plan.scan_scenes`). ValueError for a concept the folder does not hold."""
    found = {
        (scene.name, concept.name): [concepts_root / path for path in concept.images]
        for scene in scan_scenes(concepts_root)
        for concept in scene.concepts
    }
    if missing := [f"{scene}/{concept}" for scene, concept in concepts if (scene, concept) not in found]:
        raise ValueError(f"{concepts_root}: no reference images of {', '.join(missing)}")
    return {pair: found[pair] for pair in concepts}


def _data_files(compose_out: Path) -> list[Path]:
    files = sorted((compose_out / "data").glob("*.parquet"))
    if not files:
        raise ValueError(f"{compose_out}/data holds no Parquet files")
    return files


def _read_rows(compose_out: Path) -> list[dict[str, Any]]:
    """Every row of the compositing output without its image bytes (``has_image`` says whether it has some)."""
    rows = []
    columns = ["key", "scene", "concepts", "caption", "compositing", "image"]
    for file in _data_files(compose_out):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=64, columns=columns):
            images = batch.column("image")
            has_bytes = pa.compute.is_valid(images).to_pylist()
            if images.null_count < len(images):
                has_bytes = [
                    v and b is not None
                    for v, b in zip(has_bytes, images.field("bytes").to_pylist(), strict=True)
                ]
            meta = batch.drop_columns(["image"]).to_pylist()
            rows += [r | {"has_image": h} for r, h in zip(meta, has_bytes, strict=True)]
    keys = Counter(r["key"] for r in rows)
    if repeated := sorted(k for k, n in keys.items() if n > 1):
        raise ValueError(f"{compose_out}: repeated keys {repeated[:5]}")
    return rows


def _is_ok(row: dict[str, Any]) -> bool:
    return (row["compositing"] or {}).get("status") == "ok" and row["has_image"]


def _composite_items(
    compose_out: Path, ok: dict[str, dict[str, Any]], digests: dict[str, str]
) -> Iterator[CompositeItem]:
    """The items of the rows in `ok`, lazily, one batch of a data file at a time; records each image's sha256."""
    for file in _data_files(compose_out):
        for batch in pq.ParquetFile(file).iter_batches(batch_size=16, columns=["key", "image"]):
            for r in batch.to_pylist():
                if (row := ok.get(r["key"])) is None:
                    continue
                png = r["image"]["bytes"]
                digests[r["key"]] = hashlib.sha256(png).hexdigest()
                phrases = tuple(concept_phrase(c) for c in row["concepts"])
                yield CompositeItem(COMPOSITE_PREFIX + r["key"], png, phrases, row["caption"])


def _reference_items(files: dict[tuple[str, str], list[Path]]) -> Iterator[ReferenceItem]:
    for (scene, concept), paths in files.items():
        for path in paths:
            yield ReferenceItem(f"{REFERENCE_PREFIX}{scene}/{concept}/{path.name}", path.read_bytes())


def _reference_embeddings(
    files: dict[tuple[str, str], list[Path]], stored: dict[str, dict[str, Any]], out: Path
) -> dict[tuple[str, str], np.ndarray]:
    """Each concept's reference embeddings (n_c x D) from the stored rows; a stored embedding of a file whose
    bytes changed since, or of a file that does not decode, is refused."""
    embeddings = {}
    for (scene, concept), paths in files.items():
        rows = []
        for path in paths:
            row = stored[key := f"{REFERENCE_PREFIX}{scene}/{concept}/{path.name}"]
            if row["sha256"] != hashlib.sha256(path.read_bytes()).hexdigest():
                raise ValueError(
                    f"{path} changed since its embedding was stored in {out}; use a new --output"
                )
            if row["status"] != "ok":
                raise ValueError(f"{key}: {row['error']}")
            rows.append(row["image_embedding"])
        embeddings[(scene, concept)] = np.asarray(rows, dtype=np.float64)
    return embeddings


def _boxes(regions: list[dict[str, Any] | None]) -> list[dict[str, float] | None]:
    return [None if r is None else {k: r[k] for k in ("score", "x0", "y0", "x1", "y1")} for r in regions]


def score_compositing(settings: CompositingScoreSettings) -> dict[str, Any]:
    """Detect, embed and score every successful composite; write SCORES_DIR/per_image.parquet and scores.json and
    return the latter's content."""
    settings = settings.resolved()
    out = settings.output
    detector = settings.detector.settings()
    clip = clip_provenance(settings.clip.model, settings.clip.pretrained)
    identity = {
        "detector": asdict(detector),
        "clip": clip,
        "input": str(settings.input),
        "concepts": str(settings.concepts),
    }
    check_run_identity(out, identity)  # the stored detections and embeddings depend on these
    pin_run_identity(out, identity)

    rows = sorted(_read_rows(settings.input), key=lambda r: r["key"])
    ok = {r["key"]: r for r in rows if _is_ok(r)}
    for row in ok.values():
        if not row["concepts"]:
            raise ValueError(f"row {row['key']}: no concepts")
    concepts = sorted({(r["scene"], c) for r in ok.values() for c in r["concepts"]})
    files = reference_files(settings.concepts, concepts)

    digests: dict[str, str] = {}
    stored = map_stored(  # references first, then composites: one pass, so each actor loads its models once
        CompositingWorker,
        {
            "detector": detector,
            "clip_model": settings.clip.model,
            "clip_pretrained": settings.clip.pretrained,
            "device": settings.device,
        },
        itertools.chain(_reference_items(files), _composite_items(settings.input, ok, digests)),
        STORED_SCHEMA,
        out / "embeddings",
        num_actors=settings.num_actors,
        chunk_size=settings.chunk_size,
    )
    by_key = {r["key"]: r for r in stored.to_pylist()}
    references = _reference_embeddings(files, by_key, out)
    n_references = {f"{scene}/{concept}": len(paths) for (scene, concept), paths in files.items()}

    cp, ti = CPCLIPScore(), TICLIPScore()
    per_image, failed_by_stage, undecodable = [], Counter(), []
    detection: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        base = {k: row[k] for k in ("key", "scene", "concepts", "caption")}
        empty = dict.fromkeys(("cp_clip", "concept_scores", "detected", "boxes", "ti_clip"))
        if row["key"] not in ok:
            compositing = row["compositing"] or {}
            stage = "no image" if compositing.get("status") == "ok" else compositing.get("stage") or "unknown"
            failed_by_stage[stage] += 1
            per_image.append(base | empty | {"status": "compositing failed", "stage": stage})
            continue
        scored = by_key[COMPOSITE_PREFIX + row["key"]]
        if scored["sha256"] != digests[row["key"]]:
            raise ValueError(
                f"the image of {row['key']} changed since it was scored in {out}; use a new --output"
            )
        if scored["status"] != "ok":
            undecodable.append({"key": row["key"], "error": scored["error"]})
            per_image.append(base | empty | {"status": "undecodable", "stage": None})
            continue
        regions = scored["regions"]
        cp.update(
            [None if r is None else np.asarray(r["embedding"]) for r in regions],
            [references[(row["scene"], c)] for c in row["concepts"]],
        )
        ti.update(np.asarray(scored["image_embedding"]), np.asarray(scored["caption_embedding"]))
        for concept, region in zip(row["concepts"], regions, strict=True):
            counts = detection[f"{row['scene']}/{concept}"]
            counts["n_images"] += 1
            counts["n_detected"] += region is not None
        per_image.append(
            base
            | {
                "status": "scored",
                "stage": None,
                "detected": [r is not None for r in regions],
                "boxes": _boxes(regions),
            }
        )
    scored_rows = [r for r in per_image if r["status"] == "scored"]  # in the order the metrics were updated
    if not scored_rows:
        raise ValueError(
            f"{settings.input}: no composite to score ({len(rows)} rows, none succeeded and decoded)"
        )
    for r, image_score, concept_scores, pair_score in zip(
        scored_rows, cp.per_image(), cp.per_concept(), ti.per_pair(), strict=True
    ):
        r |= {
            "cp_clip": float(image_score),
            "concept_scores": concept_scores.tolist(),
            "ti_clip": float(pair_score),
        }
    write_atomically(
        out / PER_IMAGE_FILE,
        lambda tmp: pq.write_table(pa.Table.from_pylist(per_image, schema=PER_IMAGE_SCHEMA), tmp),
    )

    cp_details, ti_details = cp.compute(), ti.compute()
    scores = {
        "cp_clip": cp_details["cp_clip"],
        "ti_clip": ti_details["ti_clip"],
        "n_images": cp_details["n_images"],
        "n_rows": len(rows),
        "n_failed": sum(failed_by_stage.values()),
        "failed_by_stage": dict(sorted(failed_by_stage.items())),
        "n_undecodable": len(undecodable),
        "undecodable": undecodable,
        "excluded": "rows whose compositing failed (or that have no image) and images that do not decode are "
        "counted here and left out of both means",
        "detection_rate": {
            concept: {
                "n_images": c["n_images"],
                "n_detected": c["n_detected"],
                "rate": c["n_detected"] / c["n_images"],
            }
            for concept, c in sorted(detection.items())
        },
        "n_references": n_references,
        "details": {CPCLIPScore.details_key: cp_details, TICLIPScore.details_key: ti_details},
        "settings": settings.to_record(),
        "provenance": {
            "detector": asdict(detector),
            "detector_weights_sha256": weights_sha256(detector.model),
            **clip,
            "compositing_output": str(settings.input),
            "concepts": str(settings.concepts),
            "packages": package_versions(),
        },
    }
    text = json.dumps(scores, indent=2) + "\n"
    write_atomically(out / SCORES_FILE, lambda tmp: tmp.write_text(text))
    return scores


def main(argv: list[str] | None = None) -> int:
    from benchmark.compositing import __doc__ as doc

    settings = parse_settings(
        CompositingScoreSettings, argv, prog=PROG, description=(doc or "").split("\n\n")[0]
    )
    scores = score_compositing(settings)
    print(
        f"CP-CLIP {scores['cp_clip']:.4f}  TI-CLIP {scores['ti_clip']:.4f}  over {scores['n_images']} images "
        f"({scores['n_failed']} failed compositing rows and {scores['n_undecodable']} undecodable images excluded)"
        f" -> {settings.output.resolve() / SCORES_FILE}"
    )
    return 0
