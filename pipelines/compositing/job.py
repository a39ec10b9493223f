"""The compositing job (Gen4Gen): concept folders -> layout -> masks -> composite + inpaint -> scene graphs.

    python -m pipelines.compositing --input SCENES --output OUT --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --compositor.model stabilityai/stable-diffusion-xl-base-1.0 --masks.model CIDAS/clipseg-rd64-refined
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.compositing ...

Steps, each one Ray Data pass over the compositions of all pending shards (`pipelines.compositing.plan`), so
every model is loaded once per actor, not once per shard:

1. **layout**: the annotation engine (hf, vllm, openai or fixed) answers the ``layout`` task
   (`pipelines.compositing.layout_task`): one box per concept on a 512 x 512 canvas and a background description;
   the driver checks the boxes (`read_layout`: clipped to the canvas, else rejected with the reason).
2. **masks**: CLIPSeg masks each concept's reference image with the concept's phrase
   (`pipelines.compositing.masks`, run by `pipelines.compositing.stages.Segment`); an empty or whole-frame mask
   fails the row with its reason.
3. **composite**: the background (the given image, or SDXL generated from the engine's description), the masked
   concepts pasted into their boxes, seams and background repainted by SDXL inpainting
   (`pipelines.compositing.composite`, run by `pipelines.compositing.stages.Compose`).
4. **scene graphs**: the annotation job (`pipelines.annotate`) on the composites, with the same engine.

Output (``OUT/data/{shard}.parquet``): the project's row schema (`schemas.row_schema`; ``caption`` is the
composition prompt, ``image`` the composite, ``scene_graph``/``annotation`` from step 4) plus the columns of
`COMPOSITION_COLUMNS`: ``scene``, ``concepts``, ``reference_images``, ``boxes`` (pixels of the image),
``background``, ``seed`` and ``compositing`` (status ``ok`` or ``failed``, the step that failed and why). Every
planned composition comes out exactly once; a failed one has no image and says why.

Resume: ``OUT/composites/{shard}.parquet`` (steps 1-3, written as soon as the shard's last row is composed) and ``OUT/data/{shard}.parquet`` only ever appear whole
(written atomically), and a shard whose file exists is not redone; the annotation step resumes on its own
(``OUT/annotations/``). ``OUT/run.json`` pins the settings the rows depend on; a re-run with others is refused.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.answers import failure_reason
from pipelines.compositing.layout import Box, LayoutError
from pipelines.compositing.layout_task import layout_request, layout_task, read_layout
from pipelines.compositing.plan import Composition, plan_compositions, read_backgrounds, scan_scenes
from pipelines.compositing.settings import CompositingSettings, load_settings
from pipelines.compositing.stages import BOX_TYPE, STAGE_SCHEMA, Compose, Segment, arrow_table
from pipelines.engines import build_engine
from pipelines.engines.base import PASSTHROUGH_FIELDS
from schemas import annotation_record, row_schema
from schemas.layout import DATA_DIR, RUN_FILE, SUMMARY_FILE
from schemas.runs import (
    check_run_identity,
    init_ray,
    log_progress,
    pin_run_identity,
    write_atomically,
)

__all__ = [
    "COMPOSITION_COLUMNS",
    "CompositingConfigError",
    "composition_prompt",
    "main",
    "output_schema",
    "run",
]

logger = logging.getLogger(__name__)

COMPOSITES_DIR = "composites"
ANNOTATIONS_DIR = "annotations"
COMPOSITING_TYPE = pa.struct([("status", pa.string()), ("stage", pa.string()), ("error", pa.string())])
COMPOSITION_COLUMNS: dict[str, pa.DataType] = {
    "scene": pa.string(),
    "concepts": pa.list_(pa.string()),
    "reference_images": pa.list_(pa.string()),
    "boxes": pa.list_(BOX_TYPE),
    "background": pa.string(),
    "seed": pa.int64(),
    "compositing": COMPOSITING_TYPE,
}
# steps 1-3 of a shard: what step 4 reads (an img2dataset-shaped Parquet, ``png`` bytes) and what the merge adds
_COMPOSITES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("png", pa.binary()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        *(pa.field(name, dtype) for name, dtype in COMPOSITION_COLUMNS.items()),
    ]
)


class CompositingConfigError(ValueError):
    """The input, the backgrounds or the output directory do not allow the run; `main` exits 2."""


def output_schema() -> pa.Schema:
    """The schema of ``OUT/data/*.parquet`` (with the Hugging Face features metadata)."""
    return row_schema(COMPOSITION_COLUMNS)


def composition_prompt(phrases: Sequence[str], background: str) -> str:
    """``"a cat and a teapot, a sunlit kitchen"``: the concepts with articles, then the background."""
    items = [f"a {phrase}" for phrase in phrases]
    objects = items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
    return f"{objects}, {background}"


def _layouts(
    compositions: Sequence[tuple[int, Composition]], config: CompositingSettings
) -> dict[str, tuple[list[Box], str] | str]:
    """Step 1 for `compositions` ((plan position, composition) pairs) in one engine pass: key -> (boxes in output
    pixels, background), or the reason it failed. A row's ``_index`` is its plan position, so the fixed engine's
    answer ``i`` is composition ``i``'s."""
    import ray.data

    task = layout_task(config.min_box)
    schema = pa.schema(
        [*PASSTHROUGH_FIELDS, pa.field("caption", pa.string()), pa.field("prepared_image", pa.binary())]
    )
    rows = [
        {
            "_shard": "layout",
            "_index": position,
            "_shard_rows": len(compositions),
            "key": c.key,
            "caption": layout_request(c.phrases, c.background.prompt),
        }
        for position, c in compositions
    ]
    engine = build_engine(
        config.layout_engine or config.engine,
        task,
        config.layout_model or config.model,
        config.engine_options,
    )
    answers = {}
    for batch in engine.run(ray.data.from_arrow(arrow_table(rows, schema))).iter_batches(
        batch_format="pyarrow"
    ):
        for row in batch.to_pylist():
            answers[row["key"]] = (row["raw_output"], row["engine_error"])
    results: dict[str, tuple[list[Box], str] | str] = {}
    for _, c in compositions:
        raw, engine_error = answers.get(c.key, (None, "no answer from the engine"))
        if engine_error:
            results[c.key] = engine_error
            continue
        try:
            boxes, background, _ = read_layout(
                raw, c.phrases, config.compositor.size, config.min_box, config.max_overlap
            )
        except LayoutError as exc:
            results[c.key] = exc.reason
        else:
            results[c.key] = (boxes, background)
    return results


def _compose_shards(
    shards: dict[str, Sequence[Composition]],
    layouts: dict[str, tuple[list[Box], str] | str],
    config: CompositingSettings,
    input_root: Path,
    backgrounds: Path | None,
    write: Callable[[str, list[dict[str, Any]]], None],
) -> None:
    """Steps 2-3 for the compositions of `shards` in one pass (each model loaded once per actor, not per shard);
    `write(name, rows)` gets a shard's rows of `_COMPOSITES_SCHEMA`, in plan order, as soon as its last one is
    done."""
    import ray.data

    rows, pending = {}, []
    for c in (c for compositions in shards.values() for c in compositions):
        layout = layouts[c.key]
        row = {
            "key": c.key,
            "scene": c.scene,
            "concepts": list(c.concepts),
            "reference_images": list(c.references),
            "seed": c.seed,
        }
        rows[c.key] = row
        if isinstance(layout, str):
            row["compositing"] = {"status": "failed", "stage": "layout", "error": layout}
            continue
        boxes, background = layout
        row |= {
            "boxes": [{"concept": b.concept, "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1} for b in boxes],
            "background": background,
            "caption": composition_prompt(c.phrases, background),
        }
        pending.append(
            {
                "key": c.key,
                "references": [str(input_root / path) for path in c.references],
                "phrases": list(c.phrases),
                "boxes": row["boxes"],
                "caption": row["caption"],
                "background_prompt": background,
                "background_image": None
                if c.background.image is None
                else str(backgrounds / c.background.image),
                "seed": c.seed,
            }
        )
    shard_of = {c.key: name for name, compositions in shards.items() for c in compositions}
    remaining = Counter(shard_of[row["key"]] for row in pending)

    def finish(name: str) -> None:
        write(name, [rows[c.key] for c in shards[name]])

    for name in shards.keys() - remaining.keys():  # every composition of the shard failed its layout
        finish(name)
    if not pending:
        return
    compute = {
        "batch_size": 1,
        "batch_format": "pyarrow",
        "compute": ray.data.ActorPoolStrategy(size=config.num_actors),
        "num_cpus": config.cpus_per_actor,
        "num_gpus": config.gpus_per_actor,
    }
    ds = ray.data.from_arrow(arrow_table(pending, STAGE_SCHEMA))
    ds = ds.map_batches(
        Segment, fn_constructor_kwargs={"settings": config.masks, "cpus": config.cpus_per_actor}, **compute
    )
    ds = ds.map_batches(
        Compose,
        fn_constructor_kwargs={"settings": config.compositor, "cpus": config.cpus_per_actor},
        **compute,
    )
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for done in batch.to_pylist():
            row = rows[done["key"]]
            if done["error"] is not None:
                row["compositing"] = {"status": "failed", "stage": done["stage"], "error": done["error"]}
            else:
                size = config.compositor.size
                row |= {"png": done["png"], "width": size, "height": size}
                row["compositing"] = {"status": "ok", "stage": None, "error": None}
            name = shard_of[done["key"]]
            remaining[name] -= 1
            if not remaining[name]:
                finish(name)


def _write_composites(output: Path, name: str, rows: list[dict[str, Any]]) -> None:
    table = arrow_table(rows, _COMPOSITES_SCHEMA)
    write_atomically(output / COMPOSITES_DIR / f"{name}.parquet", lambda tmp: pq.write_table(table, tmp))
    logger.info("shard %s: %d compositions composed", name, len(rows))


def _annotate(output: Path, config: CompositingSettings) -> tuple[dict[str, dict[str, Any]], str, str, str]:
    """Step 4: the annotation job on ``OUT/composites``; its rows by composition key, model, engine, version."""
    from pipelines.annotate import AnnotateSettings
    from pipelines.annotate import run as annotate

    settings = AnnotateSettings(
        input=str(output / COMPOSITES_DIR),
        output=str(output / ANNOTATIONS_DIR),
        model=config.model,
        task=config.annotate_task,
        engine=config.engine,
        input_format="img2dataset_parquet",
        images=False,
        rows_per_shard=config.rows_per_shard,
        limits=config.limits,
        engine_options=config.engine_options,
        progress_seconds=0,
    )
    summary = annotate(settings)
    columns = ["source_key", "scene_graph", "sg_text", "annotation"]
    files = sorted((output / ANNOTATIONS_DIR / DATA_DIR).glob("*.parquet"))
    by_key = {
        row["source_key"]: row
        for f in files
        if not f.name.startswith(".")
        for row in pq.read_table(f, columns=columns).to_pylist()
    }
    return by_key, summary.model, summary.engine, summary.prompt_version


def _merge(
    composites: pa.Table, annotations: dict[str, dict[str, Any]], labels: tuple[str, str, str], task: str
) -> pa.Table:
    """The output rows of one shard: composites + their annotations by key (`output_schema`)."""
    model, engine, version = labels
    rows = []
    for row in composites.to_pylist():
        note = annotations.get(row["key"])
        if row["png"] is None:
            reason = f"no image: compositing failed at the {row['compositing']['stage']} step"
        elif note is None:
            reason = "not annotated: the annotation job wrote no row for this composite"
        else:
            reason = None
        if reason is not None:
            failed = {"model": model, "engine": engine, "task": task, "prompt_version": version}
            note = {"annotation": annotation_record(**failed, status="failed", error=reason)}
        image = None if row["png"] is None else {"bytes": row["png"], "path": f"{row['key']}.png"}
        rows.append({**row, **{k: v for k, v in note.items() if k != "source_key"}, "image": image})
    return arrow_table(rows, output_schema())


def run(config: CompositingSettings) -> dict[str, Any]:
    """Compose every pending shard and return the run summary (also in ``OUT/summary.json``)."""
    start = time.perf_counter()
    input_root = Path(config.input).resolve()
    backgrounds = None if config.backgrounds is None else Path(config.backgrounds).resolve()
    output = Path(config.output)
    identity = config.identity(input_root, backgrounds)
    try:  # what the input and the output directory allow, checked before anything is written
        scenes = scan_scenes(input_root)
        plan = plan_compositions(
            scenes, config.compositions_per_scene, config.seed, read_backgrounds(backgrounds)
        )
        check_run_identity(output, identity)
    except ValueError as exc:  # RunIdentityError is one
        raise CompositingConfigError(str(exc)) from None
    pin_run_identity(output, identity)
    for directory in (COMPOSITES_DIR, DATA_DIR):
        (output / directory).mkdir(parents=True, exist_ok=True)
    size = config.rows_per_shard
    shards = {
        f"{n:05d}": (first, plan[first : first + size]) for n, first in enumerate(range(0, len(plan), size))
    }
    pending = [name for name in shards if not (output / DATA_DIR / f"{name}.parquet").exists()]
    to_compose = [name for name in pending if not (output / COMPOSITES_DIR / f"{name}.parquet").exists()]
    if pending:
        init_ray(config.num_cpus)
    if to_compose:  # one pass per step over every shard to compose
        todo = {name: shards[name] for name in to_compose}
        layouts = _layouts([(first + i, c) for first, cs in todo.values() for i, c in enumerate(cs)], config)
        composing = {name: cs for name, (_, cs) in todo.items()}
        _compose_shards(
            composing, layouts, config, input_root, backgrounds, partial(_write_composites, output)
        )
    if pending:
        annotations, *labels = _annotate(output, config)
        for name in pending:
            composites = pq.read_table(output / COMPOSITES_DIR / f"{name}.parquet", schema=_COMPOSITES_SCHEMA)
            table = _merge(composites, annotations, tuple(labels), config.annotate_task)
            write_atomically(
                output / DATA_DIR / f"{name}.parquet", lambda tmp, t=table: pq.write_table(t, tmp)
            )
    summary = _summary(output, len(plan), len(shards) - len(pending), time.perf_counter() - start)
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _summary(output: Path, planned: int, shards_skipped: int, seconds: float) -> dict[str, Any]:
    table = pq.read_table(output / DATA_DIR, columns=["compositing", "annotation"], schema=output_schema())
    compositing, annotation = table.column("compositing").to_pylist(), table.column("annotation").to_pylist()
    failed = Counter(
        f"{c['stage']}: {failure_reason(c['error'])}" for c in compositing if c["status"] == "failed"
    )
    return {
        "compositions_planned": planned,
        "rows_written": table.num_rows,
        "composed": sum(c["status"] == "ok" for c in compositing),
        "failed": dict(sorted(failed.items())),
        "annotations": dict(sorted(Counter(a["status"] for a in annotation).items())),
        "shards_skipped": shards_skipped,
        "wall_seconds": round(seconds, 3),
        "run": str(output / RUN_FILE),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 0 when every composition was written, 2 on a configuration error."""
    log_progress()
    config = load_settings(argv)
    try:
        summary = run(config)
    except CompositingConfigError as exc:
        print(f"compositing: {exc}", file=sys.stderr)
        return 2
    failed = sum(summary["failed"].values())
    print(
        f"compositing: {summary['rows_written']}/{summary['compositions_planned']} rows, "
        f"{summary['composed']} composed, {failed} failed {summary['failed']}, "
        f"annotations {summary['annotations']}, {summary['wall_seconds']} s"
    )
    print(f"summary: {Path(config.output) / SUMMARY_FILE}")
    return 0
