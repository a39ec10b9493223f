"""A tiny LAION-SG-shaped dataset for tests and the offline demo: scikit-image's sample photos with hand-written
scene graphs, written as Parquet with `schemas.row_schema()` in `pipelines.export`'s layout
(``data/train-00000-of-00001.parquet``, ``data/validation-00000-of-00001.parquet``).

The train split also holds one row whose annotation failed (no graph), which training must skip.
"""

from __future__ import annotations

import io
from pathlib import Path

__all__ = [
    "CONCEPT_SCENES",
    "FIXTURE_GRAPHS",
    "write_concept_scenes",
    "write_fixture_dataset",
    "write_layout_answers",
]

# image name in skimage.data -> (split, caption, graph as our JSON shape)
FIXTURE_GRAPHS: dict[str, tuple[str, str, dict]] = {
    "astronaut": (
        "train",
        "an astronaut in a white suit holding a helmet next to a flag",
        {
            "objects": [
                {"id": 0, "name": "person", "attributes": ["female", "smiling"]},
                {"id": 1, "name": "suit", "attributes": ["white"]},
                {"id": 2, "name": "helmet", "attributes": ["round"]},
                {"id": 3, "name": "flag", "attributes": ["striped"]},
            ],
            "relations": [
                {"subject": 0, "predicate": "wearing", "object": 1},
                {"subject": 0, "predicate": "holding", "object": 2},
                {"subject": 3, "predicate": "left of", "object": 0},
            ],
        },
    ),
    "chelsea": (
        "train",
        "a tabby cat looking to the side",
        {
            "objects": [
                {"id": 0, "name": "cat", "attributes": ["orange", "tabby"]},
                {"id": 1, "name": "wall", "attributes": ["gray"]},
            ],
            "relations": [{"subject": 0, "predicate": "sitting in front of", "object": 1}],
        },
    ),
    "coffee": (
        "train",
        "a cup of coffee on a saucer with a spoon",
        {
            "objects": [
                {"id": 0, "name": "cup", "attributes": ["white"]},
                {"id": 1, "name": "saucer", "attributes": ["white", "round"]},
                {"id": 2, "name": "spoon", "attributes": ["metal"]},
                {"id": 3, "name": "table", "attributes": ["wooden"]},
            ],
            "relations": [
                {"subject": 0, "predicate": "standing on", "object": 1},
                {"subject": 2, "predicate": "lying on", "object": 1},
                {"subject": 1, "predicate": "resting on", "object": 3},
                {"subject": 2, "predicate": "right of", "object": 0},
            ],
        },
    ),
    "rocket": (
        "train",
        "a rocket on the launch pad",
        {
            "objects": [
                {"id": 0, "name": "rocket", "attributes": ["tall", "white"]},
                {"id": 1, "name": "tower", "attributes": ["metal"]},
                {"id": 2, "name": "sky", "attributes": ["blue"]},
            ],
            "relations": [
                {"subject": 1, "predicate": "standing beside", "object": 0},
                {"subject": 2, "predicate": "surrounding", "object": 0},
            ],
        },
    ),
    "camera": (
        "train",
        "a cameraman with a tripod in a park",
        {
            "objects": [
                {"id": 0, "name": "person", "attributes": ["male", "young"]},
                {"id": 1, "name": "camera", "attributes": ["black"]},
                {"id": 2, "name": "tripod", "attributes": ["tall"]},
                {"id": 3, "name": "building", "attributes": ["distant"]},
            ],
            "relations": [
                {"subject": 0, "predicate": "looking through", "object": 1},
                {"subject": 1, "predicate": "mounted on", "object": 2},
            ],
        },
    ),
    "coins": (
        "train",
        "old coins",
        {
            "objects": [
                {"id": 0, "name": "coin", "attributes": ["round", "silver"]},
                {"id": 1, "name": "coin", "attributes": ["small", "worn"]},
                {"id": 2, "name": "background", "attributes": ["dark"]},
            ],
            "relations": [
                {"subject": 0, "predicate": "lying next to", "object": 1},
                {"subject": 0, "predicate": "lying on", "object": 2},
                {"subject": 1, "predicate": "lying on", "object": 2},
            ],
        },
    ),
    "colorwheel": (
        "train",
        "a color wheel",
        {"objects": [{"id": 0, "name": "wheel", "attributes": ["colorful", "round"]}], "relations": []},
    ),
    "hubble_deep_field": (
        "train",
        "galaxies in deep space",
        {
            "objects": [
                {"id": 0, "name": "galaxy", "attributes": ["bright", "spiral"]},
                {"id": 1, "name": "star", "attributes": ["small"]},
                {"id": 2, "name": "space", "attributes": ["dark"]},
            ],
            "relations": [
                {"subject": 1, "predicate": "right of", "object": 0},
                {"subject": 0, "predicate": "floating in", "object": 2},
            ],
        },
    ),
    "clock": (
        "validation",
        "a clock on a wall",
        {
            "objects": [
                {"id": 0, "name": "clock", "attributes": ["round"]},
                {"id": 1, "name": "wall", "attributes": ["plain"]},
            ],
            "relations": [{"subject": 0, "predicate": "hanging on", "object": 1}],
        },
    ),
    "page": (
        "validation",
        "a printed page",
        {
            "objects": [
                {"id": 0, "name": "text", "attributes": ["printed"]},
                {"id": 1, "name": "paper", "attributes": ["white"]},
            ],
            "relations": [{"subject": 0, "predicate": "printed on", "object": 1}],
        },
    ),
}
FAILED_IMAGE = "horse"


def _sample_jpeg(name: str, max_side: int) -> tuple[bytes, int, int]:
    import numpy as np
    import skimage.data
    from PIL import Image

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    image = Image.fromarray(array).convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), image.width, image.height


def write_fixture_dataset(out_dir: str | Path, max_side: int = 128) -> Path:
    """Write the train split (9 rows, one failed) and the validation split (2 rows); return `out_dir`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import SceneGraph, annotation_record, row_key, row_schema

    out = Path(out_dir)
    schema = row_schema()
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    entries = [(name, *spec) for name, spec in FIXTURE_GRAPHS.items()]
    entries.append((FAILED_IMAGE, "train", "a horse silhouette", None))
    for name, split, caption, graph_json in entries:
        data, width, height = _sample_jpeg(name, max_side)
        graph = None if graph_json is None else SceneGraph.from_json(graph_json).validate()
        status = "ok" if graph else "failed"
        rows[split].append(
            {
                "key": row_key(image_bytes=data),
                "url": None,
                "caption": caption,
                "aesthetic_score": None,
                "width": width,
                "height": height,
                "image": {"bytes": data, "path": f"{name}.png"},
                "scene_graph": graph.to_dict() if graph else None,
                "sg_text": graph.to_text() if graph else None,
                "annotation": annotation_record(
                    model="hand-written",
                    engine="manual",
                    task="scene_graph",
                    prompt_version="fixture-1",
                    status=status,
                    error=None if graph else "no graph (fixture of a failed annotation)",
                ),
            }
        )
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        table = pa.Table.from_pylist(split_rows, schema=schema)
        pq.write_table(table, out / "data" / f"{split}-00000-of-00001.parquet")
    return out


# Gen4Gen-layout concept folders for the compositing job: scene -> concept -> scikit-image sample names (a name
# with "_flipped" is the sample mirrored, a second reference image of the same concept)
CONCEPT_SCENES: dict[str, dict[str, tuple[str, ...]]] = {
    "desk": {"coffee": ("coffee", "coffee_flipped"), "rocket": ("rocket",)},
    "yard": {"astronaut": ("astronaut",), "cat": ("chelsea", "chelsea_flipped")},
}


def write_concept_scenes(out_dir: str | Path, max_side: int = 64) -> Path:
    """Write `CONCEPT_SCENES` as ``out_dir/scene/concept/*.png``; return `out_dir`."""
    from PIL import Image

    out = Path(out_dir)
    for scene, concepts in CONCEPT_SCENES.items():
        for concept, samples in concepts.items():
            folder = out / scene / concept
            folder.mkdir(parents=True, exist_ok=True)
            for sample in samples:
                data, _, _ = _sample_jpeg(sample.removesuffix("_flipped"), max_side)
                image = Image.open(io.BytesIO(data))
                if sample.endswith("_flipped"):
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                image.save(folder / f"{sample}.png")
    return out


def write_layout_answers(scenes_dir: str | Path, per_scene: int, path: str | Path) -> Path:
    """A hand-made layout answer per composition of `scenes_dir` (`per_scene` each, in plan order), as the
    JSON Lines answer file of the fixed engine (``--layout-engine fixed --layout-model PATH``): the concepts side
    by side on the 512 x 512 canvas, a fixed background. A dry-run layout, not a model's."""
    import json

    from pipelines.compositing.plan import scan_scenes

    lines = []
    for scene in scan_scenes(scenes_dir):
        width = 512 // len(scene.concepts)
        boxes = {c.phrase: [i * width + 8, 160, width - 16, 240] for i, c in enumerate(scene.concepts)}
        lines += [json.dumps({"boxes": boxes, "background": "a plain wooden table in a bright room"})] * per_scene
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
