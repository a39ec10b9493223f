"""A long-prompt set from a user CSV in ParaPrompts-400's shape: a Parquet of prompts (long-prompt track).

The CSV has a ``category,prompt`` header (any letter case, any column order, other columns ignored) and one
prompt per record; a prompt holding commas, quotes or line breaks is quoted as RFC 4180 says. Prompts are kept
whole, never cut: only the whitespace around a prompt is stripped. Rules:

- the key of a prompt is `schemas.row_key` of its text (the sha1 of the prompt), the key the annotate job
  gives each row of a text-only Parquet, so ``python -m pipelines.annotate --task text_to_graph --input
  captions.parquet ...`` writes its graphs under the same keys;
- a prompt seen before (same text after stripping) is reported in the manifest and dropped, the first kept;
- an empty category cell becomes ``uncategorized``;
- a header without ``category`` or ``prompt``, an empty prompt, or a record with more fields than the header
  (an unquoted comma, which would cut the prompt) is an error naming the line; `main` exits 2.

The Parquet holds ``key, caption, category`` in the CSV's order; the manifest ``<name>.manifest.json`` beside
it records the count per category, the duplicates and a canonical content hash.

    python -m benchmark.long_prompts --input prompts.csv --output captions.parquet
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from benchmark.sample_set import manifest_path
from schemas import row_key
from schemas.runs import write_atomically
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "DEFAULT_CATEGORY",
    "LONG_PROMPTS_SCHEMA",
    "LongPromptsError",
    "build_long_prompts",
    "long_prompts_hash",
    "main",
    "read_prompts_csv",
]

DEFAULT_CATEGORY = "uncategorized"
KEY_RULE = "sha1 of the prompt text (schemas.row_key), the key the annotate job gives a text-only row"
HASH_RULE = "sha256 of JSON lines [key, caption, category] in key order"
LONG_PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
    ]
)


class LongPromptsError(ValueError):
    """The CSV cannot give a prompt set; the message names the file and the line."""


def _records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line, {header name: cell}) of each non-blank record; header names lower-cased and stripped."""
    with path.open(newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        missing = [name for name in ("category", "prompt") if name not in header]
        if missing:
            raise LongPromptsError(
                f"{path}: the header needs the columns category and prompt, missing {', '.join(missing)} "
                f"(header: {','.join(header) or 'none'})"
            )
        line = reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                if len(cells) > len(header):
                    raise LongPromptsError(
                        f"{path}, line {line}: {len(cells)} fields for {len(header)} columns; quote a prompt "
                        "that holds commas"
                    )
                yield line, dict(zip(header, cells, strict=False))
            line = reader.line_num + 1


def read_prompts_csv(path: str | Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """The unique prompts of a CSV as rows ``{key, caption, category}`` in file order, and the duplicates
    dropped (``{line, first_line, key}``). Raises `LongPromptsError` (see the module rules)."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    duplicates: list[dict[str, Any]] = []
    for line, record in _records(path):
        prompt = record.get("prompt", "").strip()
        if not prompt:
            raise LongPromptsError(f"{path}, line {line}: empty prompt")
        key = row_key(caption=prompt)
        if key in first_line:
            duplicates.append({"line": line, "first_line": first_line[key], "key": key})
            continue
        first_line[key] = line
        category = record.get("category", "").strip() or DEFAULT_CATEGORY
        rows.append({"key": key, "caption": prompt, "category": category})
    if not rows:
        raise LongPromptsError(f"{path}: no prompts")
    return rows, duplicates


def long_prompts_hash(rows: list[dict[str, str]]) -> str:
    """The canonical hash of prompt rows (independent of the Parquet encoding and of the row order)."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        line = [row["key"], row["caption"], row["category"]]
        digest.update(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def build_long_prompts(source: str | Path, output: str | Path) -> dict[str, Any]:
    """Read the CSV, write the Parquet of unique prompts and its manifest; return the manifest."""
    source, output = Path(source), Path(output)
    rows, duplicates = read_prompts_csv(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=LONG_PROMPTS_SCHEMA)
    write_atomically(output, lambda tmp: pq.write_table(table, tmp))
    manifest = {
        "file": output.name,
        "source": {"file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest()},
        "count": len(rows),
        "categories": dict(sorted(Counter(row["category"] for row in rows).items())),
        "duplicates": duplicates,
        "key_rule": KEY_RULE,
        "content_hash": long_prompts_hash(rows),
        "hash_rule": HASH_RULE,
        "file_sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_atomically(manifest_path(output), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return manifest


class LongPromptsSettings(JobSettings):
    """Settings of `python -m benchmark.long_prompts`."""

    input: Path = Field(description="CSV with a category,prompt header (ParaPrompts-400's shape)")
    output: Path = Field(description="the Parquet file of prompts to write (key, caption, category)")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        LongPromptsSettings,
        argv,
        prog="python -m benchmark.long_prompts",
        description=__doc__.split("\n\n")[0],
    )
    try:
        manifest = build_long_prompts(settings.input, settings.output)
    except (LongPromptsError, FileNotFoundError, UnicodeDecodeError, csv.Error) as exc:
        print(f"benchmark.long_prompts: error: {exc}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("count", "categories", "content_hash")}
    print(json.dumps(summary | {"duplicates_dropped": len(manifest["duplicates"])}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
