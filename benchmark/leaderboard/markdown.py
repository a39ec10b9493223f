"""The leaderboard as Markdown: one table per benchmark set (`render_markdown`).

Every text taken from a record (model ids, display names, adapters, metric names, the benchmark's name, version
and content hash, ...) is escaped with `html.escape`, backslash escapes of Markdown punctuation (so no link,
image, emphasis or code span can be formed) and line breaks written as ``<br>``. The only links are the Files
links (`benchmark.leaderboard.table.file_links`), and a bare http(s) URL in record text (GitHub's autolinks),
never ``javascript:`` or ``data:``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.leaderboard.records import TRACKS, Entry, Metric
from benchmark.leaderboard.table import (
    LEGEND,
    as_entries,
    benchmark_groups,
    best_shown,
    competition_ranks,
    file_links,
    format_value,
    settings_text,
    track_tables,
    value_text,
)
from schemas import BenchmarkResult

_LINE_BREAK = re.compile(r"\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
# Markdown syntax characters that could make a link, an image, a code span, emphasis, strike-through or a table
# cell out of record text: backslash, backtick, "*", "[", "]", "|", "~", and "_" unless inside a word (where it
# never makes emphasis, and paths such as "sdxl_sg" stay readable). "&", "<", ">" and quotes are HTML entities.
_MD_SYNTAX = re.compile(r"[\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def _md_cell(text: Any) -> str:
    """Any text as inert Markdown inline content: HTML-escaped, Markdown syntax backslash-escaped (no links,
    images, emphasis, code spans or extra table cells), line breaks as ``<br>``."""
    escaped = _MD_SYNTAX.sub(lambda m: "\\" + m.group(0), html.escape(str(text), quote=True))
    return _LINE_BREAK.sub("<br>", escaped)


def _md_code(text: str) -> str:
    """A code span for plain alphanumeric text (a hex hash); anything else as an escaped cell."""
    return f"`{text}`" if re.fullmatch(r"[0-9A-Za-z]+", text) else _md_cell(text)


def _md_name(entry: Entry) -> str:
    """The display name, and the model id on a second line when a display name is set."""
    if entry.display_name is None:
        return _md_cell(entry.record.model.model_id)
    return f"{_md_cell(entry.display_name)}<br>{_md_cell(entry.record.model.model_id)}"



def _md_table(members: Sequence[Entry], columns: Sequence[Metric], sort: Metric | None, base: Path) -> list[str]:
    """The lines of one table: entries in the given order, ranked by `sort`."""
    links = [file_links(entry, base) for entry in members]
    header = ["#", "Model", "Adapter", "Settings", *(f"{_md_cell(m.label)} {m.arrow}" for m in columns)]
    header += ["Files"] if any(links) else []
    align = ["---"] * 4 + ["---:"] * len(columns) + ["---"] * any(links)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    best = {m.key: best_shown(members, m) for m in columns}
    for rank, entry, files in zip(competition_ranks(members, sort), members, links, strict=True):
        record = entry.record
        cells = [str(rank), _md_name(entry), _md_cell(record.model.adapter), _md_cell(settings_text(record))]
        for m in columns:
            text, value = value_text(record, m), record.metrics.get(m.key)
            shown = format_value(value)
            cells.append(f"**{shown}**{text[len(shown) :]}" if value is not None and shown == best[m.key] else text)
        if any(links):
            cells.append(" · ".join(f"[{label}]({url})" for label, url in files) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(records: Sequence[BenchmarkResult | Entry], *, base: str | Path | None = None) -> str:
    """Per benchmark set, one Markdown table per track (CompSG-Bench's best SG-IoU first). Entries with files get
    a Files column linking to them, relative to `base` (the folder the Markdown file is written to; default: the
    working directory)."""
    base = Path.cwd() if base is None else Path(base)
    lines = ["# CompSG-Bench leaderboard", ""]
    for (name, version, content_hash), members in benchmark_groups(as_entries(records)).items():
        n = members[0].record.benchmark.n_samples
        lines += [f"## {_md_cell(name)} {_md_cell(version)} ({_md_code(content_hash[:12])}, {n} samples)", ""]
        for track, columns, ranked, sort in track_tables(members):
            lines += [f"### {_md_cell(TRACKS[track])}", "", *_md_table(ranked, columns, sort, base), ""]
    lines.append(LEGEND + " Each record's provenance is in its JSON file.")
    return "\n".join(lines) + "\n"
