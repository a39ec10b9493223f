"""The export job: annotated shards -> split Parquet files, dataset card, statistics and plots.

    python -m pipelines.export --input ANNOTATED_DIR --output DIR [--split-proportions 480005,10000,50000] [--seed 0]

Reads ``ANNOTATED_DIR/data/*.parquet`` (rows of `schemas.row_schema`, possibly with extra task columns or
without the image) and writes

- ``DIR/data/{split}-{i:05d}-of-{n:05d}.parquet`` with the Hugging Face features in the schema metadata and at
  most `rows_per_file` rows per file (row groups of 100 rows, as `datasets` writes image data);
- ``DIR/README.md``, the dataset card (`pipelines.export.card`), whose YAML front matter declares ``configs``
  (the data files of each split) and ``dataset_info`` (features, split sizes), so that both
  ``datasets.load_dataset(DIR)`` and ``datasets.load_dataset("parquet", data_files=...)`` decode the image as
  PIL and the graph as nested values;
- ``DIR/stats.json`` (`pipelines.export.stats`) and ``DIR/plots/*.png`` (`pipelines.export.plots`).

The split of a row depends only on its `key` and the seed (a hash mapped onto the cumulative proportions), so
it is stable across re-runs, input sharding and dataset growth; only on data so small that a split would be
empty do a few rows move to fill it (`pipelines.export.splits` states the rule). Only ``ok`` and ``repaired``
rows are exported unless `include_failed`; the rows left out are counted by reason (the error text up to its
first colon). Rows with a key seen before are left out as duplicates. The input is read twice (a cheap pass
over keys, statuses and graphs for the split sizes and statistics, then the full rows), so memory stays bounded
by one batch of rows (plus one number per exported row for the split rule).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from pipelines.export.card import DEFAULT_LICENSE, dataset_card
from pipelines.export.plots import write_plots
from pipelines.export.splits import (
    DEFAULT_PROPORTIONS,
    SPLITS,
    assign_splits,
    check_proportions,
    fill_empty_splits,
    split_points,
)
from pipelines.export.stats import ExportStats, failure_reason
from schemas import STATUSES, row_schema
from schemas.layout import CARD_FILE, DATA_DIR, IMAGE_ROWS_PER_ROW_GROUP, STATS_FILE, split_file_name
from schemas.settings import JobSettings, parse_settings

__all__ = ["KEEP_STATUSES", "export", "main"]

KEEP_STATUSES = ("ok", "repaired")
_BATCH_ROWS = 256
_BASE_COLUMNS = frozenset(row_schema().names)

# ---------------------------------------------------------------------------------------------------- reading


def _input_files(input_dir: Path) -> list[Path]:
    files = sorted((input_dir / DATA_DIR).glob("*.parquet"))
    if not files:
        raise ValueError(f"no annotated shards found: {input_dir / DATA_DIR}/*.parquet")
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
    keeps, splits, points = [], [], []
    statuses = STATUSES if include_failed else KEEP_STATUSES
    for file in files:
        file_keep, file_split, file_points = [], [], []
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
                    stats.left_out[failure_reason(error) if state == "failed" else f"status {state!r}"] += 1
                else:
                    keep[i] = True
                    seen.add(key)
            kept = batch.filter(pa.array(keep))
            stats.add_graphs(kept.column("scene_graph"))
            stats.add_annotations(kept.column("annotation"))
            file_keep.append(keep)
            file_split.append(assign_splits(keys, proportions, seed))
            file_points.append(split_points(kept.column("key").to_pylist(), seed))
        keeps.append(np.concatenate(file_keep) if file_keep else np.zeros(0, bool))
        splits.append(np.concatenate(file_split) if file_split else np.zeros(0, np.int8))
        points.append(np.concatenate(file_points) if file_points else np.zeros(0))
    _fill_empty_splits(keeps, splits, np.concatenate(points), proportions, stats)
    return _Plan(keeps, splits, stats)


def _fill_empty_splits(
    keeps: list[np.ndarray],
    splits: list[np.ndarray],
    points: np.ndarray,
    proportions: Sequence[float],
    stats: ExportStats,
) -> None:
    """Apply `fill_empty_splits` to the exported rows (over all files) in place; count the splits."""
    keyed = np.concatenate([split[keep] for keep, split in zip(keeps, splits, strict=True)])
    filled = fill_empty_splits(points, keyed, proportions)
    stats.moved_to_fill = int((filled != keyed).sum())
    stats.by_split.update(SPLITS[s] for s in filled)
    offset = 0
    for keep, split in zip(keeps, splits, strict=True):
        n = int(keep.sum())
        split[keep] = filled[offset : offset + n]
        offset += n


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
                path = self.directory / split_file_name(self.split, self.index, self.n_files)
                self.writer = pq.ParquetWriter(path, self.schema)
                self.paths.append(path)
            take = min(table.num_rows, self.rows_per_file - self.rows_in_file)
            part, table = table.slice(0, take), table.slice(take)
            self.writer.write_table(part, row_group_size=IMAGE_ROWS_PER_ROW_GROUP)
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


# ---------------------------------------------------------------------------------------------------- job


def _clear(output_dir: Path, overwrite: bool) -> None:
    data_dir = output_dir / DATA_DIR
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
    license: str = DEFAULT_LICENSE,
) -> dict[str, Any]:
    """Export `input_dir`'s annotated shards to `output_dir` (see the module docstring); returns the statistics.
    `license` is the license the card declares for the annotations."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if rows_per_file < 1:
        raise ValueError("rows_per_file must be positive")
    check_proportions(proportions)
    files = _input_files(input_dir)
    schema = _target_schema(files)
    plan = _plan(files, proportions, seed, include_failed)
    if not plan.stats.by_split:
        raise ValueError(f"nothing to export from {input_dir}: left out {dict(plan.stats.left_out)}")
    _clear(output_dir, overwrite)
    (output_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
    writers = _write_splits(files, plan, schema, output_dir / DATA_DIR, rows_per_file)
    stats = plan.stats.to_dict(proportions, seed)
    stats["files"] = {split: [p.name for p in writer.paths] for split, writer in writers.items()}
    (output_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    write_plots(plan.stats, output_dir / "plots")
    card = dataset_card(
        schema,
        {split: [p.name for p in writer.paths] for split, writer in writers.items()},
        {split: writer.num_bytes for split, writer in writers.items()},
        stats,
        license=license,
        include_failed=include_failed,
    )
    card.save(output_dir / CARD_FILE)
    return stats


class ExportSettings(JobSettings):
    """Settings of `python -m pipelines.export`."""

    input: Path = Field(description="annotation output directory (holds data/*.parquet)")
    output: Path = Field(description="dataset directory to write")
    split_proportions: tuple[float, float, float] = Field(
        DEFAULT_PROPORTIONS, description="train,validation,test proportions (LAION-SG's 480005,10000,50000)"
    )
    seed: int = Field(0, description="seed of the split hash")
    rows_per_file: int = Field(2_000, ge=1, description="rows per written Parquet file")
    include_failed: bool = Field(False, description="export failed rows too")
    overwrite: bool = Field(False, description="replace a previous export in --output")
    license: str = Field(DEFAULT_LICENSE, description="license of the annotations, as the dataset card declares it")

    @field_validator("split_proportions")
    @classmethod
    def _valid_proportions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        check_proportions(value)
        return value


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        ExportSettings, argv, prog="python -m pipelines.export", description=__doc__.split("\n\n")[0]
    )
    stats = export(
        settings.input,
        settings.output,
        settings.split_proportions,
        settings.seed,
        settings.rows_per_file,
        settings.include_failed,
        settings.overwrite,
        settings.license,
    )
    rows, left_out = stats["rows"], stats["left_out"]
    print(f"exported {rows['exported']} of {rows['total']} rows: {rows['by_split']}")
    print(f"left out {left_out['rows']} rows: {left_out['by_reason'] or 'none'}")
    print(f"dataset card: {settings.output / CARD_FILE}")
    return 0


