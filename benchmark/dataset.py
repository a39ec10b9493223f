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

The frozen file and its hash are `benchmark.sample_set`'s (`load_benchmark` reads and checks it); which rows
qualify is `benchmark.selection`'s. The manifest records version, content hash, selection rule and counts.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from benchmark.sample_set import (
    BENCHMARK_SCHEMA,
    HASH_RULE,
    REFERENCE_FREE_HASH_RULE,
    content_hash,
    manifest_path,
    subset_rank,
)
from benchmark.selection import (
    PROMPT_RULE,
    REFERENCE_FREE_RULE,
    SELECTION_RULE,
    BenchmarkSelectionError,
    reference_free_rows,
    reference_rows,
)
from schemas.settings import JobSettings, parse_settings

__all__ = ["BENCHMARK_NAME", "REFERENCE_FREE_NAME", "BenchSetSettings", "build_benchmark", "main"]

BENCHMARK_NAME = "CompSG-Bench"
REFERENCE_FREE_NAME = f"{BENCHMARK_NAME}-reference-free"
SUBSET_RULE = "the {n} rows with the smallest sha256('{seed}:' + key)"


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

    With `reference_free`, `source` is a text-only annotate output (`benchmark.selection.reference_free_rows`;
    `split` is not used) and the set has no reference images (module docstring); its default name is
    ``CompSG-Bench-reference-free``.
    Raises `BenchmarkSelectionError` when the input cannot give a benchmark set."""
    if subset is not None and subset < 1:
        raise BenchmarkSelectionError(f"the subset size must be at least 1, got {subset}")
    if reference_free:
        min_relations = 0 if min_relations is None else min_relations
        files, rows, counts = reference_free_rows(source, min_relations, caption_column, prompts)
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
    files, rows, counts, needs_text = reference_rows(source, split, min_relations, caption_column, prompts)
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
