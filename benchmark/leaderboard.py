"""The CompSG-Bench leaderboard: result records → Markdown and a static, self-contained HTML page; and `verify`,
which recomputes a record's metrics from its stored images.

    python -m benchmark.leaderboard render RECORD_OR_RUN_DIR... --output DIR   # DIR/leaderboard.md, DIR/index.html
    python -m benchmark.leaderboard verify RECORD [--run-dir RUN_DIR]          # exit 1 on any difference

Records of different benchmark sets (version or content hash) are not comparable and get separate tables. The
HTML page needs nothing outside itself: a sortable table (a few lines of inline JavaScript, allowed by a
Content-Security-Policy hash and nothing else), one inline-SVG bar chart per metric, an SG-IoU-vs-FID scatter
plot, and each record's provenance in a details row and in the model cell's title.

Every text taken from a record (model ids, adapters, metric names, the benchmark's name, version and content
hash, ...) is escaped: in HTML with `html.escape` (quotes included), in Markdown with `html.escape`, backslash
escapes of Markdown punctuation (so no link, image, emphasis or code span can be formed) and line breaks
written as ``<br>``. Neither output makes a link from record text: the HTML page has no links at all, and in
Markdown only a bare http(s) URL can become one (GitHub's autolinks), never ``javascript:`` or ``data:``.

Records are read strictly: a file that cannot be read, is not JSON, does not have the record's shape, or holds a
metric that is not a finite real number (``true``, ``"27.5"``, NaN) stops `render` before anything is written,
with one line per bad file naming the file and the field (exit status 2); ``--skip-invalid`` renders the valid
records instead and lists the skipped files as warnings.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas import BenchmarkResult, json_kind

__all__ = [
    "METRICS",
    "Metric",
    "RecordError",
    "load_records",
    "main",
    "render_html",
    "render_markdown",
    "verify_record",
]

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Metric:
    """A leaderboard column: record key, header, and whether higher values are better."""

    key: str
    label: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


METRICS = (
    Metric("sg_iou", "SG-IoU", True),
    Metric("entity_iou", "Entity-IoU", True),
    Metric("relation_iou", "Relation-IoU", True),
    Metric("fid", "FID", False),
    Metric("kid_mean", "KID", False),
    Metric("clip_t", "CLIP-T", True),
    Metric("clip_i", "CLIP-I", True),
    Metric("cmmd", "CMMD", False),
)
_DEFAULT_SORT = METRICS[0]
_SCATTER_AXES = ("fid", "sg_iou")


class RecordError(ValueError):
    """Some result files could not be read as records; `problems` maps each file to what is wrong with it."""

    def __init__(self, problems: dict[Path, str]) -> None:
        self.problems = problems
        lines = [f"{path}: {problem}" for path, problem in problems.items()]
        super().__init__(f"{len(problems)} invalid result record(s):\n" + "\n".join(lines))


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "record"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def read_record(file: Path) -> BenchmarkResult:
    """One record from a JSON file; raises `RecordError` naming the file and what is wrong with it."""
    try:
        data = json.loads(file.read_bytes())
    except OSError as exc:
        raise RecordError({file: f"cannot read: {exc.strerror or exc}"}) from None
    except UnicodeDecodeError as exc:
        raise RecordError({file: f"not UTF-8 text: {exc.reason} at byte {exc.start}"}) from None
    except json.JSONDecodeError as exc:
        raise RecordError({file: f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}) from None
    except RecursionError:
        raise RecordError({file: "not valid JSON: nested too deeply"}) from None
    if not isinstance(data, dict):
        raise RecordError({file: f"not a result record: {json_kind(data)}, not an object"})
    try:
        return BenchmarkResult.model_validate(data)
    except ValidationError as exc:
        raise RecordError({file: f"not a valid result record: {_validation_message(exc)}"}) from None


def load_records(paths: Sequence[str | Path], *, skip_invalid: bool = False) -> list[BenchmarkResult]:
    """Result records from JSON files, or from run directories holding ``result.json``.

    Every file is read before anything is reported: if some are invalid, `RecordError` lists them all (file and
    reason). With `skip_invalid`, they are left out instead and each one is printed to stderr as a warning."""
    records, problems = [], {}
    for path in map(Path, paths):
        file = path / RESULT_FILE if path.is_dir() else path
        try:
            records.append(read_record(file))
        except RecordError as exc:
            problems.update(exc.problems)
    if problems and not skip_invalid:
        raise RecordError(problems)
    for file, problem in problems.items():
        print(f"warning: skipped {file}: {problem}", file=sys.stderr)
    return records


def _columns(records: Sequence[BenchmarkResult]) -> list[Metric]:
    """The known metrics present in any record, then any other metric keys (sorted, assumed higher-better)."""
    present = {key for r in records for key in r.metrics}
    known = [m for m in METRICS if m.key in present]
    extra = sorted(present - {m.key for m in METRICS})
    return known + [Metric(key, key, True) for key in extra]


def _groups(records: Sequence[BenchmarkResult]) -> dict[tuple[str, str, str], list[BenchmarkResult]]:
    groups: dict[tuple[str, str, str], list[BenchmarkResult]] = {}
    for record in records:
        b = record.benchmark
        groups.setdefault((b.name, b.version, b.content_hash), []).append(record)
    for members in groups.values():
        members.sort(key=lambda r: -r.metrics.get(_DEFAULT_SORT.key, -math.inf))
    return groups


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _settings(record: BenchmarkResult) -> str:
    g = record.generation
    return f"{g.width}×{g.height}, {g.num_inference_steps} steps, cfg {g.guidance_scale:g}, {g.images_per_sample}/prompt, seed {g.seed}"


def _provenance_summary(record: BenchmarkResult) -> str:
    p = record.provenance
    devices = ", ".join(p.hardware.get("cuda_devices") or []) or f"CPU ×{p.hardware.get('cpu_count')}"
    parts = [
        f"run {record.run_id}",
        f"weights {record.model.weights_hash[:12] if record.model.weights_hash else 'n/a'}",
        f"git {p.packages.get('git', 'n/a')}",
        f"laion-sg {p.package_version}",
        devices,
        f"{p.wall_time_s:.0f} s",
        p.created_at,
    ]
    return " · ".join(parts)


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


def render_markdown(records: Sequence[BenchmarkResult]) -> str:
    """One Markdown table per benchmark set, best SG-IoU first."""
    lines = ["# CompSG-Bench leaderboard", ""]
    for (name, version, content_hash), members in _groups(records).items():
        columns = _columns(members)
        n = members[0].benchmark.n_samples
        lines += [f"## {_md_cell(name)} {_md_cell(version)} ({_md_code(content_hash[:12])}, {n} samples)", ""]
        header = ["#", "Model", "Adapter", "Settings", *(f"{_md_cell(m.label)} {m.arrow}" for m in columns)]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * len(columns)) + "|"]
        for rank, record in enumerate(members, 1):
            cells = [str(rank), _md_cell(record.model.model_id), _md_cell(record.model.adapter), _md_cell(_settings(record))]
            cells += [_fmt(record.metrics.get(m.key)) for m in columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("↑ higher is better, ↓ lower is better. Each record's provenance is in its JSON file.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- HTML

_SCRIPT = """
for (const table of document.querySelectorAll("table.board")) {
  const sortBy = (col, dir) => {
    const groups = [...table.tBodies];
    const value = g => parseFloat(g.rows[0].cells[col].dataset.value ?? "NaN");
    const text = g => g.rows[0].cells[col].textContent;
    groups.sort((a, b) => {
      const x = value(a), y = value(b);
      if (isNaN(x) || isNaN(y)) return dir * text(a).localeCompare(text(b));
      return dir * (x - y);
    });
    groups.forEach((g, i) => { g.rows[0].cells[0].textContent = i + 1; table.appendChild(g); });
    table.dataset.sortedBy = col;
    table.dataset.sortDir = dir;
  };
  table.querySelectorAll("th button").forEach(button => button.addEventListener("click", () => {
    const col = button.parentElement.cellIndex;
    const dir = table.dataset.sortedBy == col ? -table.dataset.sortDir : +button.dataset.dir;
    sortBy(col, dir);
  }));
  const first = table.querySelector("th button[data-default]");
  sortBy(first.parentElement.cellIndex, +first.dataset.dir);
}
document.body.dataset.ready = "1";
""".strip()

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table.board { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th button { font: inherit; font-weight: bold; border: 0; background: none; cursor: pointer; padding: 0; }
tr.details td { border-bottom: 2px solid #bbb; font-size: 12px; }
tr.details pre { max-height: 24em; overflow: auto; background: #f6f6f6; padding: 8px; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: bold; }
svg text { font: 11px system-ui, sans-serif; }
""".strip()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _details(record: BenchmarkResult) -> str:
    data = {
        "run_id": record.run_id,
        "model": record.model.model_dump(),
        "generation": record.generation.model_dump(),
        "benchmark": record.benchmark.model_dump(),
        "metric_details": record.metric_details,
        "provenance": record.provenance.model_dump(),
    }
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def _table(members: Sequence[BenchmarkResult], columns: Sequence[Metric]) -> str:
    head = ["<th>#</th>", "<th><button data-dir='1'>Model</button></th>", "<th>Adapter</th>", "<th>Settings</th>"]
    for metric in columns:
        default = " data-default" if metric == _DEFAULT_SORT else ""
        direction = -1 if metric.higher_is_better else 1
        head.append(
            f"<th><button data-dir='{direction}'{default} title='sort by {_e(metric.label)}'>"
            f"{_e(metric.label)} {metric.arrow}</button></th>"
        )
    if _DEFAULT_SORT not in columns:
        head[1] = "<th><button data-dir='1' data-default>Model</button></th>"
    bodies = []
    for rank, record in enumerate(members, 1):
        cells = [
            f"<td>{rank}</td>",
            f"<td title='{_e(_provenance_summary(record))}'>{_e(record.model.model_id)}</td>",
            f"<td>{_e(record.model.adapter)}</td>",
            f"<td>{_e(_settings(record))}</td>",
        ]
        for metric in columns:
            value = record.metrics.get(metric.key)
            data = "" if value is None else f" data-value='{_e(repr(float(value)))}'"
            cells.append(f"<td class='num'{data}>{_e(_fmt(value))}</td>")
        details = (
            f"<tr class='details'><td></td><td colspan='{len(cells) - 1}'><details><summary>provenance</summary>"
            f"<pre>{_e(_details(record))}</pre></details></td></tr>"
        )
        bodies.append(f"<tbody><tr class='entry'>{''.join(cells)}</tr>{details}</tbody>")
    return f"<table class='board'><thead><tr>{''.join(head)}</tr></thead>{''.join(bodies)}</table>"


def _bar_chart(members: Sequence[BenchmarkResult], metric: Metric) -> str:
    rows = [(r.model.model_id, r.metrics[metric.key]) for r in members if metric.key in r.metrics]
    label_w, bar_w, row_h = 180, 220, 20
    scale = max((abs(v) for _, v in rows), default=0.0) or 1.0
    parts = []
    for i, (name, value) in enumerate(rows):
        y = i * row_h
        width = abs(value) / scale * bar_w
        short = name if len(name) <= 28 else "…" + name[-27:]
        color = "#4c78a8" if value >= 0 else "#e45756"
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 14}' text-anchor='end'>{_e(short)}<title>{_e(name)}</title></text>"
            f"<rect x='{label_w}' y='{y + 3}' width='{width:.1f}' height='{row_h - 6}' fill='{color}'>"
            f"<title>{_e(name)}: {_e(_fmt(value))}</title></rect>"
            f"<text x='{label_w + width + 4:.1f}' y='{y + 14}'>{_e(_fmt(value))}</text>"
        )
    height = max(len(rows), 1) * row_h
    return (
        f"<figure><figcaption>{_e(metric.label)} {metric.arrow}</figcaption>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 60}' height='{height}' "
        f"role='img' aria-label='{_e(metric.label)}'>{''.join(parts)}</svg></figure>"
    )


def _scatter(members: Sequence[BenchmarkResult]) -> str:
    x_key, y_key = _SCATTER_AXES
    points = [(r.model.model_id, r.metrics[x_key], r.metrics[y_key]) for r in members if {x_key, y_key} <= r.metrics.keys()]
    if not points:
        return ""
    size, pad = 320, 48
    xs, ys = [p[1] for p in points], [p[2] for p in points]

    def scale(value: float, low: float, high: float) -> float:
        return 0.5 if high == low else (value - low) / (high - low)

    marks = []
    for name, x, y in points:
        cx = pad + scale(x, min(xs), max(xs)) * (size - 2 * pad)
        cy = size - pad - scale(y, min(ys), max(ys)) * (size - 2 * pad)
        short = name if len(name) <= 20 else "…" + name[-19:]
        marks.append(
            f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='#4c78a8'>"
            f"<title>{_e(name)}: FID {_e(_fmt(x))}, SG-IoU {_e(_fmt(y))}</title></circle>"
            # labels of points in the right half grow leftwards (below the point) so they stay inside the plot
            + (f"<text x='{cx + 7:.1f}' y='{cy - 7:.1f}'>" if cx <= size / 2
               else f"<text x='{cx - 7:.1f}' y='{cy + 16:.1f}' text-anchor='end'>")
            + f"{_e(short)}</text>"
        )
    axes = (
        f"<line x1='{pad}' y1='{size - pad}' x2='{size - pad}' y2='{size - pad}' stroke='#888'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{size - pad}' stroke='#888'/>"
        f"<text x='{size / 2}' y='{size - 12}' text-anchor='middle'>FID ↓ ({_e(_fmt(min(xs)))} – {_e(_fmt(max(xs)))})</text>"
        f"<text x='14' y='{size / 2}' text-anchor='middle' transform='rotate(-90 14 {size / 2})'>"
        f"SG-IoU ↑ ({_e(_fmt(min(ys)))} – {_e(_fmt(max(ys)))})</text>"
    )
    return (
        "<figure><figcaption>SG-IoU vs FID</figcaption>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' role='img' "
        f"aria-label='SG-IoU versus FID'>{axes}{''.join(marks)}</svg></figure>"
    )


def render_html(records: Sequence[BenchmarkResult]) -> str:
    """A self-contained page: per benchmark set a sortable table, bar charts and a scatter plot."""
    sections = []
    for (name, version, content_hash), members in _groups(records).items():
        columns = _columns(members)
        charts = [_bar_chart(members, m) for m in columns] + [_scatter(members)]
        sections.append(
            f"<section><h2>{_e(name)} {_e(version)} <small>(<code>{_e(content_hash[:12])}</code>, "
            f"{members[0].benchmark.n_samples} samples)</small></h2>"
            f"{_table(members, columns)}<div class='charts'>{''.join(charts)}</div></section>"
        )
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>CompSG-Bench leaderboard</title><style>{_STYLE}</style></head><body>"
        "<h1>CompSG-Bench leaderboard</h1>"
        "<p>Click a column header to sort. ↑ higher is better, ↓ lower is better. "
        "Hover a model for its provenance; open a row's details for the full record.</p>"
        f"{''.join(sections)}<script>{_SCRIPT}</script></body></html>\n"
    )


# ---------------------------------------------------------------------- verify


def verify_record(
    record_path: str | Path,
    run_dir: str | Path | None = None,
    *,
    num_actors: int = 0,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> list[str]:
    """Recompute a record's metrics from the images stored in its run directory (default: the record's folder);
    return every difference found (empty when the record checks out). The images' digest is compared too.
    Tolerances allow for float differences across machines; on the same machine the numbers are identical."""
    from benchmark.run import recompute

    record_path = Path(record_path)
    record = load_records([record_path])[0]
    run_dir = Path(run_dir) if run_dir is not None else (record_path if record_path.is_dir() else record_path.parent)
    try:
        metrics, details = recompute(record, run_dir, num_actors=num_actors)
    except ValueError as exc:  # missing or extra images, a changed benchmark file (BenchmarkHashError)
        return [f"cannot recompute: {exc}"]
    problems = []
    stored_images = record.metric_details.get("images", {}).get("sha256")
    if stored_images != details["images"]["sha256"]:
        problems.append(f"images: digest {details['images']['sha256']} differs from the record's {stored_images}")
    for key in sorted(record.metrics.keys() | metrics.keys()):
        old, new = record.metrics.get(key), metrics.get(key)
        if old is None or new is None or not math.isclose(old, new, rel_tol=rel_tol, abs_tol=abs_tol):
            problems.append(f"{key}: recorded {old!r}, recomputed {new!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.leaderboard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render records to DIR/leaderboard.md and DIR/index.html")
    render.add_argument("records", nargs="+", help="result.json files or run directories")
    render.add_argument("--output", required=True)
    render.add_argument(
        "--skip-invalid", action="store_true", help="render the valid records, warn about invalid ones (default: exit 2)"
    )
    verify = sub.add_parser("verify", help="recompute a record's metrics from its stored images")
    verify.add_argument("record", help="a result.json file or a run directory")
    verify.add_argument("--run-dir", default=None, help="where the images are (default: the record's folder)")
    verify.add_argument("--num-actors", type=int, default=0, help="Ray actors for the judge (0: in this process)")
    verify.add_argument("--rel-tol", type=float, default=1e-6)
    args = parser.parse_args(argv)

    if args.command == "render":
        try:
            records = load_records(args.records, skip_invalid=args.skip_invalid)
        except RecordError as exc:
            print(f"leaderboard: error: {exc}", file=sys.stderr)
            return 2
        if not records:
            print("leaderboard: error: no valid result record to render", file=sys.stderr)
            return 2
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "leaderboard.md").write_text(render_markdown(records), encoding="utf-8")
        (out / "index.html").write_text(render_html(records), encoding="utf-8")
        print(f"rendered {len(records)} records to {out / 'leaderboard.md'} and {out / 'index.html'}")
        return 0
    try:
        problems = verify_record(args.record, args.run_dir, num_actors=args.num_actors, rel_tol=args.rel_tol)
    except RecordError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print("verify: " + ("FAILED" if problems else "ok, every metric reproduced"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
