"""Planning a read, on the driver: cut an input into shards (`list_shards`) and plan the de-duplication
across them (`plan_dedupe`).

De-duplication is by `key` (sha1 of the URL, or of the image bytes when a row has no URL) across the whole
input, and keeps the first row, in shard order, among the rows that pass the other filters. `plan_dedupe` is a
map-reduce over the shards, without image decoding: each shard's kept keys are read (for Parquet only the URL,
status and numeric filter columns) and split into buckets by a hash of the key; each bucket then finds its keys
that an earlier shard already holds. Each shard gets those keys (`Shard.drop_keys`); within a shard the first
occurrence wins. When Ray is running, the reads and the buckets are Ray tasks and the driver receives only the
duplicate keys, so that its memory does not grow with the input; otherwise both run in-process, holding every
key once as Arrow strings (about 50 bytes per row).
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.ingest.filters import _DEFAULT_FILTERS, IngestFilters, _apply_filters
from pipelines.ingest.formats import (
    IMAGE_EXTENSIONS,
    INPUT_FORMATS,
    URL_LIST_SUFFIXES,
    _list_input_files,
    _open_parquet,
    detect_format,
)
from pipelines.ingest.readers import _read_raw, _read_url_list
from pipelines.ingest.shards import Shard


def _content_id(root: Path, relatives: Sequence[str], extra: str = "") -> str:
    """sha1 of the files' relative paths and sizes (plus `extra`, e.g. a row range): cheap, and it changes
    when img2dataset adds to or rewrites a shard."""
    digest = hashlib.sha1(extra.encode())
    for relative in relatives:
        path = root / relative
        size = path.stat().st_size if path.exists() else -1
        digest.update(f"{relative}\0{size}\0".encode())
    return digest.hexdigest()


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(relative: PurePosixPath) -> str:
    """A filesystem-safe name from a relative path: ``a/b c.parquet`` -> ``a-b_c``."""
    text = "-".join(relative.with_suffix("").parts)
    return _UNSAFE_NAME_CHARS.sub("_", text).strip("._-") or "shard"


def _disambiguate_names(shards: list[Shard], sources: list[str]) -> list[Shard]:
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
    filters: IngestFilters = _DEFAULT_FILTERS,
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
        root, files = _list_input_files(path, IMAGE_EXTENSIONS)
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
        root, files = _list_input_files(path, frozenset({"tar"}))
        shards = [Shard(str(root / f), _slug(f), content_id=_content_id(root, [str(f)])) for f in files]
        sources = [str(f) for f in files]
    else:
        suffixes = URL_LIST_SUFFIXES if input_format == "url_list" else frozenset({"parquet"})
        root, files = _list_input_files(path, suffixes)
        shards, sources = [], []
        for f in files:
            if input_format == "url_list":
                rows = _read_url_list(root / f).num_rows
            else:
                rows = _open_parquet(root / f).metadata.num_rows
            parts = max(1, math.ceil(rows / rows_per_shard))
            for part in range(parts):
                name = _slug(f) if parts == 1 else f"{_slug(f)}-{part:05d}"
                start, stop = part * rows_per_shard, min(rows, (part + 1) * rows_per_shard)
                content_id = _content_id(root, [str(f)], f"{start}:{stop}")
                shards.append(Shard(str(root / f), name, row_start=start, row_stop=stop, content_id=content_id))
                sources.append(f"{f}#{part}")
    if not shards:
        raise ValueError(f"input {path}: no {input_format} shards found")
    shards = _disambiguate_names(shards, sources)
    return plan_dedupe(shards, input_format, filters) if filters.dedupe_urls else shards


# Keys per de-duplication bucket, at most: the size of one reduce step.
_KEYS_PER_BUCKET = 1_000_000


def _bucket_count(shards: int, rows_per_shard: int = 10_000) -> int:
    """Buckets for `shards` shards: one per `_KEYS_PER_BUCKET` keys of the expected input, 2 to 256 (a Ray task
    with two or more return values returns them as separate objects)."""
    return max(2, min(256, math.ceil(shards * rows_per_shard / _KEYS_PER_BUCKET)))


def shard_key_buckets(shard: Shard, input_format: str, filters: IngestFilters, buckets: int) -> list[pa.Array]:
    """The map step: the distinct keys of `shard`'s rows that pass `filters` (de-duplication aside), split into
    `buckets` arrays by the key's crc32. The whole shard counts, not only its first `row_limit` rows, so that a
    shard's plan does not depend on where a ``--limit`` fell."""
    raw = _read_raw(replace(shard, row_limit=None), input_format, images=False)
    kept, _ = _apply_filters(raw, replace(filters, dedupe_urls=False), frozenset())
    keys = pc.unique(kept.column("key").combine_chunks())
    bucket = np.fromiter((zlib.crc32(key.encode()) % buckets for key in keys.to_pylist()), np.int64, len(keys))
    return [keys.filter(pa.array(bucket == b)) for b in range(buckets)]


def bucket_duplicates(*shard_keys: pa.Array) -> pa.Table:
    """The reduce step over one bucket, given each shard's keys in shard order: (`shard`, `key`) for every key
    that an earlier shard holds too."""
    table = pa.table(
        {
            "key": pa.concat_arrays([keys.cast(pa.string()) for keys in shard_keys]),
            "shard": np.repeat(np.arange(len(shard_keys), dtype=np.int32), [len(keys) for keys in shard_keys]),
        }
    ).sort_by([("key", "ascending"), ("shard", "ascending")])
    key = table.column("key").combine_chunks()
    if len(key) < 2:
        return table.slice(0, 0)
    repeated = np.concatenate([[False], pc.equal(key.slice(1), key.slice(0, len(key) - 1)).to_numpy(zero_copy_only=False)])
    return table.filter(pa.array(repeated))


def _ray_if_running() -> Any:
    """The `ray` module when this process has started or joined Ray, else None (without importing Ray)."""
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def plan_dedupe(shards: Sequence[Shard], input_format: str, filters: IngestFilters) -> list[Shard]:
    """Fill each shard's `drop_keys`: keys of rows passing `filters` whose first such row is in an earlier shard.

    A map-reduce without image decoding (`shard_key_buckets`, `bucket_duplicates`), as Ray tasks when Ray is
    running. Rows that the other filters remove never take a key. A shard's keys depend only on the shards
    before it.
    """
    buckets = _bucket_count(len(shards))
    ray = _ray_if_running()
    if ray is None:
        mapped = [shard_key_buckets(shard, input_format, filters, buckets) for shard in shards]
        duplicates = [bucket_duplicates(*(keys[b] for keys in mapped)) for b in range(buckets)]
    else:
        read = ray.remote(num_returns=buckets)(shard_key_buckets)
        mapped = [read.remote(shard, input_format, filters, buckets) for shard in shards]
        reduce = ray.remote(bucket_duplicates)
        try:
            duplicates = ray.get([reduce.remote(*(keys[b] for keys in mapped)) for b in range(buckets)])
        except ray.exceptions.RayTaskError as exc:  # an unreadable shard: its own error, not Ray's traceback
            raise exc.cause from None
    drops: list[set[str]] = [set() for _ in shards]
    for table in duplicates:
        for key, index in zip(table.column("key").to_pylist(), table.column("shard").to_pylist(), strict=True):
            drops[index].add(key)
    return [
        replace(shard, drop_keys=frozenset(keys), planned_with=filters)
        for shard, keys in zip(shards, drops, strict=True)
    ]


def limit_rows(shards: Sequence[Shard], input_format: str, limit: int) -> list[Shard]:
    """The shards that hold the input's first `limit` rows, in input order, counted before the filters: whole
    shards while their rows fit, then the shard where the limit falls with a `Shard.row_limit`; none after it.

    A row range's size is known; a tar's or a folder chunk's is counted by reading it without images, at most
    one row past what is left of the limit. A shard that cannot be read is capped at what is left (its read
    error is reported when it is written), so that a run never holds more than `limit` input rows.
    """
    kept: list[Shard] = []
    left = limit
    for shard in shards:
        if left <= 0:
            break
        if input_format not in ("folder", "webdataset") and shard.row_stop is not None:
            size = shard.row_stop - shard.row_start
        else:
            try:
                size = _read_raw(replace(shard, row_limit=left + 1), input_format, images=False).num_rows
            except (OSError, ValueError):
                size = left + 1
        kept.append(shard if size <= left else replace(shard, row_limit=left))
        left -= size
    return kept
