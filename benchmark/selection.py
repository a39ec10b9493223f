"""Which rows make a CompSG-Bench set: from an exported split (enough relations, a usable annotation, a reference
image, prompt text), or from a text-only annotate output for a reference-free set. Each function returns the rows
and the counts of what it left out, or raises `BenchmarkSelectionError` saying what it read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas import scene_graph_from_arrow
from schemas.layout import find_split_files

__all__ = ["BenchmarkSelectionError", "reference_free_rows", "reference_rows", "split_files"]

SELECTION_RULE = "rows of split {split} with at least {min_relations} relations, annotation not failed, with an image"
PROMPT_RULE = "prompt text from column {column!r}; rows where it is empty are skipped"
REFERENCE_FREE_RULE = (
    "rows of a text-only annotate output with an ok or repaired annotation and a graph of at least one object "
    "and {min_relations} relations; no reference images"
)


class BenchmarkSelectionError(ValueError):
    """The input cannot give a benchmark set (missing split or column, no row passing the selection)."""


def split_files(source: str | Path, split: str) -> list[str]:
    """The Parquet files of `split` under an exported dataset directory (`schemas.layout.find_split_files`:
    ``data/test-00000-of-00001.parquet``, ``test/*.parquet``, ``test.parquet``, ...), or `source` itself if a file."""
    path = Path(source)
    if path.is_file():
        return [str(path)]
    splits = find_split_files(path)
    if split not in splits:
        raise BenchmarkSelectionError(f"no {split!r} split under {path}; found splits: {', '.join(sorted(splits))}")
    return [str(f) for f in splits[split]]


def _eligible(files: Sequence[str], min_relations: int) -> tuple[list[str], dict[str, int]]:
    """Keys of rows with enough relations and a usable annotation, plus counts of what was excluded (and
    ``max_relations``, the most relations of any row read, or None when no row was read)."""
    import pyarrow.dataset as pads  # imports pandas (~0.4 s): only where a set is built, not in the actors

    dataset = pads.dataset(list(files), format="parquet")
    columns = ["key", "scene_graph"] + (["annotation"] if "annotation" in dataset.schema.names else [])
    table = dataset.to_table(columns=columns)
    relations = pc.list_value_length(pc.struct_field(table["scene_graph"], "relations")).fill_null(0)
    enough = pc.greater_equal(relations, min_relations)
    if "annotation" in table.column_names:
        failed = pc.equal(pc.struct_field(table["annotation"], "status"), "failed").fill_null(False)
    else:
        failed = pa.array([False] * table.num_rows)
    keys = table["key"].filter(pc.and_(enough, pc.invert(failed))).to_pylist()
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys among the selected rows; keys must be unique")
    counts = {
        "split_rows": table.num_rows,
        "max_relations": pc.max(relations).as_py(),
        "failed_annotation": pc.sum(failed.cast(pa.int64())).as_py() or 0,
        "too_few_relations": table.num_rows - (pc.sum(enough.cast(pa.int64())).as_py() or 0),
    }
    return keys, counts


def _prompt_texts(prompts: str | Path, column: str) -> dict[str, str | None]:
    """Key -> `column` of an annotate output (``data/*.parquet`` under a directory, or one Parquet file)."""
    import pyarrow.dataset as pads

    path = Path(prompts)
    files = sorted((path / "data").glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise BenchmarkSelectionError(f"--prompts {path}: no data/*.parquet files (an annotate output directory?)")
    dataset = pads.dataset([str(f) for f in files], format="parquet")
    if column not in dataset.schema.names:
        raise BenchmarkSelectionError(
            f"--prompts {path} has no {column!r} column; its columns: {', '.join(dataset.schema.names)}"
        )
    table = dataset.to_table(columns=["key", column])
    return dict(zip(table["key"].to_pylist(), table[column].to_pylist(), strict=True))


def _cell_bytes(cell: dict[str, Any] | None, base: Path) -> bytes | None:
    """The bytes of a `datasets` Image cell (``{"bytes", "path"}``): its bytes, else its file (relative to `base`)."""
    if not cell:
        return None
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path") and (base / cell["path"]).is_file():
        return (base / cell["path"]).read_bytes()
    return None


def _annotate_files(source: str | Path, flag: str) -> list[str]:
    """The Parquet files of an annotate output: its ``data/*.parquet``, or `source` itself if a file."""
    path = Path(source)
    if path.is_file():
        return [str(path)]
    files = sorted((path / "data").glob("*.parquet")) if path.is_dir() else []
    if not files:
        raise BenchmarkSelectionError(f"{flag} {path}: no data/*.parquet files (an annotate output directory?)")
    return [str(f) for f in files]


def reference_free_rows(
    source: str | Path, min_relations: int, caption_column: str, prompts: str | Path | None
) -> tuple[list[str], list[dict[str, Any]], dict[str, int]]:
    """The files read, the rows (``image`` null) and the counts of a reference-free set from a text-only
    annotate output (e.g. the ``text_to_graph`` task's): rows with an ok or repaired annotation and a graph of at
    least one object and `min_relations` relations, and text in `caption_column` (or `prompts`' one)."""
    import pyarrow.dataset as pads

    files = _annotate_files(source, "--input")
    dataset = pads.dataset(files, format="parquet")
    joined = None if prompts is None else _prompt_texts(prompts, caption_column)
    needed = ["key", "scene_graph", "annotation"] + ([caption_column] if joined is None else [])
    if missing := [c for c in needed if c not in dataset.schema.names]:
        raise BenchmarkSelectionError(
            f"{source} has no {', '.join(map(repr, missing))} column (a text_to_graph annotate output?); "
            f"its columns: {', '.join(dataset.schema.names)}"
        )
    columns = list(dict.fromkeys([*needed, "sg_text"] if "sg_text" in dataset.schema.names else needed))
    counts = {"rows": 0, "failed_annotation": 0, "no_graph": 0, "too_few_relations": 0, "no_prompt": 0}
    rows, seen = [], set()
    for row in dataset.to_table(columns=columns).to_pylist():
        counts["rows"] += 1
        if (row["annotation"] or {}).get("status") not in ("ok", "repaired"):
            counts["failed_annotation"] += 1
            continue
        graph = None if row["scene_graph"] is None else scene_graph_from_arrow(row["scene_graph"])
        if graph is None or not graph.objects:
            counts["no_graph"] += 1
            continue
        if len(graph.relations) < min_relations:
            counts["too_few_relations"] += 1
            continue
        text = joined.get(row["key"]) if joined is not None else row[caption_column]
        if not (text and text.strip()):
            counts["no_prompt"] += 1
            continue
        if row["key"] in seen:
            raise ValueError("duplicate keys among the selected rows; keys must be unique")
        seen.add(row["key"])
        rows.append(
            {
                "key": row["key"],
                "caption": text,
                "scene_graph": graph.to_dict(),
                "sg_text": row.get("sg_text") or graph.to_text(),
                "image": None,
            }
        )
    if not rows:
        raise BenchmarkSelectionError(
            f"no row of {source} qualifies for a reference-free benchmark (an ok or repaired annotation, a graph "
            f"with an object and at least {min_relations} relations, text in column {caption_column!r}): "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
    counts["eligible"] = len(rows)
    return files, rows, counts


def reference_rows(
    source: str | Path, split: str, min_relations: int, caption_column: str, prompts: str | Path | None
) -> tuple[list[str], list[dict[str, Any]], dict[str, int], bool]:
    """The files read, the rows and the counts of a set with reference images from an exported `split`, and
    whether its prompt text had to be non-empty (another column than ``caption``, or `prompts`' text joined by
    key; an empty ``caption`` is kept as ``""`` as in the original sets)."""
    import pyarrow.dataset as pads  # imports pandas (~0.4 s): only where a set is built, not in the actors

    files = split_files(source, split)
    dataset = pads.dataset(files, format="parquet")
    if "image" not in dataset.schema.names:
        raise BenchmarkSelectionError(
            f"{source} has no image column: the benchmark needs the reference images; export with images "
            "(or freeze a set without references: --reference-free)"
        )
    joined = None if prompts is None else _prompt_texts(prompts, caption_column)
    if joined is None and caption_column not in dataset.schema.names:
        raise BenchmarkSelectionError(
            f"{source} has no {caption_column!r} column for the prompt text (--caption-column); "
            f"its columns: {', '.join(dataset.schema.names)}"
        )
    needs_text = caption_column != "caption" or joined is not None
    keys, counts = _eligible(files, min_relations)
    max_relations = counts.pop("max_relations")
    if not keys:
        raise BenchmarkSelectionError(
            f"no row of split {split!r} under {source} has at least {min_relations} relations (--min-relations) "
            f"and a usable annotation: read {counts['split_rows']} rows, the most relations in any row is "
            f"{max_relations if max_relations is not None else 'none (no rows)'}, "
            f"{counts['failed_annotation']} rows have a failed annotation"
        )
    table = dataset.to_table(
        columns=list(dict.fromkeys(["key", "caption" if joined is not None else caption_column, "scene_graph", "sg_text", "image"])),
        filter=pc.field("key").isin(pa.array(keys, pa.string())),
    )
    base = Path(source) if Path(source).is_dir() else Path(source).parent
    rows = []
    counts |= {"no_image": 0, "no_prompt": 0} if needs_text else {"no_image": 0}
    for row in table.to_pylist():
        image = _cell_bytes(row["image"], base)
        if image is None:
            counts["no_image"] += 1
            continue
        text = joined.get(row["key"]) if joined is not None else row[caption_column]
        if needs_text and not (text and text.strip()):
            counts["no_prompt"] += 1
            continue
        graph = scene_graph_from_arrow(row["scene_graph"])
        rows.append(
            {
                "key": row["key"],
                "caption": text or "",
                "scene_graph": graph.to_dict(),
                "sg_text": row["sg_text"] or graph.to_text(),
                "image": {"bytes": image, "path": None},
            }
        )
    counts["eligible"] = len(rows)
    if not rows:
        raise BenchmarkSelectionError(
            f"no row of split {split!r} under {source} qualifies for the benchmark: {len(keys)} rows have at least "
            f"{min_relations} relations and a usable annotation, but none has a readable reference image"
            + (f" and text in column {caption_column!r}" if needs_text else "")
        )
    return files, rows, counts, needs_text
