"""The compositing job (Gen4Gen): concept folders -> layout -> masks -> composite + inpaint -> scene graphs.

    python -m pipelines.compositing --input SCENES --output OUT --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --compositor.model stabilityai/stable-diffusion-xl-base-1.0 --masks.model CIDAS/clipseg-rd64-refined
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m pipelines.compositing ...

Steps, each a Ray Data stage over the compositions of the pending shards (`pipelines.compositing.plan`):

1. **layout**: the annotation engine (hf, vllm, openai or fixed) answers the ``layout`` task
   (`pipelines.compositing.layout_task`): one box per concept on a 512 x 512 canvas and a background description;
   the driver checks the boxes (`read_layout`: clipped to the canvas, else rejected with the reason).
2. **masks**: CLIPSeg masks each concept's reference image with the concept's phrase
   (`pipelines.compositing.masks`); an empty or whole-frame mask fails the row with its reason.
3. **composite**: the background (the given image, or SDXL generated from the engine's description), the masked
   concepts pasted into their boxes, seams and background repainted by SDXL inpainting
   (`pipelines.compositing.composite`).
4. **scene graphs**: the annotation job (`pipelines.annotate`) on the composites, with the same engine.

Output (``OUT/data/{shard}.parquet``): the project's row schema (`schemas.row_schema`; ``caption`` is the
composition prompt, ``image`` the composite, ``scene_graph``/``annotation`` from step 4) plus the columns of
`COMPOSITION_COLUMNS`: ``scene``, ``concepts``, ``reference_images``, ``boxes`` (pixels of the image),
``background``, ``seed`` and ``compositing`` (status ``ok`` or ``failed``, the step that failed and why). Every
planned composition comes out exactly once; a failed one has no image and says why.

Resume: ``OUT/composites/{shard}.parquet`` (steps 1-3) and ``OUT/data/{shard}.parquet`` only ever appear whole
(written atomically), and a shard whose file exists is not redone; the annotation step resumes on its own
(``OUT/annotations/``). ``OUT/run.json`` pins the settings the rows depend on; a re-run with others is refused.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.compositing.composite import Compositor, CompositorSettings
from pipelines.compositing.layout import Box, LayoutError
from pipelines.compositing.layout_task import layout_request, layout_task, read_layout
from pipelines.compositing.masks import ConceptSegmenter, MaskSettings, cutout, mask_problem
from pipelines.compositing.plan import Composition, plan_compositions, read_backgrounds, scan_scenes
from pipelines.compositing.settings import CompositingSettings, load_settings
from pipelines.engines import build_engine
from pipelines.engines.base import PASSTHROUGH_FIELDS
from pipelines.images import prepare_image
from pipelines.tasks import failure_reason
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
DECODE_MAX_SIDE = 2048  # reference and background images are decoded within this side (larger gains nothing)
ANNOTATIONS_DIR = "annotations"
BOX_TYPE = pa.struct(
    [
        ("concept", pa.string()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
    ]
)
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
_STAGE_SCHEMA = pa.schema(  # the rows of the mask and composite stages
    [
        pa.field("key", pa.string()),
        pa.field("references", pa.list_(pa.string())),
        pa.field("phrases", pa.list_(pa.string())),
        pa.field("boxes", pa.list_(BOX_TYPE)),
        pa.field("caption", pa.string()),
        pa.field("background_prompt", pa.string()),
        pa.field("background_image", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("cutouts", pa.list_(pa.binary())),
        pa.field("png", pa.binary()),
        pa.field("stage", pa.string()),
        pa.field("error", pa.string()),
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


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_image(path: str) -> tuple[Any, str | None]:
    """A reference or background image as bounded RGB (`pipelines.images.prepare_image`: corrupt files and
    decompression bombs give a reason, never an exception), or (None, why)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    prepared = prepare_image(data, max_side=DECODE_MAX_SIDE, max_pixels=DECODE_MAX_SIDE**2)
    return prepared.image, prepared.error


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)


class _Segment:
    """The mask stage (a Ray Data actor): each concept's reference image -> its masked cutout (RGBA PNG)."""

    def __init__(self, settings: MaskSettings, cpus: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.settings = settings
        self.segmenter = ConceptSegmenter(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            decoded = [(path, *_read_image(path)) for path in row["references"]]
            if bad := next(((path, error) for path, image, error in decoded if image is None), None):
                row |= {"stage": "mask", "error": f"unreadable reference image {Path(bad[0]).name}: {bad[1]}"}
                continue
            images = [image for _, image, _ in decoded]
            cutouts = []
            for image, phrase, mask in zip(
                images, row["phrases"], self.segmenter.masks(images, row["phrases"]), strict=True
            ):
                if problem := mask_problem(mask, self.settings):
                    row |= {"stage": "mask", "error": f"{problem} ({phrase})"}
                    break
                cutouts.append(_png(cutout(image, mask)))
            else:
                row["cutouts"] = cutouts
        return _table(rows, _STAGE_SCHEMA)


class _Compose:
    """The composite stage (a Ray Data actor): background, paste, inpaint -> the composite (PNG)."""

    def __init__(self, settings: CompositorSettings, cpus: float) -> None:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.compositor = Compositor(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from PIL import Image

        rows = batch.to_pylist()
        for row in rows:
            if row["error"] is not None:
                continue
            if row["background_image"] is not None:
                background, error = _read_image(row["background_image"])
                if background is None:
                    row |= {"stage": "composite", "error": f"unreadable background image: {error}"}
                    continue
            else:
                background = self.compositor.background(row["background_prompt"], row["seed"])
            cutouts = [Image.open(io.BytesIO(data)) for data in row["cutouts"]]  # our own PNGs
            try:  # a placement the paste refuses fails its row; a model error stops the job
                image = self.compositor.compose(
                    background, cutouts, [Box(**box) for box in row["boxes"]], row["caption"], row["seed"]
                )
            except ValueError as exc:
                row |= {"stage": "composite", "error": f"{type(exc).__name__}: {exc}"}
                continue
            row["png"] = _png(image)
        return _table(rows, _STAGE_SCHEMA).drop_columns(["cutouts"])


def _layouts(
    compositions: Sequence[Composition], first: int, config: CompositingSettings
) -> dict[str, tuple[list[Box], str] | str]:
    """Step 1 for `compositions` (plan positions `first`, `first` + 1, ...): key -> (boxes in output pixels,
    background), or the reason it failed. A row's ``_index`` is its plan position, so the fixed engine's answer
    ``i`` is composition ``i``'s."""
    import ray.data

    task = layout_task(config.min_box)
    schema = pa.schema(
        [*PASSTHROUGH_FIELDS, pa.field("caption", pa.string()), pa.field("prepared_image", pa.binary())]
    )
    rows = [
        {
            "_shard": "layout",
            "_index": first + i,
            "_shard_rows": len(compositions),
            "key": c.key,
            "caption": layout_request(c.phrases, c.background.prompt),
        }
        for i, c in enumerate(compositions)
    ]
    engine = build_engine(
        config.layout_engine or config.engine,
        task,
        config.layout_model or config.model,
        config.engine_options,
    )
    answers = {}
    for batch in engine.run(ray.data.from_arrow(_table(rows, schema))).iter_batches(batch_format="pyarrow"):
        for row in batch.to_pylist():
            answers[row["key"]] = (row["raw_output"], row["engine_error"])
    results: dict[str, tuple[list[Box], str] | str] = {}
    for c in compositions:
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


def _composites(
    compositions: Sequence[Composition],
    layouts: dict[str, tuple[list[Box], str] | str],
    config: CompositingSettings,
    input_root: Path,
    backgrounds: Path | None,
) -> list[dict[str, Any]]:
    """Steps 1-3 for `compositions`: one row of `_COMPOSITES_SCHEMA` each, in plan order."""
    import ray.data

    rows, pending = {}, []
    for c in compositions:
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
    if pending:
        compute = {
            "batch_size": 1,
            "batch_format": "pyarrow",
            "compute": ray.data.ActorPoolStrategy(size=config.num_actors),
            "num_cpus": config.cpus_per_actor,
            "num_gpus": config.gpus_per_actor,
        }
        ds = ray.data.from_arrow(_table(pending, _STAGE_SCHEMA))
        ds = ds.map_batches(
            _Segment,
            fn_constructor_kwargs={"settings": config.masks, "cpus": config.cpus_per_actor},
            **compute,
        )
        ds = ds.map_batches(
            _Compose,
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
    return [rows[c.key] for c in compositions]


def _annotate(output: Path, config: CompositingSettings) -> tuple[pa.Table, str, str, str]:
    """Step 4: the annotation job on ``OUT/composites``; its rows (by composition key), model, engine, version."""
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
    tables = [pq.read_table(f, columns=columns) for f in files if not f.name.startswith(".")]
    table = pa.concat_tables(tables) if tables else None
    return table, summary.model, summary.engine, summary.prompt_version


def _merge(
    composites: pa.Table, annotations: pa.Table | None, labels: tuple[str, str, str], task: str
) -> pa.Table:
    """The output rows of one shard: composites + their annotations (`output_schema`)."""
    model, engine, version = labels
    by_key = {} if annotations is None else {r["source_key"]: r for r in annotations.to_pylist()}
    rows = []
    for row in composites.to_pylist():
        note = by_key.get(row["key"])
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
    return _table(rows, output_schema())


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
    for name in to_compose:
        first, compositions = shards[name]
        layouts = _layouts(compositions, first, config)
        rows = _composites(compositions, layouts, config, input_root, backgrounds)
        table = _table(rows, _COMPOSITES_SCHEMA)
        write_atomically(
            output / COMPOSITES_DIR / f"{name}.parquet", lambda tmp, t=table: pq.write_table(t, tmp)
        )
        logger.info("shard %s: %d compositions composed", name, len(rows))
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
