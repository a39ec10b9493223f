"""Planning a read, on the driver: cut an input into shards (`list_shards`) and plan the de-duplication
across them (`plan_dedupe`).

De-duplication is by `key` (sha1 of the URL, or of the image bytes when a row has no URL) across the whole
input, and keeps the first row, in shard order, among the rows that pass the other filters. `list_shards` makes
a cheap pre-pass over all shards for it (for Parquet only the URL, status and numeric filter columns are read;
no image is decoded) and gives each shard the keys already taken by an earlier shard (`Shard.drop_keys`);
within a shard the first occurrence wins. The pre-pass holds every key once in memory on the driver (about
100 bytes per row: 60 MB for the 625k rows of LAION-Aesthetics 6.5+).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

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


def plan_dedupe(shards: Sequence[Shard], input_format: str, filters: IngestFilters) -> list[Shard]:
    """Fill each shard's `drop_keys`: keys of rows passing `filters` whose first such row is in an earlier shard.

    A pre-pass without image decoding; rows that the other filters remove never take a key. A shard's keys
    depend only on the shards before it, and a capped shard (`limit_rows`) gets those of the whole shard, so
    that a shard's plan does not depend on where a ``--limit`` fell.
    """
    owner: dict[str, int] = {}
    drops: list[set[str]] = [set() for _ in shards]
    without_dedupe = replace(filters, dedupe_urls=False)
    for index, shard in enumerate(shards):
        raw = _read_raw(replace(shard, row_limit=None), input_format, images=False)
        kept, _ = _apply_filters(raw, without_dedupe, frozenset())
        for key in kept.column("key").to_pylist():
            if owner.setdefault(key, index) != index:
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
