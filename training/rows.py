"""The rows of a dataset split: finding and reading them, and whether each can train.

A row is skipped, never fatal, when its image is missing, or its scene graph is null, empty or invalid
(`row_problem`; whether the image decodes is checked where it is decoded, in `RowCollator.decode`, where the pixels
are made anyway). Rows whose annotation the pipeline marked ``failed`` are skipped too (`ANNOTATION_FAILED`) but
are expected, not faults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas import SceneGraph, scene_graph_from_arrow
from schemas.layout import find_split_files

__all__ = ["ANNOTATION_FAILED", "find_splits", "read_rows", "row_problem", "scene_graph_of", "usable"]

# The reason given for rows the annotation pipeline marked failed: skipped, but expected (not counted as bad).
ANNOTATION_FAILED = "annotation failed"


def scene_graph_of(row: Mapping[str, Any]) -> SceneGraph | None:
    """The row's graph (the nested `scene_graph` column), or None."""
    return scene_graph_from_arrow(row.get("scene_graph"))


def _key_of(row: Mapping[str, Any]) -> str:
    key = row.get("key")
    return "<no key>" if key is None or key == "" else str(key)


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a row cannot train, judged from its columns without decoding the image; None when it may.

    `ANNOTATION_FAILED` for rows whose annotation failed; otherwise a missing image (no bytes and no path), a null,
    unreadable, empty (no objects) or invalid scene graph. Graphs without relations are kept (isolated objects
    are nodes too); LAION-SG's loader dropped them. Whether the image decodes is checked where it is decoded
    (`RowCollator.decode`).
    """
    annotation = row.get("annotation") or {}
    if annotation.get("status") == "failed":
        return ANNOTATION_FAILED
    image = row.get("image") or {}
    if not (image.get("bytes") or image.get("path")):
        return "no image (bytes and path are both empty)"
    try:
        graph = scene_graph_of(row)
    except Exception as exc:  # a malformed struct (null ids or names) from a foreign writer
        return f"unreadable scene graph ({_error(exc)})"
    if graph is None:
        return "no scene graph"
    if not graph.objects:
        return "empty scene graph (no objects)"
    if problems := graph.problems():
        return f"invalid scene graph: {problems[0]}"
    return None


def usable(row: Mapping[str, Any]) -> bool:
    """A row trains if its annotation did not fail, it has an image and a valid graph with at least one object
    (`row_problem` is None; the image may still fail to decode)."""
    return row_problem(row) is None


def find_splits(root: str | Path) -> dict[str, list[Path]]:
    """``{"train": [files], "val": [files]}``: the train and validation splits of the Parquet files under `root`,
    found by `schemas.layout.find_split_files` (``data/train-*.parquet``, ``train/``, ``validation/``, ``val/``,
    ...); a ``test`` split is never used. When no file carries a split name, every file is training data and
    there is no validation split."""
    splits = find_split_files(root)
    if "train" not in splits:
        raise FileNotFoundError(f"{root} has split-named Parquet files but none of the train split")
    return {"train": splits["train"], **({"val": splits["validation"]} if "validation" in splits else {})}


def read_rows(files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """All rows of the given Parquet files, in order (for training without Ray)."""
    import pyarrow.parquet as pq

    return [row for f in files for row in pq.read_table(f).to_pylist()]


def _error(exc: BaseException) -> str:
    """``Type: message``, without object addresses (PIL names ``<_io.BytesIO object at 0x...>``)."""
    return f"{type(exc).__name__}: " + re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<image bytes>", str(exc))
