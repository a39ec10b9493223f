"""The input formats: their names, the columns every format is read into, how to tell them apart, their files.

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
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.ingest.columns import _source_name
from schemas import UPSTREAM_FIELDS

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


def _is_visible(relative: PurePosixPath) -> bool:
    return not any(part.startswith((".", "_")) for part in relative.parts)


def _files_under(root: Path, suffixes: frozenset[str]) -> list[PurePosixPath]:
    """Files under `root` with one of `suffixes` (lower-case, no dot), relative, sorted, hidden ones skipped."""
    found = []
    for path in root.rglob("*"):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and _is_visible(relative) and path.suffix[1:].lower() in suffixes:
            found.append(relative)
    return sorted(found)


def _list_input_files(path: Path, suffixes: frozenset[str]) -> tuple[Path, list[PurePosixPath]]:
    """(root, files relative to it) for a directory or a single file."""
    if path.is_dir():
        return path, _files_under(path, suffixes)
    return path.parent, [PurePosixPath(path.name)]


def _parquet_image_column(schema: pa.Schema) -> str | None:
    """The binary image column of an img2dataset Parquet (one of `IMAGE_COLUMNS`), or None."""
    for name in IMAGE_COLUMNS:
        if name in schema.names:
            dtype = schema.field(name).type
            if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype):
                return name
    return None


def _open_parquet(path: Path) -> pq.ParquetFile:
    """Open a Parquet file; a file that is not Parquet (0 bytes, truncated, another format) raises `ValueError`
    naming it."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(f"{path}: not a readable Parquet file ({size} bytes): {exc}") from None


def _parquet_format(path: Path) -> str:
    """``img2dataset_parquet`` or ``laion_parquet`` for one Parquet file, from its columns."""
    schema = _open_parquet(path).schema_arrow
    if _parquet_image_column(schema) is not None:
        return "img2dataset_parquet"
    if _source_name(schema.names, "url") is not None or _source_name(schema.names, "caption") is not None:
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
            return _parquet_format(path)
        if suffix in URL_LIST_SUFFIXES:
            return "url_list"
        raise ValueError(f"input {path}: expected a directory, a .parquet, .tar, .csv, .tsv or .txt file")
    if _files_under(path, frozenset({"tar"})):
        return "webdataset"
    parquets = _files_under(path, frozenset({"parquet"}))
    if parquets and _parquet_format(path / parquets[0]) == "img2dataset_parquet":
        return "img2dataset_parquet"
    if _files_under(path, IMAGE_EXTENSIONS):
        return "folder"
    if parquets:
        return "laion_parquet"
    if _files_under(path, URL_LIST_SUFFIXES):
        return "url_list"
    raise ValueError(
        f"input {path}: no .tar shards, .parquet files or images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found"
    )
