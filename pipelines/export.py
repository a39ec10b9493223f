"""Export annotated shards as a Hugging Face dataset: splits, Parquet files, dataset card, statistics, plots.

    python -m pipelines.export --input ANNOTATED_DIR --output DIR [--split 480005,10000,50000] [--seed 0]

Reads ``ANNOTATED_DIR/data/*.parquet`` (rows of `schemas.row_schema`, possibly with extra task columns or
without the image) and writes

- ``DIR/data/{split}-{i:05d}-of-{n:05d}.parquet`` with the Hugging Face features in the schema metadata and at
  most `rows_per_file` rows per file (row groups of 100 rows, as `datasets` writes image data);
- ``DIR/README.md``, a dataset card whose YAML front matter declares ``configs`` (the data files of each split)
  and ``dataset_info`` (features, split sizes), so that both ``datasets.load_dataset(DIR)`` and
  ``datasets.load_dataset("parquet", data_files=...)`` decode the image as PIL and the graph as nested values;
- ``DIR/stats.json`` and ``DIR/plots/*.png``.

The split of a row depends only on its `key` and the seed (a hash mapped onto the cumulative proportions), so
it is stable across re-runs, input sharding and dataset growth. Only ``ok`` and ``repaired`` rows are exported
unless `include_failed`; the rows left out are counted by reason (the error text up to its first colon).
Rows with a key seen before are left out as duplicates. The input is read twice (a cheap pass over keys,
statuses and graphs for the split sizes and statistics, then the full rows), so memory stays bounded by one
batch of rows.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import STATUSES, hf_features, row_schema

__all__ = [
    "DEFAULT_PROPORTIONS",
    "KEEP_STATUSES",
    "SPLITS",
    "ExportStats",
    "assign_splits",
    "export",
    "main",
]

SPLITS = ("train", "validation", "test")
# LAION-SG: 480,005 train / 10,000 validation / 50,000 test of the 540,005 downloadable images.
DEFAULT_PROPORTIONS = (480_005, 10_000, 50_000)
KEEP_STATUSES = ("ok", "repaired")
ROW_GROUP_SIZE = 100
TOP_K = 50
_PLOT_TOP_K = 25
_BATCH_ROWS = 256
_BASE_COLUMNS = frozenset(row_schema().names)


def _check_proportions(proportions: Sequence[float]) -> None:
    if len(proportions) != len(SPLITS) or any(p < 0 for p in proportions) or sum(proportions) <= 0:
        raise ValueError(
            f"proportions must be {len(SPLITS)} non-negative numbers (train, validation, test), got {proportions}"
        )


def assign_splits(
    keys: Sequence[str], proportions: Sequence[float] = DEFAULT_PROPORTIONS, seed: int = 0
) -> np.ndarray:
    """The split index (into `SPLITS`) of each key: sha256(seed, key) as a uniform number in [0, 1), placed on the
    cumulative `proportions`. Depends on nothing but the key, the seed and the proportions."""
    _check_proportions(proportions)
    total = float(sum(proportions))
    bounds = list(np.cumsum(proportions)[:-1] / total)
    out = np.empty(len(keys), dtype=np.int8)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        out[i] = bisect.bisect_right(bounds, int.from_bytes(digest[:8], "big") / 2.0**64)
    return out


def _reason(error: str | None) -> str:
    return (error or "").split(":", 1)[0].strip() or "unknown"


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": round(float(values.mean()), 4),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


@dataclass
class ExportStats:
    """Counts and per-image graph statistics, accumulated batch by batch over the exported rows."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_split: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    predicates: Counter[str] = field(default_factory=Counter)
    attributes: Counter[str] = field(default_factory=Counter)
    per_image: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"objects": [], "relations": [], "attributes": []}
    )

    def add_graphs(self, graphs: pa.Array) -> None:
        """Count one batch of `scene_graph` cells (null cells count as empty graphs)."""
        objects = pc.struct_field(graphs, "objects")
        relations = pc.struct_field(graphs, "relations")
        flat_objects = pc.list_flatten(objects)
        attribute_lists = pc.struct_field(flat_objects, "attributes")
        per_object = pc.fill_null(pc.list_value_length(attribute_lists), 0).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(objects).to_numpy(zero_copy_only=False)
        self.per_image["objects"].append(
            pc.fill_null(pc.list_value_length(objects), 0).to_numpy(zero_copy_only=False)
        )
        self.per_image["relations"].append(
            pc.fill_null(pc.list_value_length(relations), 0).to_numpy(zero_copy_only=False)
        )
        self.per_image["attributes"].append(np.bincount(parents, weights=per_object, minlength=len(graphs)))
        for counter, values in (
            (self.names, pc.struct_field(flat_objects, "name")),
            (self.predicates, pc.struct_field(pc.list_flatten(relations), "predicate")),
            (self.attributes, pc.list_flatten(attribute_lists)),
        ):
            for item in pc.value_counts(pc.drop_null(values)).to_pylist():
                counter[item["values"]] += item["counts"]

    def per_image_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            name: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            for name, parts in self.per_image.items()
        }
        arrays["graph_length"] = arrays["objects"] + arrays["relations"]
        arrays["graph_length_with_attributes"] = arrays["graph_length"] + arrays["attributes"]
        return arrays

    def to_dict(self, proportions: Sequence[float], seed: int) -> dict[str, Any]:
        def top(counter: Counter[str]) -> list[dict[str, Any]]:
            return [{"value": value, "count": n} for value, n in counter.most_common(TOP_K)]

        return {
            "rows": {
                "total": sum(self.by_status.values()),
                "by_status": dict(sorted(self.by_status.items())),
                "exported": sum(self.by_split.values()),
                "by_split": {split: self.by_split[split] for split in SPLITS},
            },
            "left_out": {"rows": sum(self.left_out.values()), "by_reason": dict(self.left_out.most_common())},
            "split": {"proportions": dict(zip(SPLITS, proportions, strict=True)), "seed": seed},
            "annotation": dict(self.models.most_common()),
            # graph_length = nodes + edges (objects + relations); ..._with_attributes counts attributes as nodes.
            "per_image": {name: _summary(values) for name, values in self.per_image_arrays().items()},
            "distinct": {
                "names": len(self.names),
                "predicates": len(self.predicates),
                "attributes": len(self.attributes),
            },
            "top_names": top(self.names),
            "top_predicates": top(self.predicates),
            "top_attributes": top(self.attributes),
        }


# ---------------------------------------------------------------------------------------------------- reading


def _input_files(input_dir: Path) -> list[Path]:
    files = sorted((input_dir / "data").glob("*.parquet"))
    if not files:
        raise ValueError(f"no annotated shards found: {input_dir / 'data'}/*.parquet")
    return files


def _target_schema(files: Sequence[Path]) -> pa.Schema:
    """`row_schema` with the input's extra task columns (and the image column when the input has one)."""
    first = pq.read_schema(files[0])
    missing = sorted(_BASE_COLUMNS - {"image"} - set(first.names))
    if missing:
        raise ValueError(f"{files[0]}: not an annotated shard, missing columns {missing}")
    extra = {f.name: f.type for f in first if f.name not in _BASE_COLUMNS}
    return row_schema(extra, with_image="image" in first.names)


def _batches(file: Path, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """`columns` of `file` in batches; a column the file lacks (written before it existed) comes back null."""
    parquet = pq.ParquetFile(file)
    present = [name for name in columns if name in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
        arrays = {name: batch.column(name) for name in present}
        yield pa.RecordBatch.from_arrays(
            [arrays.get(name, pa.nulls(batch.num_rows)) for name in columns], names=list(columns)
        )


@dataclass
class _Plan:
    """Per input file: which rows are exported (mask) and into which split (index into SPLITS)."""

    keep: list[np.ndarray]
    split: list[np.ndarray]
    stats: ExportStats


def _plan(files: Sequence[Path], proportions: Sequence[float], seed: int, include_failed: bool) -> _Plan:
    stats = ExportStats()
    seen: set[str] = set()
    keeps, splits = [], []
    statuses = STATUSES if include_failed else KEEP_STATUSES
    for file in files:
        file_keep, file_split = [], []
        for batch in _batches(file, ["key", "annotation", "scene_graph"]):
            annotation = batch.column("annotation")
            keys = batch.column("key").to_pylist()
            status = pc.struct_field(annotation, "status").to_pylist()
            errors = pc.struct_field(annotation, "error").to_pylist()
            stats.by_status.update(s or "unknown" for s in status)
            keep = np.zeros(len(keys), dtype=bool)
            for i, (key, state, error) in enumerate(zip(keys, status, errors, strict=True)):
                if key in seen:
                    stats.left_out["duplicate key"] += 1
                elif state not in statuses:
                    stats.left_out[_reason(error) if state == "failed" else f"status {state!r}"] += 1
                else:
                    keep[i] = True
                    seen.add(key)
            split = assign_splits(keys, proportions, seed)
            kept_split = split[keep]
            stats.by_split.update(SPLITS[s] for s in kept_split)
            kept = batch.filter(pa.array(keep))
            stats.add_graphs(kept.column("scene_graph"))
            model = pc.struct_field(kept.column("annotation"), "model").to_pylist()
            version = pc.struct_field(kept.column("annotation"), "prompt_version").to_pylist()
            stats.models.update(f"{m} (prompt {v})" for m, v in zip(model, version, strict=True))
            file_keep.append(keep)
            file_split.append(split)
        keeps.append(np.concatenate(file_keep) if file_keep else np.zeros(0, bool))
        splits.append(np.concatenate(file_split) if file_split else np.zeros(0, np.int8))
    return _Plan(keeps, splits, stats)


# ---------------------------------------------------------------------------------------------------- writing


class _SplitWriter:
    """Writes one split as ``{split}-{i:05d}-of-{n:05d}.parquet`` files of `rows_per_file` rows."""

    def __init__(self, directory: Path, split: str, total_rows: int, rows_per_file: int, schema: pa.Schema):
        self.directory, self.split, self.schema = directory, split, schema
        self.rows_per_file = rows_per_file
        self.n_files = -(-total_rows // rows_per_file)
        self.index, self.rows_in_file, self.num_bytes = 0, 0, 0
        self.writer: pq.ParquetWriter | None = None
        self.paths: list[Path] = []

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                path = self.directory / f"{self.split}-{self.index:05d}-of-{self.n_files:05d}.parquet"
                self.writer = pq.ParquetWriter(path, self.schema)
                self.paths.append(path)
            take = min(table.num_rows, self.rows_per_file - self.rows_in_file)
            part, table = table.slice(0, take), table.slice(take)
            self.writer.write_table(part, row_group_size=ROW_GROUP_SIZE)
            self.num_bytes += part.nbytes
            self.rows_in_file += take
            if self.rows_in_file == self.rows_per_file:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.index, self.rows_in_file = None, self.index + 1, 0


def _write_splits(
    files: Sequence[Path], plan: _Plan, schema: pa.Schema, data_dir: Path, rows_per_file: int
) -> dict[str, _SplitWriter]:
    writers = {
        split: _SplitWriter(data_dir, split, plan.stats.by_split[split], rows_per_file, schema)
        for split in SPLITS
        if plan.stats.by_split[split]
    }
    for file, keep, split in zip(files, plan.keep, plan.split, strict=True):
        offset = 0
        for batch in _batches(file, schema.names):
            size = batch.num_rows
            batch_keep, batch_split = keep[offset : offset + size], split[offset : offset + size]
            offset += size
            table = pa.Table.from_batches([batch]).cast(schema)
            for index, name in enumerate(SPLITS):
                mask = batch_keep & (batch_split == index)
                if mask.any():
                    writers[name].write(table.filter(pa.array(mask)))
    for writer in writers.values():
        writer.close()
    return writers


# ---------------------------------------------------------------------------------------------------- card, plots


def _dataset_card(schema: pa.Schema, writers: dict[str, _SplitWriter], stats: dict[str, Any]) -> str:
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    card_data = DatasetCardData(pretty_name="LAION-SG style scene-graph dataset")
    data_files = [{"split": split, "path": f"data/{split}-*.parquet"} for split in writers]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    splits = SplitDict()
    for split, writer in writers.items():
        splits.add(
            SplitInfo(name=split, num_bytes=writer.num_bytes, num_examples=stats["rows"]["by_split"][split])
        )
    info = DatasetInfo(
        features=Features.from_dict(hf_features(schema)),
        splits=splits,
        dataset_size=sum(writer.num_bytes for writer in writers.values()),
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    per_image = stats["per_image"]
    split_rows = "\n".join(f"| {split} | {stats['rows']['by_split'][split]} |" for split in SPLITS)
    left_out = "\n".join(f"| {reason} | {n} |" for reason, n in stats["left_out"]["by_reason"].items())
    models = "\n".join(f"- {model}: {n} rows" for model, n in stats["annotation"].items())
    image = "the image, " if "image" in schema.names else "(no image: fetch it from `url`) "
    load_files = ", ".join(f'"{split}": "DIR/data/{split}-*.parquet"' for split in writers)
    return (
        f"""---
{card_data.to_yaml()}
---

# Scene-graph dataset

Images with scene graphs (objects with attributes, and relations between them) in the LAION-SG layout,
annotated by a vision-language model with JSON-schema constrained decoding. Each row has {image}its
original caption and URL, the aesthetic score, the `scene_graph` (`objects: [{{id, name, attributes}}]`,
`relations: [{{subject, predicate, object}}]`), its canonical text `sg_text`, and the `annotation` provenance
(model, engine, task, prompt version, raw output, status).

Images remain the property of their owners; the URLs are given for attribution.

## Loading

```python
import datasets
ds = datasets.load_dataset("DIR")  # this directory, or its hub id
ds = datasets.load_dataset("parquet", data_files={{{load_files}}})
```

## Splits

Assigned by hashing `key` (seed {stats["split"]["seed"]}, proportions {stats["split"]["proportions"]}), so a row
keeps its split when the dataset grows.

| split | rows |
|---|---|
{split_rows}

## Annotation

{models}

Rows left out of the export (by reason):

| reason | rows |
|---|---|
{left_out or "| - | 0 |"}

## Statistics

| per image | mean | median | p95 |
|---|---|---|---|
"""
        + "\n".join(f"| {name} | {v['mean']} | {v['median']} | {v['p95']} |" for name, v in per_image.items())
        + """

`graph_length` is nodes + edges (objects + relations). More in `stats.json`; plots in `plots/`:

![objects, relations, attributes per image](plots/per_image.png)
![graph length](plots/graph_length.png)
![top object names](plots/top_names.png)
![top predicates](plots/top_predicates.png)
![top attributes](plots/top_attributes.png)
"""
    )


def _plots(stats: ExportStats, directory: Path) -> None:
    """Histograms of the per-image counts and bars of the most frequent names, predicates and attributes."""
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    arrays = stats.per_image_arrays()

    def save(figure: Figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(directory / name, dpi=100)

    figure = Figure(figsize=(12, 3.5))
    for axis, name in zip(figure.subplots(1, 3), ("objects", "relations", "attributes"), strict=True):
        counts = np.bincount(arrays[name])
        axis.bar(np.arange(counts.size), counts, width=0.8)
        axis.set(title=f"{name} per image", xlabel=name, ylabel="images")
    save(figure, "per_image.png")

    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    axis.hist(arrays["graph_length"], bins=30)
    axis.set(title="graph length (objects + relations)", xlabel="nodes + edges", ylabel="images")
    save(figure, "graph_length.png")

    for name, counter in (
        ("names", stats.names),
        ("predicates", stats.predicates),
        ("attributes", stats.attributes),
    ):
        top = counter.most_common(_PLOT_TOP_K)[::-1]
        figure = Figure(figsize=(6, 0.25 * len(top) + 1.2))
        axis = figure.subplots()
        axis.barh([value for value, _ in top], [n for _, n in top])
        axis.set(title=f"top {len(top)} {name}", xlabel="count")
        save(figure, f"top_{name}.png")


# ---------------------------------------------------------------------------------------------------- job


def _clear(output_dir: Path, overwrite: bool) -> None:
    data_dir = output_dir / "data"
    existing = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{data_dir} already holds Parquet files; pass overwrite=True (--overwrite)")
    for path in existing:
        path.unlink()
    shutil.rmtree(output_dir / "plots", ignore_errors=True)


def export(
    input_dir: str | Path,
    output_dir: str | Path,
    proportions: Sequence[float] = DEFAULT_PROPORTIONS,
    seed: int = 0,
    rows_per_file: int = 2_000,
    include_failed: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export `input_dir`'s annotated shards to `output_dir` (see the module docstring); returns the statistics."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be positive")
    files = _input_files(input_dir)
    schema = _target_schema(files)
    plan = _plan(files, proportions, seed, include_failed)
    if not plan.stats.by_split:
        raise ValueError(f"nothing to export from {input_dir}: left out {dict(plan.stats.left_out)}")
    _clear(output_dir, overwrite)
    (output_dir / "data").mkdir(parents=True, exist_ok=True)
    writers = _write_splits(files, plan, schema, output_dir / "data", rows_per_file)
    stats = plan.stats.to_dict(proportions, seed)
    stats["files"] = {split: [p.name for p in writer.paths] for split, writer in writers.items()}
    (output_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _plots(plan.stats, output_dir / "plots")
    (output_dir / "README.md").write_text(_dataset_card(schema, writers, stats))
    return stats


def _proportions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
        _check_proportions(values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected train,validation,test like 480005,10000,50000: {exc}"
        ) from exc
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="annotation output directory (holds data/*.parquet)")
    parser.add_argument("--output", required=True, help="dataset directory to write")
    parser.add_argument(
        "--split",
        type=_proportions,
        default=DEFAULT_PROPORTIONS,
        help="train,validation,test proportions (default: LAION-SG's 480005,10000,50000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    parser.add_argument("--rows-per-file", type=int, default=2_000)
    parser.add_argument("--include-failed", action="store_true", help="export failed rows too")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous export in --output")
    args = parser.parse_args(argv)
    stats = export(
        args.input,
        args.output,
        args.split,
        args.seed,
        args.rows_per_file,
        args.include_failed,
        args.overwrite,
    )
    rows, left_out = stats["rows"], stats["left_out"]
    print(f"exported {rows['exported']} of {rows['total']} rows: {rows['by_split']}")
    print(f"left out {left_out['rows']} rows: {left_out['by_reason'] or 'none'}")
    print(f"dataset card: {Path(args.output) / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
