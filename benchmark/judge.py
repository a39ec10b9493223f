"""The VLM judge of CompSG-Bench: extract a scene graph from every generated image, then compare it with the
intended graph (SG-IoU, Entity-IoU, Relation-IoU).

The judge is the annotation `hf` engine (`pipelines.engines.hf.HFGenerator`: transformers + xgrammar, greedy)
with the ``judge`` task, whose JSON schema restricts names and predicates to the intended graph's vocabulary
(`Vocabulary.of(target)`, as LAION-SG restricted its judge), or with the open ``scene_graph`` task when
`restrict_vocabulary` is off. Images are bounded like annotation inputs (`pipelines.images.prepare_image`).
Judgements are stored under ``RUN_DIR/judge/`` as Parquet chunks, resumable like the images.

Failed items. A generated image that cannot be decoded is never sent to the judge (the model would answer blind):
it is stored as a judgement with status ``failed``, no graph, no raw output and the error
``"undecodable image: <reason>"``. An answer that cannot be parsed is stored as ``failed`` with the parser's
reason. Every failed item stays in the IoU means with IoU 0.0 on all three metrics (`GraphIoU.update_failed`):
a model is not rewarded for images that show nothing judgeable, and the means are always over all images.
`score_judgements` reports how many items failed and why (``n_failed``, ``failed``) in the details.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from benchmark.chunks import map_stored, read_stored
from benchmark.metrics.graph_match import IOU_KEYS
from benchmark.sample_set import BenchmarkSample
from schemas import DEFAULT_LIMITS, SCENE_GRAPH_TYPE, Limits, SceneGraph, Vocabulary, scene_graph_from_arrow

__all__ = [
    "FLAT_LIMITS",
    "JUDGEMENTS_SCHEMA",
    "GraphJudge",
    "JudgeItem",
    "JudgeSettings",
    "judge_images",
    "judge_stored",
    "nest_limits",
    "read_judgements",
    "score_judgements",
]

JUDGEMENTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("scene_graph", SCENE_GRAPH_TYPE),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("raw_output", pa.string()),
    ]
)


@dataclass(frozen=True)
class JudgeSettings:
    """Everything that determines the judge's answers besides the images."""

    model: str
    restrict_vocabulary: bool = True
    max_new_tokens: int = 1024
    batch_size: int = 1
    limits: Limits = DEFAULT_LIMITS  # the bounds of the judged graphs (the task's JSON schema and prompt)
    dtype: str = "auto"


# The graph bounds judge settings held as flat keys before they became a nested `Limits`.
FLAT_LIMITS = ("max_objects", "max_relations", "max_attributes")


def nest_limits(judge: Mapping[str, Any]) -> dict[str, Any]:
    """Judge settings (`JudgeSettings` or its options, as a mapping) in today's layout.

    Those written before the graph bounds were nested (``run.json`` and ``provenance.config`` of older runs)
    hold them as flat ``max_objects``, ``max_relations``, ``max_attributes``; they move into ``limits``, whose
    other bounds are `DEFAULT_LIMITS`' (what the judge used then). Any other mapping is returned as it is."""
    values = dict(judge)
    if "limits" in values or not values.keys() & set(FLAT_LIMITS):
        return values
    flat = {name: values.pop(name) for name in FLAT_LIMITS if name in values}
    return values | {"limits": asdict(DEFAULT_LIMITS) | flat}


@dataclass(frozen=True)
class JudgeItem:
    """One generated image and the graph it was meant to show."""

    key: str
    image_index: int
    png: bytes
    target_json: str


class GraphJudge:
    """Loads the judge VLM once and turns images into graphs (a chunk worker for `benchmark.actors`).

    `batch_size` images go through the model together; 1 (the default) keeps every answer independent of which
    images share a batch (left padding changes float reductions).
    """

    def __init__(self, settings: JudgeSettings, device: str | None = None) -> None:
        from pipelines.engines.base import EngineOptions
        from pipelines.engines.hf import HFGenerator

        self.settings = settings
        options = EngineOptions(max_new_tokens=settings.max_new_tokens, device=device, dtype=settings.dtype)
        self.generator = HFGenerator(settings.model, options)

    def task(self, target: SceneGraph) -> Any:
        from pipelines.tasks import get_task, judge_task

        if self.settings.restrict_vocabulary:
            return judge_task(Vocabulary.of(target), self.settings.limits)
        return get_task("scene_graph", self.settings.limits)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        """One `Generation` per `ChatRequest`, `batch_size` requests at a time."""
        size = self.settings.batch_size
        return [
            g for start in range(0, len(requests), size) for g in self.generator.generate(requests[start : start + size])
        ]

    def __call__(self, items: Sequence[JudgeItem]) -> list[dict[str, Any]]:
        from pipelines.images import encode_jpeg, prepare_image

        rows: list[dict[str, Any] | None] = []
        pending = []  # (position in rows, item, task, request) of the images the judge can see
        for item in items:
            prepared = prepare_image(item.png)
            if prepared.image is None:  # never ask the judge about an image it cannot see
                rows.append(_failed_row(item, f"undecodable image: {prepared.error or 'no image'}"))
                continue
            task = self.task(SceneGraph.from_json(item.target_json, record=item.key))
            pending.append((len(rows), item, task, task.request(image=encode_jpeg(prepared.image))))
            rows.append(None)
        generations = self.generate([request for *_, request in pending])
        for (position, item, task, _), generation in zip(pending, generations, strict=True):
            parsed = task.parse(generation.text)
            rows[position] = {
                "key": item.key,
                "image_index": item.image_index,
                "scene_graph": None if parsed.value is None else parsed.value.to_dict(),
                "status": parsed.status,
                "error": generation.error or parsed.error,
                "raw_output": generation.text,
            }
        return [row for row in rows if row is not None]


def _failed_row(item: JudgeItem, error: str) -> dict[str, Any]:
    return {
        "key": item.key,
        "image_index": item.image_index,
        "scene_graph": None,
        "status": "failed",
        "error": error,
        "raw_output": None,
    }


def read_judgements(out_dir: str | Path) -> pa.Table:
    """Every stored judgement under `out_dir`, sorted by (key, image_index)."""
    return read_stored(out_dir, JUDGEMENTS_SCHEMA)


def judge_stored(
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    schema: pa.Schema,
    samples: Sequence[BenchmarkSample],
    images: Iterable[pa.Table],
    out_dir: str | Path,
    *,
    num_actors: int = 0,
    chunk_size: int = 8,
) -> pa.Table:
    """Run a judge worker (`GraphJudge`, or another worker called on `JudgeItem`s that returns one row of
    `schema` per item) on every image (tables of key, image_index, png, e.g. `generate.iter_images`) without a
    row under `out_dir` yet (`benchmark.chunks.map_stored`); return all rows. `num_actors=0` runs in this
    process, otherwise on Ray actors. Images are read one table at a time, so the driver never holds them all."""
    targets = {s.key: s.scene_graph.to_json() for s in samples}
    items = (
        JudgeItem(r["key"], r["image_index"], r["png"], targets[r["key"]])
        for table in images
        for r in table.sort_by([("key", "ascending"), ("image_index", "ascending")]).to_pylist()
    )
    return map_stored(
        worker_cls, worker_kwargs, items, schema, out_dir, num_actors=num_actors, chunk_size=chunk_size
    )


def judge_images(
    samples: Sequence[BenchmarkSample],
    images: Iterable[pa.Table],
    settings: JudgeSettings,
    out_dir: str | Path,
    *,
    num_actors: int = 0,
    chunk_size: int = 8,
    device: str | None = None,
) -> pa.Table:
    """Judge every image (tables of key, image_index, png) not yet judged under `out_dir`; return all
    judgements (`judge_stored` with `GraphJudge`)."""
    return judge_stored(
        GraphJudge,
        {"settings": settings, "device": device},
        JUDGEMENTS_SCHEMA,
        samples,
        images,
        out_dir,
        num_actors=num_actors,
        chunk_size=chunk_size,
    )


def score_judgements(
    samples: Sequence[BenchmarkSample], judgements: pa.Table, synonyms: Mapping[str, str] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean SG-IoU, Entity-IoU and Relation-IoU of the judged graphs against the intended ones, and details.

    Every judgement counts once in each mean. A ``failed`` one (undecodable image, unparseable answer, engine
    error) scores 0.0 on all three IoUs, whatever its target. The details hold ``n_images`` (all judgements),
    ``sg_iou_std``, ``entity_iou_std`` and ``relation_iou_std`` (population std over the judgements),
    ``judge_status`` (count per status), ``n_failed`` and ``failed`` (``"key:image_index"`` -> error, for every
    failed item)."""
    # GraphIoU imports torchmetrics (~10 s): only here, in the driver, never in the judge's actors
    from benchmark.metrics.graph_iou import GraphIoU

    targets = {s.key: s.scene_graph for s in samples}
    metric = GraphIoU(synonyms=synonyms)
    statuses: Counter[str] = Counter()
    failed: dict[str, str] = {}
    for row in judgements.to_pylist():
        statuses[row["status"]] += 1
        if row["status"] == "failed" or row["scene_graph"] is None:
            metric.update_failed()
            failed[f"{row['key']}:{row['image_index']}"] = row["error"] or "no graph"
            continue
        metric.update(scene_graph_from_arrow(row["scene_graph"]), targets[row["key"]])
    means = metric.compute()
    details = {
        "n_images": len(metric.scores),
        **metric.compute_std(),  # with n_images, the leaderboard's confidence interval of each mean
        "judge_status": dict(statuses),
        "n_failed": len(failed),
        "failed": failed,
    }
    return {key: means[key] for key in IOU_KEYS}, details
