"""The CompSG-Bench sample set: selected from an exported dataset, frozen into a versioned, hashed Parquet file.

Selection (the original definition): rows of the chosen split whose scene graph has more than 4 relations
(``--min-relations 5``), whose annotation did not fail, and which carry a reference image. Optionally a stable
subset of size N: the N rows with the smallest ``sha256(f"{seed}:{key}")``. Adding rows to the source never
reshuffles that order, so a subset only changes where a new row sorts before the old ones, and the subset of
size N is a prefix of the subset of size M > N.

The prompt text comes from the exported ``caption`` column, or from another text column (``--caption-column
paragraph``: the long-prompt track, on the ``paragraph`` task's dense descriptions), also from another annotate
output of the same images joined by key (``--prompts PARAGRAPH_DIR``); rows where such a column is empty are
skipped and counted (``no_prompt``). Such a set is named ``CompSG-Bench-{column}`` unless ``--name`` says
otherwise. The frozen file keeps the text in its ``caption`` column, so
the content hash covers it; the manifest records the column it came from.

The frozen file holds ``key, caption, scene_graph, sg_text, image`` (reference image bytes) sorted by key, with
the Hugging Face features metadata, and a manifest ``<name>.manifest.json`` beside it: version, content hash,
selection rule and counts. The content hash is canonical (independent of the Parquet encoding): the sha256 of
one JSON line per row, in key order, ``[key, caption, scene_graph, sg_text, sha256(image bytes)]``.
`load_benchmark` recomputes it and refuses a file that does not match.

A reference-free set (``--reference-free``: a prompt set without images, e.g. ParaPrompts-400) is frozen from a
text-only annotate output, the ``text_to_graph`` task's over a captions Parquet (`benchmark.long_prompts`): its
``data/*.parquet`` under the directory, or one Parquet file; ``--split`` is not used. It keeps the rows whose
annotation is ``ok`` or ``repaired`` and whose graph has an object and at least ``--min-relations`` relations
(default 0 here; counted: ``failed_annotation``, ``no_graph``, ``too_few_relations``). The file has the same
columns with a null ``image``, the hash line has null for the image hash, and the manifest says
``"reference_free": true`` (absent in a set with references); it is named ``CompSG-Bench-reference-free`` unless
``--name`` says otherwise (``--name ParaPrompts``). `benchmark.run` skips the metrics that need reference images
(FID, KID, CLIP-I, CMMD) on such a set and says so in the record.

    python -m benchmark.dataset --input EXPORTED_DIR --output bench.parquet --split test --min-relations 5 \\
        [--subset N --seed 0 --caption-column caption --prompts DIR --name NAME --benchmark-version 1.0 \\
         --config bench_set.yaml]
    python -m benchmark.dataset --reference-free --input TEXT_TO_GRAPH_DIR --output paraprompts.parquet \
        --name ParaPrompts [--min-relations 0 --subset N --seed 0]

Input that cannot give a benchmark (no such split, no image or prompt column, no row passing the selection)
raises `BenchmarkSelectionError` with what was read; `main` prints it and exits with status 2, without a
traceback.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from schemas import (
    IMAGE_TYPE,
    SCENE_GRAPH_TYPE,
    BenchmarkInfo,
    SceneGraph,
    scene_graph_from_arrow,
    with_hf_metadata,
)
from schemas.layout import find_split_files
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "BENCHMARK_NAME",
    "BENCHMARK_SCHEMA",
    "BenchmarkHashError",
    "BenchmarkSample",
    "BenchmarkSelectionError",
    "BenchmarkSet",
    "build_benchmark",
    "content_hash",
    "load_benchmark",
    "main",
    "manifest_path",
    "split_files",
    "subset_rank",
]

BENCHMARK_NAME = "CompSG-Bench"
SELECTION_RULE = "rows of split {split} with at least {min_relations} relations, annotation not failed, with an image"
PROMPT_RULE = "prompt text from column {column!r}; rows where it is empty are skipped"
SUBSET_RULE = "the {n} rows with the smallest sha256('{seed}:' + key)"
HASH_RULE = "sha256 of JSON lines [key, caption, scene_graph, sg_text, sha256(image bytes)] in key order"
REFERENCE_FREE_NAME = f"{BENCHMARK_NAME}-reference-free"
REFERENCE_FREE_RULE = (
    "rows of a text-only annotate output with an ok or repaired annotation and a graph of at least one object "
    "and {min_relations} relations; no reference images"
)
REFERENCE_FREE_HASH_RULE = "sha256 of JSON lines [key, caption, scene_graph, sg_text, null] in key order (no images)"

BENCHMARK_SCHEMA = with_hf_metadata(
    pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("caption", pa.string()),
            pa.field("scene_graph", SCENE_GRAPH_TYPE),
            pa.field("sg_text", pa.string()),
            pa.field("image", IMAGE_TYPE),
        ]
    )
)


class BenchmarkHashError(ValueError):
    """The benchmark file does not match the content hash of its manifest."""


class BenchmarkSelectionError(ValueError):
    """The input cannot give a benchmark set (missing split or column, no row passing the selection)."""


@dataclass(frozen=True)
class BenchmarkSample:
    """One prompt of the benchmark: what to generate from, and the real image to compare with (None in a
    reference-free set)."""

    key: str
    caption: str
    scene_graph: SceneGraph
    sg_text: str
    image: bytes | None


@dataclass(frozen=True)
class BenchmarkSet:
    """A loaded, hash-verified benchmark file and its manifest."""

    path: Path
    manifest: dict[str, Any]
    samples: tuple[BenchmarkSample, ...]

    @property
    def reference_free(self) -> bool:
        """Whether the set has no reference images (frozen with ``--reference-free``)."""
        return bool(self.manifest.get("reference_free", False))

    def info(self) -> BenchmarkInfo:
        """The `benchmark` part of a result record."""
        return BenchmarkInfo(
            name=self.manifest["name"],
            version=self.manifest["version"],
            content_hash=self.manifest["content_hash"],
            n_samples=len(self.samples),
        )


def manifest_path(bench_path: str | Path) -> Path:
    """``bench.parquet`` → ``bench.manifest.json`` (same directory)."""
    path = Path(bench_path)
    return path.with_name(path.stem + ".manifest.json")


def subset_rank(key: str, seed: int) -> str:
    """The sort key of the stable subset: sha256 of ``"{seed}:{key}"``."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def content_hash(rows: Iterable[dict[str, Any]]) -> str:
    """The canonical hash of benchmark rows (dicts with key, caption, scene_graph, sg_text, image), in key order;
    a row without an image (a reference-free set) has null in the image hash's place."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        graph = scene_graph_from_arrow(row["scene_graph"])
        image = (row["image"] or {}).get("bytes")
        image_hash = None if image is None else hashlib.sha256(image).hexdigest()
        line = [row["key"], row["caption"], graph.to_dict(), row["sg_text"], image_hash]
        digest.update(json.dumps(line, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


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


def _reference_free_rows(
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
    return files, rows, counts


def build_benchmark(
    source: str | Path,
    output: str | Path,
    *,
    split: str = "test",
    min_relations: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    version: str = "1.0",
    caption_column: str = "caption",
    prompts: str | Path | None = None,
    name: str | None = None,
    reference_free: bool = False,
) -> dict[str, Any]:
    """Select, freeze and hash a benchmark set; write the Parquet file and its manifest; return the manifest.

    The prompt text is `caption_column`'s, read from the exported rows or, with `prompts`, from another annotate
    output of the same images (its ``data/*.parquet``, or a Parquet file), joined by key; with a column other
    than ``caption``, rows without text in it are skipped (``counts["no_prompt"]``), while an empty ``caption``
    is kept as ``""`` as in the original sets. `name` is the set's name (default ``CompSG-Bench``, or
    ``CompSG-Bench-{caption_column}`` for another prompt column: its own leaderboard section).
    `min_relations` defaults to 5 (0 for a reference-free set).

    With `reference_free`, `source` is a text-only annotate output (`_reference_free_rows`; `split` is not
    used) and the set has no reference images (module docstring); its default name is
    ``CompSG-Bench-reference-free``.
    Raises `BenchmarkSelectionError` when the input cannot give a benchmark set."""
    if subset is not None and subset < 1:
        raise BenchmarkSelectionError(f"the subset size must be at least 1, got {subset}")
    if reference_free:
        min_relations = 0 if min_relations is None else min_relations
        files, rows, counts = _reference_free_rows(source, min_relations, caption_column, prompts)
        counts["eligible"] = len(rows)
        default_name = REFERENCE_FREE_NAME if caption_column == "caption" else f"{REFERENCE_FREE_NAME}-{caption_column}"
        return _freeze(
            rows,
            counts,
            output,
            name=name or default_name,
            version=version,
            selection={
                "split": None,
                "min_relations": min_relations,
                "rule": REFERENCE_FREE_RULE.format(min_relations=min_relations),
                "caption_column": caption_column,
                "prompts_from": None if prompts is None else Path(prompts).name,
                "prompt_rule": PROMPT_RULE.format(column=caption_column),
            },
            subset=subset,
            seed=seed,
            files=files,
            reference_free=True,
        )
    min_relations = 5 if min_relations is None else min_relations
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
    return _freeze(
        rows,
        counts,
        output,
        name=name or (BENCHMARK_NAME if caption_column == "caption" else f"{BENCHMARK_NAME}-{caption_column}"),
        version=version,
        selection={
            "split": split,
            "min_relations": min_relations,
            "rule": SELECTION_RULE.format(split=split, min_relations=min_relations),
            "caption_column": caption_column,
            "prompts_from": None if prompts is None else Path(prompts).name,
            "prompt_rule": PROMPT_RULE.format(column=caption_column) if needs_text else None,
        },
        subset=subset,
        seed=seed,
        files=files,
        reference_free=False,
    )


def _freeze(
    rows: list[dict[str, Any]],
    counts: dict[str, int],
    output: str | Path,
    *,
    name: str,
    version: str,
    selection: dict[str, Any],
    subset: int | None,
    seed: int,
    files: Sequence[str],
    reference_free: bool,
) -> dict[str, Any]:
    """Take the stable subset of `rows`, write them in key order and the manifest; return the manifest (which
    says ``"reference_free": true`` only for a set without reference images, so a set with them is as before)."""
    if subset is not None:
        rows = sorted(rows, key=lambda r: subset_rank(r["key"], seed))[:subset]
    rows = sorted(rows, key=lambda r: r["key"])
    counts["selected"] = len(rows)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=BENCHMARK_SCHEMA), output)
    subset_rule = SUBSET_RULE.format(n=subset, seed=seed) if subset is not None else None
    manifest = {
        "name": name,
        "version": version,
        "file": output.name,
        "content_hash": content_hash(rows),
        "hash_rule": REFERENCE_FREE_HASH_RULE if reference_free else HASH_RULE,
        "file_sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
        "selection": selection | {"subset": subset, "seed": seed, "subset_rule": subset_rule},
        "counts": counts,
        "source_files": [Path(f).name for f in files],
    }
    if reference_free:
        manifest["reference_free"] = True
    manifest_path(output).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_benchmark(path: str | Path) -> BenchmarkSet:
    """Read a frozen benchmark file, check it against its manifest's content hash, and return its samples."""
    path = Path(path)
    manifest = json.loads(manifest_path(path).read_text())
    rows = pq.read_table(path, schema=BENCHMARK_SCHEMA).to_pylist()
    found = content_hash(rows)
    if found != manifest["content_hash"]:
        raise BenchmarkHashError(
            f"{path}: content hash {found} does not match the manifest's {manifest['content_hash']}"
        )
    samples = tuple(
        BenchmarkSample(
            key=r["key"],
            caption=r["caption"],
            scene_graph=scene_graph_from_arrow(r["scene_graph"]),
            sg_text=r["sg_text"],
            image=(r["image"] or {}).get("bytes"),
        )
        for r in sorted(rows, key=lambda r: r["key"])
    )
    return BenchmarkSet(path=path, manifest=manifest, samples=samples)


class BenchSetSettings(JobSettings):
    """Settings of `python -m benchmark.dataset`."""

    input: Path = Field(description="exported dataset directory (or one Parquet file)")
    output: Path = Field(description="the benchmark Parquet file to write")
    split: str = Field("test", description="the exported split to select from")
    min_relations: int | None = Field(
        None, ge=0, description="keep graphs with at least this many relations (unset: 5, or 0 with --reference-free)"
    )
    subset: int | None = Field(None, ge=1, description="keep a stable subset of this many rows")
    seed: int = Field(0, description="seed of the stable subset")
    caption_column: str = Field(
        "caption", min_length=1, description="the exported column the prompt text comes from (e.g. paragraph)"
    )
    prompts: Path | None = Field(
        None,
        description="an annotate output of the same images holding --caption-column (e.g. the paragraph task's), "
        "joined by key",
    )
    name: str | None = Field(None, description="the set's name (unset: CompSG-Bench, or CompSG-Bench-<column>)")
    benchmark_version: str = Field("1.0", description="the benchmark version recorded in the manifest and results")
    reference_free: bool = Field(
        False,
        description="freeze a set without reference images from a text-only annotate output (--input: e.g. the "
        "text_to_graph task's); benchmark.run then skips FID, KID, CLIP-I and CMMD",
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        BenchSetSettings, argv, prog="python -m benchmark.dataset", description=__doc__.split("\n\n")[0]
    )
    try:
        manifest = build_benchmark(
            settings.input,
            settings.output,
            split=settings.split,
            min_relations=settings.min_relations,
            subset=settings.subset,
            seed=settings.seed,
            version=settings.benchmark_version,
            caption_column=settings.caption_column,
            prompts=settings.prompts,
            name=settings.name,
            reference_free=settings.reference_free,
        )
    except (BenchmarkSelectionError, FileNotFoundError) as exc:
        print(f"benchmark.dataset: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: manifest[k] for k in ("name", "version", "content_hash", "counts")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
