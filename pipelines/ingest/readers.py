"""Reading one shard: per input format, its rows as a raw table of normalised columns with a stable key, then
the filters (`read_shard`).

A row's `key` is `schemas.row_key`: the sha1 of its URL, or of its image bytes when it has no URL (of its
caption for an input of bare prompts). The de-duplication pre-pass (`pipelines.ingest.planning.plan_dedupe`)
reads the same raw tables without `images`: for Parquet only the URL, status and numeric filter columns are
read, and no image is decoded.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.images import image_size
from pipelines.ingest.columns import _DOWNLOAD_SUCCESS, _RAW_TYPES, _record_value, _source_name
from pipelines.ingest.filters import _DEFAULT_FILTERS, FilterCounts, IngestFilters, _apply_filters
from pipelines.ingest.formats import (
    IMAGE_EXTENSIONS,
    INPUT_FORMATS,
    _files_under,
    _open_parquet,
    _parquet_image_column,
)
from pipelines.ingest.shards import Shard
from schemas import row_key


def _finite_number(value: Any, kind: type) -> Any:
    """A float/int from JSON metadata (numbers or numeric strings); None when absent or not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(number) else kind(number)


def _table_from_records(
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
            value = _record_value(record, target)
            if pa.types.is_floating(dtype):
                value = _finite_number(value, float)
            elif pa.types.is_integer(dtype):
                value = _finite_number(value, int)
            elif value is not None:
                value = str(value)
            values.append(value)
        columns[target] = values
    statuses = columns.pop("status")
    columns["image_bytes"] = image_bytes
    columns["downloaded"] = [
        present and status in (None, _DOWNLOAD_SUCCESS)
        for present, status in zip(has_image, statuses, strict=True)
    ]
    columns["source"] = sources
    types = {**_RAW_TYPES, "image_bytes": pa.binary(), "downloaded": pa.bool_(), "source": pa.string()}
    table = pa.table({name: pa.array(values, types[name]) for name, values in columns.items()})
    return _prepend_keys(table, caption_keys)


def _prepend_keys(raw: pa.Table, caption_keys: bool = False) -> pa.Table:
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
    parquet = _open_parquet(Path(shard.path))
    names = parquet.schema_arrow.names
    image_column = _parquet_image_column(parquet.schema_arrow)
    # The pre-pass (images=False) reads everything but images, and captions unless they are the rows' keys.
    keyed_by_caption = _source_name(names, "url") is None and image_column is None
    wanted = [target for target in _RAW_TYPES if images or keyed_by_caption or target != "caption"]
    sources = {target: _source_name(names, target) if target in wanted else None for target in _RAW_TYPES}
    read = sorted({name for name in sources.values() if name is not None})
    table = _read_row_range(parquet, read, shard.row_start, shard.row_stop)
    if image_column is not None and (
        images or pc.any(pc.is_null(_column_or_nulls(table, sources["url"]))).as_py()
    ):
        # The pre-pass reads image bytes only when a row has no URL to be keyed by.
        image_data = _read_row_range(parquet, [image_column], shard.row_start, shard.row_stop).column(0)
    else:
        image_data = pa.nulls(table.num_rows, pa.binary())
    columns = {
        target: _column_or_nulls(table, sources[target]).cast(dtype) for target, dtype in _RAW_TYPES.items()
    }
    status = columns.pop("status")
    has_image = (
        pc.is_valid(image_data) if image_column is not None and images else pa.array([True] * table.num_rows)
    )
    columns["image_bytes"] = image_data.cast(pa.binary())
    columns["downloaded"] = pc.and_(pc.fill_null(pc.equal(status, _DOWNLOAD_SUCCESS), True), has_image)
    first = shard.row_start
    columns["source"] = pa.array([f"{shard.path}#{first + i}" for i in range(table.num_rows)], pa.string())
    return _prepend_keys(pa.table(columns), caption_keys=keyed_by_caption)


def _column_or_nulls(table: pa.Table, name: str | None) -> pa.ChunkedArray:
    return table.column(name) if name is not None else pa.chunked_array([pa.nulls(table.num_rows)])


def _read_row_range(parquet: pq.ParquetFile, columns: list[str], start: int, stop: int | None) -> pa.Table:
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


def _load_sample_image(
    record: dict[str, Any], load: Callable[[], bytes] | None, images: bool
) -> bytes | None:
    """The image bytes of a row-wise sample, read only when needed, and width/height from the image header
    when the metadata has none. The pre-pass (`images` False) needs the bytes only to key a row without URL or
    to size it."""
    unsized = _source_name(list(record), "width") is None
    if load is None or not (images or unsized or _record_value(record, "url") is None):
        return None
    data = load()
    if unsized:
        record["width"], record["height"] = image_size(data) or (None, None)
    return data


def _parse_json_sidecar(data: bytes, name: str) -> dict[str, Any]:
    """A sample's ``.json`` metadata; one that is not a JSON object raises `ValueError` naming the file."""
    try:
        record = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{name}: not valid JSON metadata: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{name}: JSON metadata must be an object, got {type(record).__name__}")
    return record


def _read_webdataset(shard: Shard, images: bool) -> pa.Table:
    """A tar that is not one, or is cut short, raises `ValueError` naming it (as `_open_parquet` does)."""
    records, image_data, has_image, sources = [], [], [], []
    try:
        for key, members, tar in _tar_samples(shard.path):
            if shard.row_limit is not None and len(records) >= shard.row_limit:
                break  # the rest is past the shard's cap (`_read_raw` cuts the failed downloads after it)
            record: dict[str, Any] = {}
            if "json" in members:
                metadata = tar.extractfile(members["json"]).read()
                record.update(_parse_json_sidecar(metadata, f"{shard.path}#{key}.json"))
            if "txt" in members:
                record["caption"] = tar.extractfile(members["txt"]).read().decode("utf-8", errors="replace")
            member = next((members[ext] for ext in members if ext in IMAGE_EXTENSIONS), None)
            load = None if member is None else (lambda tar=tar, member=member: tar.extractfile(member).read())
            image_data.append(_load_sample_image(record, load, images))
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
    return _table_from_records(records, image_data, has_image, sources)


def _failed_downloads(metadata: Path) -> list[dict[str, Any]]:
    """The rows of img2dataset's per-shard metadata Parquet (beside a tar or a ``files`` folder) whose download
    failed: they are in no tar and no folder, yet they are input rows, counted as ``not downloaded`` like the
    failed rows of a ``parquet`` output."""
    if not metadata.is_file():
        return []
    parquet = _open_parquet(metadata)
    if _source_name(parquet.schema_arrow.names, "status") is None:
        return []
    table = parquet.read()
    status = table.column(_source_name(table.column_names, "status"))
    failed = table.filter(pc.fill_null(pc.not_equal(status, _DOWNLOAD_SUCCESS), False))
    return [{k: v for k, v in row.items() if v is not None} for row in failed.to_pylist()]


def _read_folder(shard: Shard, images: bool) -> pa.Table:
    root = Path(shard.path)
    records, image_data, sources = [], [], []
    for relative in shard.files:
        file = root / relative
        record: dict[str, Any] = {}
        if (sidecar := file.with_suffix(".json")).is_file():
            record.update(_parse_json_sidecar(sidecar.read_bytes(), str(sidecar)))
        if (sidecar := file.with_suffix(".txt")).is_file():
            record["caption"] = sidecar.read_text(errors="replace")
        image_data.append(_load_sample_image(record, file.read_bytes, images))
        records.append(record)
        sources.append(str(file))
    has_image = [True] * len(records)
    # img2dataset's ``files`` output: ``00000/`` beside ``00000.parquet``. The failed downloads of a sub-folder
    # belong to the shard holding the sub-folder's first file.
    for directory in sorted({PurePosixPath(r).parts[0] for r in shard.files if len(PurePosixPath(r).parts) > 1}):
        if _first_image_of(root, directory) in shard.files:
            for record in _failed_downloads(root / f"{directory}.parquet"):
                records.append(record)
                image_data.append(None)
                has_image.append(False)
                sources.append(str(root / directory / str(record.get("key"))))
    return _table_from_records(records, image_data, has_image, sources)


def _first_image_of(root: Path, directory: str) -> str | None:
    files = _files_under(root / directory, IMAGE_EXTENSIONS)
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


def _read_url_list_rows(shard: Shard) -> pa.Table:
    table = _read_url_list(Path(shard.path))
    stop = table.num_rows if shard.row_stop is None else shard.row_stop
    records = table.slice(shard.row_start, stop - shard.row_start).to_pylist()
    sources = [f"{shard.path}#{shard.row_start + i}" for i in range(len(records))]
    caption_keys = _source_name(table.column_names, "url") is None
    return _table_from_records(records, [None] * len(records), [True] * len(records), sources, caption_keys)


def _read_raw(shard: Shard, input_format: str, images: bool) -> pa.Table:
    """Normalised columns before filtering: key, url, caption, aesthetic_score, width, height, pwatermark,
    punsafe, image_bytes, downloaded, source. With `images=False` (the de-duplication pre-pass) captions and
    image bytes may be missing.

    A shard's `row_limit` keeps its first rows in input order (a tar's samples, a folder's files, then their
    failed downloads; a row range's rows); the readers stop early where they can, and the cut is made here."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")
    limit = shard.row_limit
    # The files, or the rows of a row range, past the cap are not read.
    if limit is not None and input_format == "folder":
        shard = replace(shard, files=shard.files[:limit])
    elif limit is not None and input_format != "webdataset":
        stop = shard.row_start + limit
        shard = replace(shard, row_stop=stop if shard.row_stop is None else min(stop, shard.row_stop))
    if input_format in ("laion_parquet", "img2dataset_parquet"):
        raw = _read_parquet(shard, images)
    elif input_format == "webdataset":
        raw = _read_webdataset(shard, images)
    elif input_format == "folder":
        raw = _read_folder(shard, images)
    else:
        raw = _read_url_list_rows(shard)
    return raw if limit is None else raw.slice(0, limit)


def read_shard(
    shard: Shard, input_format: str, filters: IngestFilters = _DEFAULT_FILTERS
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

