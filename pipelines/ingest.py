"""The input side of annotation: find the shards of an input, read each one into rows with a stable key, filter.

Five input formats (`detect_format` tells them apart):

- ``laion_parquet``: LAION metadata Parquet (``URL``, ``TEXT``, ``AESTHETIC_SCORE``, ``WIDTH``, ``HEIGHT``,
  ``pwatermark``, ``punsafe``, ... in any letter case); no image bytes.
- ``img2dataset_parquet``: img2dataset's ``--output_format parquet`` (a ``jpg``/``png``/``webp`` binary column,
  ``url``, ``caption``, ``status``, ``original_width``, ... plus the ``--save_additional_columns``).
- ``webdataset``: img2dataset's ``--output_format webdataset`` tars (``{key}.jpg``, ``{key}.txt``, ``{key}.json``).
- ``url_list``: img2dataset's URL-list inputs, CSV/TSV with a header or ``.txt`` with one URL per line (no image
  bytes, like ``laion_parquet``: for text tasks, or to check a list before downloading it).
- ``folder``: image files under a directory, recursively; an optional ``{stem}.txt`` caption and ``{stem}.json``
  metadata beside each image (so img2dataset's ``--output_format files`` reads as a folder).

Paths whose name starts with ``.`` or ``_`` are ignored (img2dataset's ``_tmp``, Spark's ``_SUCCESS``), as pyarrow does.

`read_shard` returns a table with exactly `INGEST_SCHEMA`'s columns and a `FilterCounts`: every row a filter
removes is counted under its reason. De-duplication is by `key` (sha1 of the URL, or of the image bytes when a
row has no URL) across the whole input, and keeps the first row, in shard order, among the rows that pass the
other filters. `list_shards` makes a cheap pre-pass over all shards for it (for Parquet only the URL, status and
numeric filter columns are read; no image is decoded) and gives each shard the keys already taken by an earlier
shard (`Shard.drop_keys`); within a shard the first occurrence wins. The pre-pass holds every key once in memory
on the driver (about 100 bytes per row: 60 MB for the 625k rows of LAION-Aesthetics 6.5+).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.images import image_size
from schemas import UPSTREAM_FIELDS, row_key

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "IMAGE_COLUMNS",
    "INGEST_SCHEMA",
    "INPUT_FORMATS",
    "METADATA_ONLY_FORMATS",
    "FilterCounts",
    "FilterCountsCollector",
    "IngestFilters",
    "Shard",
    "detect_format",
    "list_shards",
    "plan_dedupe",
    "read_dataset",
    "read_shard",
]

INPUT_FORMATS = ("folder", "laion_parquet", "img2dataset_parquet", "webdataset", "url_list")
# Inputs with URLs and captions but no image bytes: only tasks without an image can run on them.
METADATA_ONLY_FORMATS = ("laion_parquet", "url_list")
# img2dataset's URL-list inputs: CSV and TSV with a header (its `url_col`/`caption_col` found like LAION's
# columns, in any letter case), and plain text with one URL per line.
URL_LIST_SUFFIXES = frozenset({"csv", "tsv", "txt"})

INGEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("aesthetic_score", pa.float32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_bytes", pa.binary()),
        pa.field("source", pa.string()),
        *UPSTREAM_FIELDS,
    ]
)

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
# img2dataset names its image column (and tar member) after --encode_format.
IMAGE_COLUMNS = ("jpg", "jpeg", "png", "webp")

# Output column -> source names in priority order. Each name matches exactly first, then in any letter case.
# img2dataset's `width`/`height` are the size after its resizing; `original_*` and LAION's upper-case ones are not.
_ALIASES: dict[str, tuple[str, ...]] = {
    "url": ("url",),
    "caption": ("caption", "TEXT", "txt"),
    "aesthetic_score": ("AESTHETIC_SCORE", "aesthetic"),
    "width": ("original_width", "WIDTH", "width"),
    "height": ("original_height", "HEIGHT", "height"),
    "pwatermark": ("pwatermark",),
    "punsafe": ("punsafe",),
    "similarity": ("similarity",),
    "sha256": ("sha256",),
    "source_key": ("key",),
    "status": ("status",),
}
# Scores stay float64 until the output cast, so that a bound like 0.8 compares exactly as written.
_RAW_TYPES: dict[str, pa.DataType] = {
    "url": pa.string(),
    "caption": pa.string(),
    "aesthetic_score": pa.float64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "pwatermark": pa.float64(),
    "punsafe": pa.float64(),
    "similarity": pa.float64(),
    "sha256": pa.string(),
    "source_key": pa.string(),
    "status": pa.string(),
}
_SUCCESS = "success"  # img2dataset's status of a downloaded image


# ---------------------------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class IngestFilters:
    """Row filters. A bound of None is off. A row whose value is unknown fails a bound that is on."""

    min_aesthetic_score: float | None = None
    min_width: int | None = None
    min_height: int | None = None
    max_pwatermark: float | None = None
    max_punsafe: float | None = None
    dedupe_urls: bool = True


@dataclass
class FilterCounts:
    """Rows read, rows kept, and rows removed per reason (e.g. ``"aesthetic_score<6.5"``, ``"duplicate"``).

    Each removed row is counted once, under the first filter that removed it, in this order: not downloaded,
    no url or image, aesthetic score, width, height, pwatermark, punsafe, duplicate.
    """

    rows_in: int = 0
    rows_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: FilterCounts) -> FilterCounts:
        return FilterCounts(
            self.rows_in + other.rows_in,
            self.rows_out + other.rows_out,
            dict(Counter(self.removed) + Counter(other.removed)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a job summary: ``rows in: 10, kept: 7, filtered: aesthetic_score<6.5: 2, duplicate: 1``."""
        removed = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.removed.items())) or "none"
        return f"rows in: {self.rows_in}, kept: {self.rows_out}, filtered: {removed}"


class _Filter:
    """Applies removal masks in order and counts each removed row once."""

    def __init__(self, n: int):
        self.keep = np.ones(n, dtype=bool)
        self.removed: Counter[str] = Counter()

    def drop(self, reason: str, mask: np.ndarray) -> None:
        hit = self.keep & mask
        if hit.any():
            self.removed[reason] += int(hit.sum())
        self.keep &= ~mask

    def bound(self, name: str, values: pa.ChunkedArray, limit: float | None, is_min: bool) -> None:
        if limit is None:
            return
        array = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        self.drop(f"{name} missing", np.isnan(array))
        with np.errstate(invalid="ignore"):
            self.drop(f"{name}{'<' if is_min else '>'}{limit:g}", array < limit if is_min else array > limit)


def _apply_filters(
    raw: pa.Table, filters: IngestFilters, drop_keys: frozenset[str]
) -> tuple[pa.Table, FilterCounts]:
    rows = _Filter(raw.num_rows)
    rows.drop("not downloaded", ~raw.column("downloaded").to_numpy(zero_copy_only=False).astype(bool))
    keys = raw.column("key").to_pylist()
    rows.drop("no url or image", np.array([key is None for key in keys], dtype=bool))
    rows.bound("aesthetic_score", raw.column("aesthetic_score"), filters.min_aesthetic_score, is_min=True)
    rows.bound("width", raw.column("width"), filters.min_width, is_min=True)
    rows.bound("height", raw.column("height"), filters.min_height, is_min=True)
    rows.bound("pwatermark", raw.column("pwatermark"), filters.max_pwatermark, is_min=False)
    rows.bound("punsafe", raw.column("punsafe"), filters.max_punsafe, is_min=False)
    if filters.dedupe_urls:
        seen = set(drop_keys)
        duplicate = np.zeros(raw.num_rows, dtype=bool)
        for i, key in enumerate(keys):
            if rows.keep[i]:
                duplicate[i] = key in seen
                seen.add(key)
        rows.drop("duplicate", duplicate)
    kept = raw.filter(pa.array(rows.keep))
    # `width`/`height` hold the original size (metadata first, else the image header); the annotate job replaces
    # them with the stored image's decoded size and keeps these as `original_*`.
    kept = kept.append_column("original_width", kept.column("width"))
    kept = kept.append_column("original_height", kept.column("height"))
    kept = kept.select(INGEST_SCHEMA.names).cast(INGEST_SCHEMA)
    return kept, FilterCounts(raw.num_rows, kept.num_rows, dict(rows.removed))


# ---------------------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One unit of reading (and of annotation output: one output file per shard).

    `path` is the Parquet or tar file, or for a folder the folder itself, with `files` the shard's images
    relative to it. Parquet files longer than `rows_per_shard` are cut into row ranges
    [`row_start`, `row_stop`). `name` is deterministic, filesystem-safe and unique within the input.
    `drop_keys` are keys already taken by an earlier shard, and `planned_with` the filters they were planned
    with (both filled by `plan_dedupe`). `content_id` identifies what the shard reads (file names and sizes,
    row range); `fingerprint` adds `drop_keys`, so that an output written for an earlier version of the shard
    (files added to a folder chunk, a tar rewritten, a key now owned by another shard) is recognised as stale.
    """

    path: str
    name: str
    files: tuple[str, ...] = ()
    row_start: int = 0
    row_stop: int | None = None
    drop_keys: frozenset[str] = frozenset()
    planned_with: IngestFilters | None = None
    content_id: str = ""

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha1(self.content_id.encode())
        for key in sorted(self.drop_keys):
            digest.update(key.encode())
        return digest.hexdigest()


def _content_id(root: Path, relatives: Sequence[str], extra: str = "") -> str:
    """sha1 of the files' relative paths and sizes (plus `extra`, e.g. a row range): cheap, and it changes
    when img2dataset adds to or rewrites a shard."""
    digest = hashlib.sha1(extra.encode())
    for relative in relatives:
        path = root / relative
        size = path.stat().st_size if path.exists() else -1
        digest.update(f"{relative}\0{size}\0".encode())
    return digest.hexdigest()


def _visible(relative: PurePosixPath) -> bool:
    return not any(part.startswith((".", "_")) for part in relative.parts)


def _files(root: Path, suffixes: frozenset[str]) -> list[PurePosixPath]:
    """Files under `root` with one of `suffixes` (lower-case, no dot), relative, sorted, hidden ones skipped."""
    found = []
    for path in root.rglob("*"):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and _visible(relative) and path.suffix[1:].lower() in suffixes:
            found.append(relative)
    return sorted(found)


def _input_files(path: Path, suffixes: frozenset[str]) -> tuple[Path, list[PurePosixPath]]:
    """(root, files relative to it) for a directory or a single file."""
    if path.is_dir():
        return path, _files(path, suffixes)
    return path.parent, [PurePosixPath(path.name)]


def _image_column(schema: pa.Schema) -> str | None:
    for name in IMAGE_COLUMNS:
        if name in schema.names:
            dtype = schema.field(name).type
            if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
                return name
    return None


def _parquet_file(path: Path) -> pq.ParquetFile:
    """Open a Parquet file; a file that is not Parquet (0 bytes, truncated, another format) raises `ValueError`
    naming it."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(f"{path}: not a readable Parquet file ({size} bytes): {exc}") from None


def _parquet_kind(path: Path) -> str:
    schema = _parquet_file(path).schema_arrow
    if _image_column(schema) is not None:
        return "img2dataset_parquet"
    if _resolve(schema.names, "url") is not None or _resolve(schema.names, "caption") is not None:
        return "laion_parquet"  # metadata: URLs, or captions only (prompts for text_to_graph)
    raise ValueError(
        f"{path}: Parquet without an image column ({', '.join(IMAGE_COLUMNS)}), a URL column or a caption "
        f"column; columns are {schema.names}"
    )


def detect_format(path: str | Path) -> str:
    """One of `INPUT_FORMATS` for a directory (or a single .parquet / .tar file); ValueError otherwise.

    Precedence in a directory: tar shards, then Parquet with image bytes, then image files, then metadata
    Parquet (img2dataset's webdataset and files outputs carry metadata-only Parquet beside their images).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"input {path} does not exist")
    if path.is_file():
        suffix = path.suffix[1:].lower()
        if suffix == "tar":
            return "webdataset"
        if suffix == "parquet":
            return _parquet_kind(path)
        if suffix in URL_LIST_SUFFIXES:
            return "url_list"
        raise ValueError(f"input {path}: expected a directory, a .parquet, .tar, .csv, .tsv or .txt file")
    if _files(path, frozenset({"tar"})):
        return "webdataset"
    parquets = _files(path, frozenset({"parquet"}))
    if parquets and _parquet_kind(path / parquets[0]) == "img2dataset_parquet":
        return "img2dataset_parquet"
    if _files(path, IMAGE_EXTENSIONS):
        return "folder"
    if parquets:
        return "laion_parquet"
    if _files(path, URL_LIST_SUFFIXES):
        return "url_list"
    raise ValueError(
        f"input {path}: no .tar shards, .parquet files or images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found"
    )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(relative: PurePosixPath) -> str:
    """A filesystem-safe name from a relative path: ``a/b c.parquet`` -> ``a-b_c``."""
    text = "-".join(relative.with_suffix("").parts)
    return _UNSAFE.sub("_", text).strip("._-") or "shard"


def _unique(shards: list[Shard], sources: list[str]) -> list[Shard]:
    """Disambiguate colliding names (``a-b.tar`` vs ``a/b.tar``) with a hash of the source path."""
    counts = Counter(shard.name for shard in shards)
    return [
        shard
        if counts[shard.name] == 1
        else replace(shard, name=f"{shard.name}-{hashlib.sha1(source.encode()).hexdigest()[:8]}")
        for shard, source in zip(shards, sources, strict=True)
    ]


def list_shards(
    path: str | Path,
    input_format: str | None = None,
    files_per_shard: int = 256,
    rows_per_shard: int = 10_000,
    filters: IngestFilters = IngestFilters(),
) -> list[Shard]:
    """The shards of an input, in a deterministic order, de-duplication planned for `filters` (`plan_dedupe`).

    Read them with `read_shard` and the same `filters`.

    Folders: the sorted image files in chunks of `files_per_shard` (``folder-00000``, ...; adding files shifts
    later chunks). Tars: one shard each. Parquet: one shard per file, or per `rows_per_shard` rows of a longer
    file (``name-00000``, ...).
    """
    path = Path(path)
    input_format = input_format or detect_format(path)
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")
    if input_format == "folder":
        root, files = _input_files(path, IMAGE_EXTENSIONS)
        chunks = [files[i : i + files_per_shard] for i in range(0, len(files), files_per_shard)]
        shards = [
            Shard(
                str(root),
                f"folder-{i:05d}",
                tuple(str(f) for f in chunk),
                content_id=_content_id(root, [str(f) for f in chunk]),
            )
            for i, chunk in enumerate(chunks)
        ]
        sources = [shard.name for shard in shards]
    elif input_format == "webdataset":
        root, files = _input_files(path, frozenset({"tar"}))
        shards = [Shard(str(root / f), _slug(f), content_id=_content_id(root, [str(f)])) for f in files]
        sources = [str(f) for f in files]
    else:
        suffixes = URL_LIST_SUFFIXES if input_format == "url_list" else frozenset({"parquet"})
        root, files = _input_files(path, suffixes)
        shards, sources = [], []
        for f in files:
            if input_format == "url_list":
                rows = _read_url_list(root / f).num_rows
            else:
                rows = _parquet_file(root / f).metadata.num_rows
            parts = max(1, math.ceil(rows / rows_per_shard))
            for part in range(parts):
                name = _slug(f) if parts == 1 else f"{_slug(f)}-{part:05d}"
                start, stop = part * rows_per_shard, min(rows, (part + 1) * rows_per_shard)
                content_id = _content_id(root, [str(f)], f"{start}:{stop}")
                shards.append(Shard(str(root / f), name, row_start=start, row_stop=stop, content_id=content_id))
                sources.append(f"{f}#{part}")
    if not shards:
        raise ValueError(f"input {path}: no {input_format} shards found")
    shards = _unique(shards, sources)
    return plan_dedupe(shards, input_format, filters) if filters.dedupe_urls else shards


def plan_dedupe(shards: Sequence[Shard], input_format: str, filters: IngestFilters) -> list[Shard]:
    """Fill each shard's `drop_keys`: keys of rows passing `filters` whose first such row is in an earlier shard.

    A pre-pass without image decoding; rows that the other filters remove never take a key.
    """
    owner: dict[str, int] = {}
    drops: list[set[str]] = [set() for _ in shards]
    without_dedupe = replace(filters, dedupe_urls=False)
    for index, shard in enumerate(shards):
        kept, _ = _apply_filters(_read_raw(shard, input_format, images=False), without_dedupe, frozenset())
        for key in kept.column("key").to_pylist():
            if owner.setdefault(key, index) != index:
                drops[index].add(key)
    return [
        replace(shard, drop_keys=frozenset(keys), planned_with=filters)
        for shard, keys in zip(shards, drops, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------- reading


def _resolve(names: Sequence[str], target: str) -> str | None:
    """The source name for output column `target` among `names` (see `_ALIASES`), or None."""
    aliases = _ALIASES[target]
    for alias in aliases:
        if alias in names:
            return alias
    lower = {name.lower(): name for name in names}
    return next((lower[a.lower()] for a in aliases if a.lower() in lower), None)


def _get(record: Mapping[str, Any], target: str) -> Any:
    """The value for output column `target` in a JSON metadata record, or None."""
    name = _resolve(list(record), target)
    return None if name is None else record[name]


def _number(value: Any, kind: type) -> Any:
    """A float/int from JSON metadata (numbers or numeric strings); None when absent or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(number) else kind(number)


def _from_records(
    records: list[Mapping[str, Any]],
    image_bytes: list[bytes | None],
    has_image: list[bool],
    sources: list[str],
    caption_keys: bool = False,
) -> pa.Table:
    """The raw table of row-wise inputs (tar samples, folder files), `records` being their JSON/txt metadata.

    `image_bytes` may be None where the pre-pass did not need them (the row has a URL); `has_image` says whether
    the sample has an image at all.
    """
    columns: dict[str, list[Any]] = {}
    for target, dtype in _RAW_TYPES.items():
        values = []
        for record in records:
            value = _get(record, target)
            if pa.types.is_floating(dtype):
                value = _number(value, float)
            elif pa.types.is_integer(dtype):
                value = _number(value, int)
            elif value is not None:
                value = str(value)
            values.append(value)
        columns[target] = values
    statuses = columns.pop("status")
    columns["image_bytes"] = image_bytes
    columns["downloaded"] = [
        present and status in (None, _SUCCESS) for present, status in zip(has_image, statuses, strict=True)
    ]
    columns["source"] = sources
    types = {**_RAW_TYPES, "image_bytes": pa.binary(), "downloaded": pa.bool_(), "source": pa.string()}
    table = pa.table({name: pa.array(values, types[name]) for name, values in columns.items()})
    return _with_keys(table, caption_keys)


def _with_keys(raw: pa.Table, caption_keys: bool = False) -> pa.Table:
    """Prepend the `key` column (`schemas.row_key`): sha1 of the URL, else of the image bytes; with
    `caption_keys` (an input of bare prompts, without URL and image columns) sha1 of the caption. Null when the
    row has none of them."""
    urls, images = raw.column("url").to_pylist(), raw.column("image_bytes").to_pylist()
    captions = raw.column("caption").to_pylist() if caption_keys else [None] * raw.num_rows
    keys = [
        row_key(url, data, caption) if url or data is not None or (caption and caption.strip()) else None
        for url, data, caption in zip(urls, images, captions, strict=True)
    ]
    return raw.add_column(0, "key", pa.array(keys, pa.string()))


def _read_parquet(shard: Shard, images: bool) -> pa.Table:
    parquet = _parquet_file(Path(shard.path))
    names = parquet.schema_arrow.names
    # The pre-pass (images=False) reads everything but images, and captions unless they are the rows' keys.
    keyed_by_caption = _resolve(names, "url") is None and _image_column(parquet.schema_arrow) is None
    wanted = [target for target in _RAW_TYPES if images or keyed_by_caption or target != "caption"]
    sources = {target: _resolve(names, target) if target in wanted else None for target in _RAW_TYPES}
    image_column = _image_column(parquet.schema_arrow)
    read = sorted({name for name in sources.values() if name is not None})
    table = _read_rows(parquet, read, shard.row_start, shard.row_stop)
    if image_column is not None and (images or pc.any(pc.is_null(_column(table, sources["url"]))).as_py()):
        # The pre-pass reads image bytes only when a row has no URL to be keyed by.
        image_data = _read_rows(parquet, [image_column], shard.row_start, shard.row_stop).column(0)
    else:
        image_data = pa.nulls(table.num_rows, pa.binary())
    columns = {target: _column(table, sources[target]).cast(dtype) for target, dtype in _RAW_TYPES.items()}
    status = columns.pop("status")
    has_image = (
        pc.is_valid(image_data) if image_column is not None and images else pa.array([True] * table.num_rows)
    )
    columns["image_bytes"] = image_data.cast(pa.binary())
    columns["downloaded"] = pc.and_(pc.fill_null(pc.equal(status, _SUCCESS), True), has_image)
    first = shard.row_start
    columns["source"] = pa.array([f"{shard.path}#{first + i}" for i in range(table.num_rows)], pa.string())
    return _with_keys(pa.table(columns), caption_keys=keyed_by_caption)


def _column(table: pa.Table, name: str | None) -> pa.ChunkedArray:
    return table.column(name) if name is not None else pa.chunked_array([pa.nulls(table.num_rows)])


def _read_rows(parquet: pq.ParquetFile, columns: list[str], start: int, stop: int | None) -> pa.Table:
    """Rows [start, stop) of `columns`, reading only the row groups that overlap the range."""
    metadata = parquet.metadata
    stop = metadata.num_rows if stop is None else stop
    groups, offset, first_row = [], 0, None
    for index in range(metadata.num_row_groups):
        size = metadata.row_group(index).num_rows
        if offset < stop and offset + size > start:
            groups.append(index)
            first_row = offset if first_row is None else first_row
        offset += size
    if not groups:
        return parquet.schema_arrow.empty_table().select(columns)
    table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(start - first_row, stop - start)


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(sample key, {extension: member}) per WebDataset sample; a key is the member path up to the first dot."""
    with tarfile.open(path, "r:") as tar:
        current, members = None, {}
        for member in tar:
            if not member.isfile():
                continue
            directory, _, base = member.name.rpartition("/")
            stem, _, extension = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            if key != current and members:
                yield current, members, tar
                members = {}
            current = key
            members[extension.lower()] = member
        if members:
            yield current, members, tar


def _complete(record: dict[str, Any], load: Callable[[], bytes] | None, images: bool) -> bytes | None:
    """The image bytes of a row-wise sample, read only when needed, and width/height from the image header
    when the metadata has none. The pre-pass (`images` False) needs the bytes only to key a row without URL or
    to size it."""
    unsized = _resolve(list(record), "width") is None
    if load is None or not (images or unsized or _get(record, "url") is None):
        return None
    data = load()
    if unsized:
        record["width"], record["height"] = image_size(data) or (None, None)
    return data


def _sidecar(data: bytes, name: str) -> dict[str, Any]:
    """A sample's ``.json`` metadata; one that is not a JSON object raises `ValueError` naming the file."""
    try:
        record = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{name}: not valid JSON metadata: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{name}: JSON metadata must be an object, got {type(record).__name__}")
    return record


def _read_webdataset(shard: Shard, images: bool) -> pa.Table:
    """A tar that is not one, or is cut short, raises `ValueError` naming it (as `_parquet_file` does)."""
    records, image_data, has_image, sources = [], [], [], []
    try:
        for key, members, tar in _tar_samples(shard.path):
            record: dict[str, Any] = {}
            if "json" in members:
                record.update(_sidecar(tar.extractfile(members["json"]).read(), f"{shard.path}#{key}.json"))
            if "txt" in members:
                record["caption"] = tar.extractfile(members["txt"]).read().decode("utf-8", errors="replace")
            member = next((members[ext] for ext in members if ext in IMAGE_EXTENSIONS), None)
            load = None if member is None else (lambda tar=tar, member=member: tar.extractfile(member).read())
            image_data.append(_complete(record, load, images))
            records.append(record)
            has_image.append(member is not None)
            sources.append(f"{shard.path}#{key}")
    except (OSError, tarfile.TarError) as exc:
        path = Path(shard.path)
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(f"{path}: not a readable tar file ({size} bytes): {exc}") from None
    for record in _failed_downloads(Path(shard.path).with_suffix(".parquet")):
        records.append(record)
        image_data.append(None)
        has_image.append(False)
        sources.append(f"{shard.path}#{record.get('key')}")
    return _from_records(records, image_data, has_image, sources)


def _failed_downloads(metadata: Path) -> list[dict[str, Any]]:
    """The rows of img2dataset's per-shard metadata Parquet (beside a tar or a ``files`` folder) whose download
    failed: they are in no tar and no folder, yet they are input rows, counted as ``not downloaded`` like the
    failed rows of a ``parquet`` output."""
    if not metadata.is_file():
        return []
    parquet = _parquet_file(metadata)
    if _resolve(parquet.schema_arrow.names, "status") is None:
        return []
    table = parquet.read()
    status = table.column(_resolve(table.column_names, "status"))
    failed = table.filter(pc.fill_null(pc.not_equal(status, _SUCCESS), False))
    return [{k: v for k, v in row.items() if v is not None} for row in failed.to_pylist()]


def _read_folder(shard: Shard, images: bool) -> pa.Table:
    root = Path(shard.path)
    records, image_data, sources = [], [], []
    for relative in shard.files:
        file = root / relative
        record: dict[str, Any] = {}
        if (sidecar := file.with_suffix(".json")).is_file():
            record.update(_sidecar(sidecar.read_bytes(), str(sidecar)))
        if (sidecar := file.with_suffix(".txt")).is_file():
            record["caption"] = sidecar.read_text(errors="replace")
        image_data.append(_complete(record, file.read_bytes, images))
        records.append(record)
        sources.append(str(file))
    has_image = [True] * len(records)
    # img2dataset's ``files`` output: ``00000/`` beside ``00000.parquet``. The failed downloads of a sub-folder
    # belong to the shard holding the sub-folder's first file.
    for directory in sorted({PurePosixPath(r).parts[0] for r in shard.files if len(PurePosixPath(r).parts) > 1}):
        if _first_file_of(root, directory) in shard.files:
            for record in _failed_downloads(root / f"{directory}.parquet"):
                records.append(record)
                image_data.append(None)
                has_image.append(False)
                sources.append(str(root / directory / str(record.get("key"))))
    return _from_records(records, image_data, has_image, sources)


def _first_file_of(root: Path, directory: str) -> str | None:
    files = _files(root / directory, IMAGE_EXTENSIONS)
    return str(PurePosixPath(directory) / files[0]) if files else None


def _read_url_list(path: Path) -> pa.Table:
    """A URL list as a table of strings: CSV/TSV with their header, or ``url`` per line of a ``.txt``.

    A list has no footer to read a row range from, so the last one read is kept: counting its rows, the
    de-duplication pre-pass and reading its row-range shards one after the other parse it once, not per shard.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ValueError(f"{path}: not a readable URL list: {exc}") from None
    return _parse_url_list(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _parse_url_list(name: str, size: int, mtime_ns: int) -> pa.Table:
    """`_read_url_list` of one version of a file (`size` and `mtime_ns` only key the cache)."""
    import pyarrow.csv as pacsv

    path = Path(name)
    suffix = path.suffix[1:].lower()
    try:
        if suffix == "txt":
            urls = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            return pa.table({"url": pa.array([u for u in urls if u], pa.string())})
        delimiter = "\t" if suffix == "tsv" else ","
        with path.open(encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader([handle.readline()], delimiter=delimiter), [])
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True
            ),
        )
    except (OSError, pa.ArrowException, UnicodeError) as exc:
        raise ValueError(f"{path}: not a readable URL list: {exc}") from None


def _read_url_rows(shard: Shard) -> pa.Table:
    table = _read_url_list(Path(shard.path))
    stop = table.num_rows if shard.row_stop is None else shard.row_stop
    records = table.slice(shard.row_start, stop - shard.row_start).to_pylist()
    sources = [f"{shard.path}#{shard.row_start + i}" for i in range(len(records))]
    caption_keys = _resolve(table.column_names, "url") is None
    return _from_records(records, [None] * len(records), [True] * len(records), sources, caption_keys)


def _read_raw(shard: Shard, input_format: str, images: bool) -> pa.Table:
    """Normalised columns before filtering: key, url, caption, aesthetic_score, width, height, pwatermark,
    punsafe, image_bytes, downloaded, source. With `images=False` (the de-duplication pre-pass) captions and
    image bytes may be missing."""
    if input_format in ("laion_parquet", "img2dataset_parquet"):
        return _read_parquet(shard, images)
    if input_format == "webdataset":
        return _read_webdataset(shard, images)
    if input_format == "folder":
        return _read_folder(shard, images)
    if input_format == "url_list":
        return _read_url_rows(shard)
    raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")


def read_shard(
    shard: Shard, input_format: str, filters: IngestFilters = IngestFilters()
) -> tuple[pa.Table, FilterCounts]:
    """The rows of one shard (columns of `INGEST_SCHEMA`) that pass `filters`, and what was removed why.

    With `filters.dedupe_urls` the shard must come from `list_shards` with the same `filters`.
    """
    if filters.dedupe_urls and shard.planned_with != filters:
        raise ValueError(
            f"shard {shard.name}: de-duplication was planned for {shard.planned_with}, not for {filters}; "
            "pass the same filters to list_shards"
        )
    return _apply_filters(_read_raw(shard, input_format, images=True), filters, shard.drop_keys)


# ---------------------------------------------------------------------------------------------------- Ray Data


class _CountsStore:
    def __init__(self) -> None:
        self.by_shard: dict[str, FilterCounts] = {}

    def add(self, shard_name: str, counts: FilterCounts) -> None:
        self.by_shard[shard_name] = counts

    def total(self) -> FilterCounts:
        return sum(self.by_shard.values(), FilterCounts())


class FilterCountsCollector:
    """Gathers the `FilterCounts` of the shards read by `read_dataset` (a small Ray actor).

    Counts are stored per shard name, so a retried read task does not count twice. Read `counts()` after the
    dataset has been consumed.
    """

    def __init__(self) -> None:
        import ray

        self._store = ray.remote(num_cpus=0)(_CountsStore).remote()

    def add(self, shard_name: str, counts: FilterCounts) -> None:
        import ray

        ray.get(self._store.add.remote(shard_name, counts))

    def counts(self) -> FilterCounts:
        import ray

        return ray.get(self._store.total.remote())


def read_dataset(
    path: str | Path,
    input_format: str | None = None,
    filters: IngestFilters = IngestFilters(),
    *,
    files_per_shard: int = 256,
    rows_per_shard: int = 10_000,
    collector: FilterCountsCollector | None = None,
) -> ray.data.Dataset:
    """A Ray Dataset of the input's rows (`INGEST_SCHEMA`), one read task per shard.

    The shard list and the de-duplication pre-pass run here, on the driver; `collector` (optional) receives
    each shard's `FilterCounts`.
    """
    import ray

    input_format = input_format or detect_format(path)
    shards = list_shards(path, input_format, files_per_shard, rows_per_shard, filters)

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        tables = []
        for index in batch["shard"]:
            shard = shards[int(index)]
            table, counts = read_shard(shard, input_format, filters)
            if collector is not None:
                collector.add(shard.name, counts)
            tables.append(table)
        return pa.concat_tables(tables)

    items = [{"shard": i} for i in range(len(shards))]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(read, batch_size=1)
