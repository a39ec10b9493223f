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
first colon). Rows with a key seen before are left out as duplicates (the first exportable row of a key wins, in
file order).

The input is read twice, both times in batches. The first pass reads only the key, status and error of each row:
it decides which rows are exported and into which split, holding a 16-byte digest of each key (to find
duplicates with one sort) and a reason code per row, then keeps 1 byte per input row (its split). The second
pass reads whole rows, about 16 MiB at a time, writes them to their split files and accumulates the statistics
and plots, whose memory grows with the number of distinct names and the largest per-image count, not with the
rows (`pipelines.export.stats`). So memory is one batch (and input row group) of rows plus a few tens of bytes
per input row while the first pass sorts the digests, 1 byte per input row after it (`bench/export_stream.py`
measures the peak: +84 bytes per input row from 10k to 1M rows on a 2-core machine).
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
    check_proportions,
    fill_empty_splits,
    key_digests,
    points_of_digests,
    splits_of_points,
)
from pipelines.export.stats import ExportStats, failure_reason
from schemas import STATUSES, row_schema
from schemas.layout import CARD_FILE, DATA_DIR, IMAGE_ROWS_PER_ROW_GROUP, STATS_FILE, split_file_name
from schemas.settings import JobSettings, parse_settings

__all__ = ["KEEP_STATUSES", "export", "main"]

KEEP_STATUSES = ("ok", "repaired")
_STATUS_BATCH_ROWS = 65_536  # first pass: key, status and error only
_BATCH_BYTES = 16 << 20  # second pass: whole rows, about this many decoded bytes per batch
_MAX_BATCH_ROWS = 8_192
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


def _batches(file: Path, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """`columns` of `file` in batches; a column the file lacks (written before it existed) comes back null."""
    parquet = pq.ParquetFile(file)
    present = [name for name in columns if name in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
        arrays = {name: batch.column(name) for name in present}
        yield pa.RecordBatch.from_arrays(
            [arrays.get(name, pa.nulls(batch.num_rows)) for name in columns], names=list(columns)
        )


def _row_batch_size(files: Sequence[Path]) -> int:
    """Rows per batch of the writing pass: about `_BATCH_BYTES` of decoded rows (from the first file's metadata),
    at least one output row group, at most `_MAX_BATCH_ROWS`."""
    metadata = pq.ParquetFile(files[0]).metadata
    row_bytes = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    row_bytes = max(1, row_bytes // max(1, metadata.num_rows))
    return int(min(_MAX_BATCH_ROWS, max(IMAGE_ROWS_PER_ROW_GROUP, _BATCH_BYTES // row_bytes)))


def _status_batches(file: Path) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
    """(key, annotation.status, annotation.error) of `file` in batches, reading only those leaves."""
    parquet = pq.ParquetFile(file)
    nested = "annotation" in parquet.schema_arrow.names
    columns = ["key", "annotation.status", "annotation.error"] if nested else ["key"]
    for batch in parquet.iter_batches(batch_size=_STATUS_BATCH_ROWS, columns=columns):
        if nested:
            annotation = batch.column("annotation")
            status, error = pc.struct_field(annotation, "status"), pc.struct_field(annotation, "error")
        else:
            status = error = pa.nulls(batch.num_rows, pa.string())
        yield batch.column("key"), status, error


@dataclass
class _Plan:
    """Per input file, the split of each row (index into SPLITS; -1: left out), and the counts so far."""

    targets: list[np.ndarray]
    stats: ExportStats


def _first_kept(digests: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows are exported and which are duplicates, from the keys' `key_digests` (in row order) and whether
    each row's status is exported: a row is a duplicate when an earlier row of the same key was exported, else
    it is exported when eligible; so the first eligible row of each key wins, in row order.

    One stable sort of the 16-byte digests finds the keys seen more than once; only their rows are looked at
    further. Two different keys share a digest with probability about rows² / 2**129."""
    n = len(eligible)
    kept, duplicate = eligible.copy(), np.zeros(n, dtype=bool)
    if n < 2:
        return kept, duplicate
    order = np.lexsort((digests[:, 1], digests[:, 0]))  # stable: the rows of one key stay in row order
    repeated = np.zeros(n, dtype=bool)  # sorted position p holds the same key as position p - 1
    column = digests[order, 0]
    repeated[1:] = column[1:] == column[:-1]
    column = digests[order, 1]
    repeated[1:] &= column[1:] == column[:-1]
    del column
    if not repeated.any():
        return kept, duplicate
    in_group = repeated.copy()
    in_group[:-1] |= repeated[1:]  # the positions of every key seen more than once
    positions = np.flatnonzero(in_group)
    rows, group = order[positions], np.cumsum(~repeated[positions])
    del order, repeated, in_group
    # the first eligible row of each such key (rows ascend within a key), or n where none is eligible
    rows_eligible = eligible[rows]
    eligible_groups, eligible_rows = group[rows_eligible], rows[rows_eligible]
    first = np.ones(eligible_groups.size, dtype=bool)
    first[1:] = eligible_groups[1:] != eligible_groups[:-1]
    winner = np.full(int(group[-1]) + 1, n, dtype=np.int64)
    winner[eligible_groups[first]] = eligible_rows[first]
    kept[rows] = rows_eligible & (winner[group] == rows)
    duplicate[rows] = winner[group] < rows
    return kept, duplicate


def _plan(files: Sequence[Path], proportions: Sequence[float], seed: int, include_failed: bool) -> _Plan:
    """First pass, over keys and statuses only: which rows are exported, into which split, and the counts of the
    rows left out. Holds 16 bytes (key digest) + 4 bytes (reason) per input row while it runs, plus the sort's
    temporaries (an 8-byte order and an 8-byte column per row), and returns 1 byte per input row."""
    stats = ExportStats()
    sizes = [pq.ParquetFile(file).metadata.num_rows for file in files]
    total = sum(sizes)
    digests = np.empty((total, 2), dtype=np.uint64)
    reasons = np.full(total, -1, dtype=np.int32)  # index into `reason_names` of a row left out for its status
    reason_names: dict[str, int] = {}
    statuses = pa.array(STATUSES if include_failed else KEEP_STATUSES)
    offset = 0
    for file, size in zip(files, sizes, strict=True):
        end = offset + size
        for keys, status, error in _status_batches(file):
            n = len(keys)
            if offset + n > end:
                raise ValueError(f"{file}: more rows than its metadata says ({size})")
            digests[offset : offset + n] = key_digests(keys.to_pylist(), seed)
            for item in pc.value_counts(status).to_pylist():
                stats.by_status[item["values"] or "unknown"] += item["counts"]
            left = np.flatnonzero(~pc.fill_null(pc.is_in(status, value_set=statuses), False).to_numpy(False))
            if left.size:
                indices = pa.array(left)
                for i, state, message in zip(
                    left, status.take(indices).to_pylist(), error.take(indices).to_pylist(), strict=True
                ):
                    reason = failure_reason(message) if state == "failed" else f"status {state!r}"
                    reasons[offset + i] = reason_names.setdefault(reason, len(reason_names))
            offset += n
        if offset != end:
            raise ValueError(f"{file}: fewer rows than its metadata says ({size})")
    kept, duplicate = _first_kept(digests, reasons < 0)
    _count_left_out(stats, reasons, reason_names, kept, duplicate)
    del reasons, duplicate
    targets = np.where(kept, splits_of_points(points_of_digests(digests), proportions), -1).astype(np.int8)
    _fill_empty_splits(targets, kept, digests, proportions, stats)
    del digests
    bounds = np.cumsum([0, *sizes])
    return _Plan([targets[bounds[i] : bounds[i + 1]] for i in range(len(files))], stats)


def _count_left_out(
    stats: ExportStats, reasons: np.ndarray, names: dict[str, int], kept: np.ndarray, duplicate: np.ndarray
) -> None:
    """Count the rows left out by reason, each reason entered at its first row (as a row-by-row count would)."""
    counts = []  # (first row, reason, rows)
    duplicates = np.flatnonzero(duplicate)
    if duplicates.size:
        counts.append((int(duplicates[0]), "duplicate key", int(duplicates.size)))
    by_status = np.flatnonzero(~kept & ~duplicate)
    codes = reasons[by_status]
    for name, code in names.items():
        rows = by_status[codes == code]
        if rows.size:
            counts.append((int(rows[0]), name, int(rows.size)))
    for _, name, n in sorted(counts):
        stats.left_out[name] += n


def _fill_empty_splits(
    targets: np.ndarray, kept: np.ndarray, digests: np.ndarray, proportions: Sequence[float], stats: ExportStats
) -> None:
    """Apply `fill_empty_splits` to the exported rows (`targets` >= 0) in place and count the splits. It changes
    nothing unless a split with a positive proportion got no row (small data); only then are points gathered."""
    counts = np.bincount(targets[kept], minlength=len(SPLITS))
    if counts.sum() and any(p > 0 and not counts[i] for i, p in enumerate(proportions)):
        keyed = targets[kept]
        filled = fill_empty_splits(points_of_digests(digests[kept]), keyed, proportions)
        stats.moved_to_fill = int((filled != keyed).sum())
        targets[kept] = filled
        counts = np.bincount(filled, minlength=len(SPLITS))
    stats.by_split.update({SPLITS[i]: int(counts[i]) for i in range(len(SPLITS)) if counts[i]})


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
    """Second pass, over whole rows in batches: write each exported row to its split and add its graph and
    annotation to the statistics."""
    writers = {
        split: _SplitWriter(data_dir, split, plan.stats.by_split[split], rows_per_file, schema)
        for split in SPLITS
        if plan.stats.by_split[split]
    }
    batch_rows = _row_batch_size(files)
    for file, targets in zip(files, plan.targets, strict=True):
        offset = 0
        for batch in _batches(file, schema.names, batch_rows):
            size = batch.num_rows
            batch_targets = targets[offset : offset + size]
            offset += size
            kept = batch_targets >= 0
            if not kept.any():
                continue
            table = pa.Table.from_batches([batch]).cast(schema)
            if not kept.all():
                table, batch_targets = table.filter(pa.array(kept)), batch_targets[kept]
            plan.stats.add_graphs(table.column("scene_graph").combine_chunks())
            plan.stats.add_annotations(table.column("annotation").combine_chunks())
            for index, name in enumerate(SPLITS):
                mask = batch_targets == index
                if mask.all():
                    writers[name].write(table)
                elif mask.any():
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


