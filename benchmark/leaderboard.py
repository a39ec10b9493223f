"""The CompSG-Bench leaderboard: result records → Markdown and a static, self-contained HTML page; and `verify`,
which recomputes a record's metrics from its stored images.

    python -m benchmark.leaderboard render RECORD_OR_RUN_DIR... --output DIR   # DIR/leaderboard.md, DIR/index.html
    python -m benchmark.leaderboard verify RECORD [--run-dir RUN_DIR]          # exit 1 on any difference

Each subcommand's settings are a typed model (`RenderSettings`, `VerifySettings`; `schemas.settings`): flags,
``--config`` YAML (flags win; the positional records are ``runs:`` / ``record:`` there), ``--help`` with every
default (``python -m benchmark.leaderboard render --help``) and ``--version``.

Records of different benchmark sets (version or content hash) are not comparable and get separate tables. The
HTML page needs nothing outside itself to display: a sortable table (a few lines of inline JavaScript, allowed by a
Content-Security-Policy hash and nothing else), one inline-SVG bar chart per metric, an SG-IoU-vs-FID scatter
plot, and each record's provenance in a details row and in the model cell's title.

The columns, their labels and better directions come from the metric classes (`benchmark.metrics.RECORD_METRICS`).
A run is named by its ``--display-name`` (`benchmark.run`, kept in ``provenance.config``), with its model id
below, or by its model id. Rows are ranked by SG-IoU; values equal at the shown precision (4 significant digits)
share a rank ("1, 1, 3"), and the best value of each column is highlighted on every entry showing it. Where the
record holds a spread, a value is shown with ± its 95% confidence interval (means over items: CLIP-T, CLIP-I,
and the IoUs if their std is recorded) or its standard deviation (KID, over subsets). Chart axes follow one rule
(`axis_range`): each axis includes 0 and the metric's bounds where it has them (IoUs 0–1, CLIP-T 0–100, CLIP-I
0–1), so lengths are proportional to values and a 0.01 difference never fills the chart.

`render` links each run to its ``result.json`` and, when the run directory holds generated images
(``images/``), to a grid of its first images written under DIR/samples/ (`sample_grid`); links are relative to
DIR, so the folder can be moved or published together with the run directories' relative positions.

Every text taken from a record (model ids, display names, adapters, metric names, the benchmark's name, version
and content hash, ...) is escaped: in HTML with `html.escape` (quotes included), in Markdown with `html.escape`,
backslash escapes of Markdown punctuation (so no link, image, emphasis or code span can be formed) and line
breaks written as ``<br>``. Neither output makes a link from record text: the only links are the Files links,
made from the paths of the files read and written (percent-encoded, relative, never with a scheme), and in
Markdown a bare http(s) URL in record text (GitHub's autolinks), never ``javascript:`` or ``data:``.

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
import io
import json
import math
import numbers
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any
from urllib.parse import quote

from pydantic import Field, ValidationError
from pydantic_settings import CliPositionalArg

from benchmark.metrics import RECORD_METRICS
from schemas import BenchmarkResult, json_kind
from schemas.layout import RESULT_FILE
from schemas.settings import JobSettings, package_version, parse_settings, settings_parser

__all__ = [
    "METRICS",
    "Entry",
    "Metric",
    "RecordError",
    "RenderSettings",
    "VerifySettings",
    "axis_range",
    "load_entries",
    "load_records",
    "main",
    "render_html",
    "render_markdown",
    "sample_grid",
    "verify_record",
]

SAMPLES_DIR = "samples"
PROG = "python -m benchmark.leaderboard"


@dataclass(frozen=True)
class Metric:
    """A leaderboard column: record key, header, whether higher values are better, the plot bounds, and where the
    record keeps its details (the `metric_details` group and, for a mean over items, the detail counting them).

    The known columns come from the metric classes (`benchmark.metrics.RECORD_METRICS`): their `labels`,
    `higher_is_better`, `plot_lower_bound` / `plot_upper_bound`, `details_key` and `count_key`."""

    key: str
    label: str
    higher_is_better: bool
    lower_bound: float | None = None
    upper_bound: float | None = None
    details_key: str | None = None
    count_key: str | None = None

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def std_key(self) -> str:
        """The detail holding the standard deviation of this metric (``kid_mean`` -> ``kid_std``)."""
        return self.key.removesuffix("_mean") + "_std"

    @classmethod
    def of(cls, metric_class: type) -> tuple[Metric, ...]:
        """The columns of one metric class, one per record key it writes."""
        return tuple(
            cls(
                key,
                label,
                bool(metric_class.higher_is_better),
                metric_class.plot_lower_bound,
                metric_class.plot_upper_bound,
                metric_class.details_key,
                metric_class.count_key,
            )
            for key, label in metric_class.labels.items()
        )


METRICS = tuple(column for metric_class in RECORD_METRICS for column in Metric.of(metric_class))
_DEFAULT_SORT = METRICS[0]
_SCATTER_AXES = ("fid", "sg_iou")
_Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95% normal quantile, 1.95996...


@dataclass(frozen=True)
class Entry:
    """A record on the leaderboard, with the files it links to: the ``result.json`` it was read from and a grid of
    sample images of its run (both optional)."""

    record: BenchmarkResult
    result_file: Path | None = None
    grid_file: Path | None = None

    @property
    def display_name(self) -> str | None:
        """The run's ``--display-name`` (kept in ``provenance.config``), if it is a non-blank string."""
        name = self.record.provenance.config.get("display_name")
        return name if isinstance(name, str) and name.strip() else None

    @property
    def name(self) -> str:
        return self.display_name or self.record.model.model_id


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
        raise RecordError(
            {file: f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}
        ) from None
    except RecursionError:
        raise RecordError({file: "not valid JSON: nested too deeply"}) from None
    if not isinstance(data, dict):
        raise RecordError({file: f"not a result record: {json_kind(data)}, not an object"})
    try:
        return BenchmarkResult.model_validate(data)
    except ValidationError as exc:
        raise RecordError({file: f"not a valid result record: {_validation_message(exc)}"}) from None


def load_entries(paths: Sequence[str | Path], *, skip_invalid: bool = False) -> list[Entry]:
    """Result records from JSON files, or from run directories holding ``result.json``, each with the file it was
    read from.

    Every file is read before anything is reported: if some are invalid, `RecordError` lists them all (file and
    reason). With `skip_invalid`, they are left out instead and each one is printed to stderr as a warning."""
    entries, problems = [], {}
    for path in map(Path, paths):
        file = path / RESULT_FILE if path.is_dir() else path
        try:
            entries.append(Entry(read_record(file), result_file=file))
        except RecordError as exc:
            problems.update(exc.problems)
    if problems and not skip_invalid:
        raise RecordError(problems)
    for file, problem in problems.items():
        print(f"warning: skipped {file}: {problem}", file=sys.stderr)
    return entries


def load_records(paths: Sequence[str | Path], *, skip_invalid: bool = False) -> list[BenchmarkResult]:
    """The records of `load_entries` (same arguments, same errors and warnings)."""
    return [entry.record for entry in load_entries(paths, skip_invalid=skip_invalid)]


def sample_grid(
    run_dir: str | Path, out_file: str | Path, *, max_images: int = 8, thumb: int = 128
) -> Path | None:
    """A PNG grid of the first `max_images` generated images of a run (in (key, image index) order, as
    `benchmark.generate` stores them under RUN_DIR/images), each scaled to fit a `thumb`-pixel square, four per
    row; written to `out_file`. None (and nothing written) when the run directory holds no decodable image."""
    from PIL import Image

    from benchmark.generate import iter_images

    try:
        ids = sorted(
            (key, index)
            for table in iter_images(run_dir, ["key", "image_index"])
            for key, index in zip(
                table.column("key").to_pylist(), table.column("image_index").to_pylist(), strict=True
            )
        )
    except (OSError, ValueError):  # unreadable or foreign files under images/
        return None
    wanted = set(ids[:max_images])
    found: dict[tuple[str, int], Image.Image] = {}
    for table in iter_images(run_dir, ["key", "image_index", "png"]):
        for row in table.to_pylist():
            if (row["key"], row["image_index"]) not in wanted:
                continue
            try:
                with Image.open(io.BytesIO(row["png"])) as image:
                    small = image.convert("RGB")
                    small.thumbnail((thumb, thumb))
            except Exception:  # noqa: BLE001 - an undecodable image is left out of the grid, whatever PIL raises
                continue
            found[(row["key"], row["image_index"])] = small
        if len(found) == len(wanted):
            break
    images = [found[i] for i in sorted(found)]
    if not images:
        return None
    columns = min(len(images), 4)
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * thumb, rows * thumb), "white")
    for i, image in enumerate(images):
        x, y = (i % columns) * thumb, (i // columns) * thumb
        grid.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, format="PNG")
    return out


def _entries(records: Sequence[BenchmarkResult | Entry]) -> list[Entry]:
    return [r if isinstance(r, Entry) else Entry(r) for r in records]


def _columns(entries: Sequence[Entry]) -> list[Metric]:
    """The known metrics present in any record, then any other metric keys (sorted, assumed higher-better)."""
    present = {key for e in entries for key in e.record.metrics}
    known = [m for m in METRICS if m.key in present]
    extra = sorted(present - {m.key for m in METRICS})
    return known + [Metric(key, key, True) for key in extra]


def _groups(entries: Sequence[Entry]) -> dict[tuple[str, str, str], list[Entry]]:
    """Entries per benchmark set, best SG-IoU first (stable: ties keep their input order)."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        b = entry.record.benchmark
        groups.setdefault((b.name, b.version, b.content_hash), []).append(entry)
    for members in groups.values():
        members.sort(key=lambda e: -e.record.metrics.get(_DEFAULT_SORT.key, -math.inf))
    return groups


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _ranks(members: Sequence[Entry], metric: Metric | None) -> list[int]:
    """Competition ranks ("1, 1, 3") of entries sorted by `metric`: entries whose values are equal at the shown
    precision (`_fmt`) share a rank; an entry without the value never ties. Without a sort metric: 1, 2, 3..."""
    ranks: list[int] = []
    previous = None
    for i, entry in enumerate(members):
        value = None if metric is None else entry.record.metrics.get(metric.key)
        shown = None if value is None else _fmt(value)
        ranks.append(ranks[-1] if shown is not None and shown == previous else i + 1)
        previous = shown
    return ranks


def _best(members: Sequence[Entry], metric: Metric) -> str | None:
    """The best value of `metric` as shown (`_fmt`), when some entry shows a worse one: every entry showing this
    value is highlighted, so ties share the highlight (and a column where all entries are equal, or only one has
    a value, highlights nothing)."""
    values = [e.record.metrics[metric.key] for e in members if metric.key in e.record.metrics]
    if len({_fmt(value) for value in values}) < 2:
        return None
    return _fmt(max(values) if metric.higher_is_better else min(values))


def _real(value: Any) -> float | None:
    """A finite real number from record details (free JSON: anything may be there), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def _spread(record: BenchmarkResult, metric: Metric) -> tuple[float, str] | None:
    """The ± of a metric where the record has it: (half-width, what it is).

    For a mean over items (the metric class names a `count_key`, e.g. CLIP-T's ``n_pairs``): the 95% confidence
    interval of the mean, z₀.₉₇₅ · s / √n with s the sample standard deviation (ddof 1) recovered from the
    recorded population std (`std_key`, e.g. ``clip_t_std``) as std · √(n / (n − 1)); needs n ≥ 2. Otherwise (KID)
    the recorded standard deviation itself (over KID's subsets). None when the record does not hold them."""
    details = record.metric_details.get(metric.details_key or "", {})
    std = _real(details.get(metric.std_key)) if isinstance(details, dict) else None
    if std is None or std < 0:
        return None
    if metric.count_key is None:
        return std, "standard deviation"
    n = details.get(metric.count_key)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        return None
    return _Z95 * std / math.sqrt(n - 1), f"95% confidence interval of the mean over {n} items"


def _value_text(record: BenchmarkResult, metric: Metric) -> str:
    value = record.metrics.get(metric.key)
    spread = None if value is None else _spread(record, metric)
    return _fmt(value) + ("" if spread is None else f" ± {_fmt(spread[0])}")


def _link(file: Path, base: Path) -> str:
    """`file` relative to the folder `base` (where the page is written), as a percent-encoded URL path: only
    unreserved characters, "%" escapes and "/" remain, so it is never absolute, never has a scheme, and closes
    no Markdown or HTML syntax."""
    relative = os.path.relpath(Path(file).resolve(), Path(base).resolve())
    return quote(Path(relative).as_posix(), safe="/")


def _links(entry: Entry, base: Path) -> list[tuple[str, str]]:
    """(label, relative URL) of the entry's result file and sample grid."""
    files = [("result.json", entry.result_file), ("samples", entry.grid_file)]
    return [(label, _link(file, base)) for label, file in files if file is not None]


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


def _md_name(entry: Entry) -> str:
    """The display name, and the model id on a second line when a display name is set."""
    if entry.display_name is None:
        return _md_cell(entry.record.model.model_id)
    return f"{_md_cell(entry.display_name)}<br>{_md_cell(entry.record.model.model_id)}"


_LEGEND = (
    "↑ higher is better, ↓ lower is better; the best value of each column is highlighted (on every tied entry). "
    "Runs whose ranking value is equal at the shown precision share a rank. "
    "± is the 95% confidence interval of a mean over items (CLIP-T, CLIP-I, and the IoUs where the record "
    "holds their spread) or the standard deviation over KID's subsets."
)


def render_markdown(records: Sequence[BenchmarkResult | Entry], *, base: str | Path | None = None) -> str:
    """One Markdown table per benchmark set, best SG-IoU first. Entries with files get a Files column linking to
    them, relative to `base` (the folder the Markdown file is written to; default: the working directory)."""
    base = Path.cwd() if base is None else Path(base)
    lines = ["# CompSG-Bench leaderboard", ""]
    for (name, version, content_hash), members in _groups(_entries(records)).items():
        columns = _columns(members)
        links = [_links(entry, base) for entry in members]
        n = members[0].record.benchmark.n_samples
        lines += [f"## {_md_cell(name)} {_md_cell(version)} ({_md_code(content_hash[:12])}, {n} samples)", ""]
        header = ["#", "Model", "Adapter", "Settings", *(f"{_md_cell(m.label)} {m.arrow}" for m in columns)]
        header += ["Files"] if any(links) else []
        align = ["---"] * 4 + ["---:"] * len(columns) + ["---"] * any(links)
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        best = {m.key: _best(members, m) for m in columns}
        ranks = _ranks(members, _DEFAULT_SORT if _DEFAULT_SORT in columns else None)
        for rank, entry, files in zip(ranks, members, links, strict=True):
            record = entry.record
            cells = [str(rank), _md_name(entry), _md_cell(record.model.adapter), _md_cell(_settings(record))]
            for m in columns:
                text, value = _value_text(record, m), record.metrics.get(m.key)
                shown = _fmt(value)
                cells.append(
                    f"**{shown}**{text[len(shown) :]}" if value is not None and shown == best[m.key] else text
                )
            if any(links):
                cells.append(" · ".join(f"[{label}]({url})" for label, url in files) or "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(_LEGEND + " Each record's provenance is in its JSON file.")
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
    let rank = 0, previous;
    groups.forEach((g, i) => {
      const shown = g.rows[0].cells[col].dataset.shown;
      rank = shown !== undefined && shown === previous ? rank : i + 1;
      previous = shown;
      g.rows[0].cells[0].textContent = rank;
      table.appendChild(g);
    });
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
td.best { font-weight: bold; background: #e6f2e6; }
td small { color: #666; }
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


def _name_cell(entry: Entry) -> str:
    name = _e(entry.record.model.model_id)
    if entry.display_name is not None:
        name = f"{_e(entry.display_name)}<br><small>{name}</small>"
    return f"<td title='{_e(_provenance_summary(entry.record))}'>{name}</td>"


def _metric_cell(record: BenchmarkResult, metric: Metric, best: str | None) -> str:
    value = record.metrics.get(metric.key)
    if value is None:
        return f"<td class='num'>{_e(_fmt(value))}</td>"
    shown = _fmt(value)
    spread = _spread(record, metric)
    classes = "num best" if shown == best else "num"
    title = "" if spread is None else f" title='± {_e(spread[1])}'"
    return (
        f"<td class='{classes}' data-value='{_e(repr(float(value)))}' data-shown='{_e(shown)}'{title}>"
        f"{_e(_value_text(record, metric))}</td>"
    )


def _table(members: Sequence[Entry], columns: Sequence[Metric], base: Path) -> str:
    head = [
        "<th>#</th>",
        "<th><button data-dir='1'>Model</button></th>",
        "<th>Adapter</th>",
        "<th>Settings</th>",
    ]
    for metric in columns:
        default = " data-default" if metric == _DEFAULT_SORT else ""
        direction = -1 if metric.higher_is_better else 1
        head.append(
            f"<th><button data-dir='{direction}'{default} title='sort by {_e(metric.label)}'>"
            f"{_e(metric.label)} {metric.arrow}</button></th>"
        )
    if _DEFAULT_SORT not in columns:
        head[1] = "<th><button data-dir='1' data-default>Model</button></th>"
    links = [_links(entry, base) for entry in members]
    if any(links):
        head.append("<th>Files</th>")
    best = {m.key: _best(members, m) for m in columns}
    ranks = _ranks(members, _DEFAULT_SORT if _DEFAULT_SORT in columns else None)
    bodies = []
    for rank, entry, files in zip(ranks, members, links, strict=True):
        record = entry.record
        cells = [
            f"<td>{rank}</td>",
            _name_cell(entry),
            f"<td>{_e(record.model.adapter)}</td>",
            f"<td>{_e(_settings(record))}</td>",
        ]
        cells += [_metric_cell(record, metric, best[metric.key]) for metric in columns]
        if any(links):
            anchors = " · ".join(f"<a href='{_e(url)}'>{_e(label)}</a>" for label, url in files)
            cells.append(f"<td>{anchors or '–'}</td>")
        details = (
            f"<tr class='details'><td></td><td colspan='{len(cells) - 1}'><details><summary>provenance</summary>"
            f"<pre>{_e(_details(record))}</pre></details></td></tr>"
        )
        bodies.append(f"<tbody><tr class='entry'>{''.join(cells)}</tr>{details}</tbody>")
    return f"<table class='board'><thead><tr>{''.join(head)}</tr></thead>{''.join(bodies)}</table>"


def axis_range(values: Sequence[float], metric: Metric) -> tuple[float, float]:
    """The span of a chart axis for `values` of `metric`: it always includes 0, and the metric's plot bounds
    where it has them (IoUs 0–1, CLIP-T 0–100, CLIP-I 0–1, FID and CMMD from 0), stretched to the data if a
    value lies outside. So bar lengths and point positions are proportional to the values: two IoUs 0.01 apart
    differ by 1% of the axis, never by its full width. All zeros give the axis 0–1."""
    bounds = [b for b in (metric.lower_bound, metric.upper_bound) if b is not None]
    low, high = min([0.0, *bounds, *values]), max([0.0, *bounds, *values])
    return (low, high) if high > low else (low, low + 1.0)


def _bar_chart(members: Sequence[Entry], metric: Metric) -> str:
    rows = [(e.name, e.record.metrics[metric.key]) for e in members if metric.key in e.record.metrics]
    label_w, bar_w, row_h = 180, 220, 20
    low, high = axis_range([v for _, v in rows], metric)

    def x(value: float) -> float:
        return label_w + (value - low) / (high - low) * bar_w

    parts = []
    for i, (name, value) in enumerate(rows):
        y = i * row_h
        left, right = sorted((x(0.0), x(value)))
        short = name if len(name) <= 28 else "…" + name[-27:]
        color = "#4c78a8" if value >= 0 else "#e45756"
        parts.append(
            f"<text x='{label_w - 6}' y='{y + 14}' text-anchor='end'>{_e(short)}<title>{_e(name)}</title></text>"
            f"<rect x='{left:.2f}' y='{y + 3}' width='{right - left:.2f}' height='{row_h - 6}' fill='{color}' "
            f"data-value='{_e(repr(float(value)))}'><title>{_e(name)}: {_e(_fmt(value))}</title></rect>"
            f"<text x='{right + 4:.1f}' y='{y + 14}'>{_e(_fmt(value))}</text>"
        )
    axis_y = max(len(rows), 1) * row_h
    axis = (
        f"<line x1='{x(0.0):.2f}' y1='0' x2='{x(0.0):.2f}' y2='{axis_y}' stroke='#888'/>"
        f"<text class='tick' x='{label_w}' y='{axis_y + 14}' data-value='{_e(repr(low))}'>{_e(_fmt(low))}</text>"
        f"<text class='tick' x='{label_w + bar_w}' y='{axis_y + 14}' text-anchor='end' "
        f"data-value='{_e(repr(high))}'>{_e(_fmt(high))}</text>"
    )
    return (
        f"<figure><figcaption>{_e(metric.label)} {metric.arrow}</figcaption>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 60}' height='{axis_y + 20}' "
        f"role='img' aria-label='{_e(metric.label)}'>{axis}{''.join(parts)}</svg></figure>"
    )


def _scatter(members: Sequence[Entry]) -> str:
    x_key, y_key = _SCATTER_AXES
    columns = {m.key: m for m in METRICS}
    points = [
        (e.name, e.record.metrics[x_key], e.record.metrics[y_key])
        for e in members
        if {x_key, y_key} <= e.record.metrics.keys()
    ]
    if not points:
        return ""
    size, pad = 320, 48
    x_low, x_high = axis_range([p[1] for p in points], columns[x_key])
    y_low, y_high = axis_range([p[2] for p in points], columns[y_key])

    marks = []
    for name, x, y in points:
        cx = pad + (x - x_low) / (x_high - x_low) * (size - 2 * pad)
        cy = size - pad - (y - y_low) / (y_high - y_low) * (size - 2 * pad)
        short = name if len(name) <= 20 else "…" + name[-19:]
        marks.append(
            f"<circle cx='{cx:.2f}' cy='{cy:.2f}' r='5' fill='#4c78a8'>"
            f"<title>{_e(name)}: FID {_e(_fmt(x))}, SG-IoU {_e(_fmt(y))}</title></circle>"
            # labels of points in the right half grow leftwards (below the point) so they stay inside the plot
            + (
                f"<text x='{cx + 7:.1f}' y='{cy - 7:.1f}'>"
                if cx <= size / 2
                else f"<text x='{cx - 7:.1f}' y='{cy + 16:.1f}' text-anchor='end'>"
            )
            + f"{_e(short)}</text>"
        )
    axes = (
        f"<line x1='{pad}' y1='{size - pad}' x2='{size - pad}' y2='{size - pad}' stroke='#888'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{size - pad}' stroke='#888'/>"
        f"<text x='{size / 2}' y='{size - 12}' text-anchor='middle'>FID ↓ (axis {_e(_fmt(x_low))} – "
        f"{_e(_fmt(x_high))})</text>"
        f"<text x='14' y='{size / 2}' text-anchor='middle' transform='rotate(-90 14 {size / 2})'>"
        f"SG-IoU ↑ (axis {_e(_fmt(y_low))} – {_e(_fmt(y_high))})</text>"
    )
    return (
        "<figure><figcaption>SG-IoU vs FID</figcaption>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' role='img' "
        f"aria-label='SG-IoU versus FID'>{axes}{''.join(marks)}</svg></figure>"
    )


def render_html(records: Sequence[BenchmarkResult | Entry], *, base: str | Path | None = None) -> str:
    """A self-contained page: per benchmark set a sortable table, bar charts and a scatter plot. Entries with
    files get a Files column linking to them, relative to `base` (the folder the page is written to; default:
    the working directory)."""
    base = Path.cwd() if base is None else Path(base)
    sections = []
    for (name, version, content_hash), members in _groups(_entries(records)).items():
        columns = _columns(members)
        charts = [_bar_chart(members, m) for m in columns] + [_scatter(members)]
        sections.append(
            f"<section><h2>{_e(name)} {_e(version)} <small>(<code>{_e(content_hash[:12])}</code>, "
            f"{members[0].record.benchmark.n_samples} samples)</small></h2>"
            f"{_table(members, columns, base)}<div class='charts'>{''.join(charts)}</div></section>"
        )
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>CompSG-Bench leaderboard</title><style>{_STYLE}</style></head><body>"
        "<h1>CompSG-Bench leaderboard</h1>"
        "<p>Click a column header to sort. Hover a model for its provenance; open a row's details for the full "
        f"record. {_e(_LEGEND)} Chart axes start at 0 (and span a metric's full range where it is bounded).</p>"
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
    run_dir = (
        Path(run_dir)
        if run_dir is not None
        else (record_path if record_path.is_dir() else record_path.parent)
    )
    try:
        metrics, details = recompute(record, run_dir, num_actors=num_actors)
    except ValueError as exc:  # missing or extra images, a changed benchmark file (BenchmarkHashError)
        return [f"cannot recompute: {exc}"]
    problems = []
    stored_images = record.metric_details.get("images", {}).get("sha256")
    if stored_images != details["images"]["sha256"]:
        problems.append(
            f"images: digest {details['images']['sha256']} differs from the record's {stored_images}"
        )
    for key in sorted(record.metrics.keys() | metrics.keys()):
        old, new = record.metrics.get(key), metrics.get(key)
        if old is None or new is None or not math.isclose(old, new, rel_tol=rel_tol, abs_tol=abs_tol):
            problems.append(f"{key}: recorded {old!r}, recomputed {new!r}")
    return problems


def _with_grid(entry: Entry, out: Path, max_images: int) -> Entry:
    """The entry with a sample grid of its run's images (the folder of its result file), written to
    OUT/samples/{sha256 of the result file's path}.png, when there are images to show."""
    if entry.result_file is None or max_images < 1:
        return entry
    name = hashlib.sha256(str(entry.result_file.resolve()).encode()).hexdigest()[:16]
    grid = sample_grid(entry.result_file.parent, out / SAMPLES_DIR / f"{name}.png", max_images=max_images)
    return Entry(entry.record, entry.result_file, grid)


class RenderSettings(JobSettings):
    """Settings of `python -m benchmark.leaderboard render`."""

    runs: CliPositionalArg[list[Path]] = Field(
        [], description="result.json files or run directories (at least one; `runs:` in --config)"
    )
    output: Path = Field(description="the folder to write leaderboard.md, index.html and samples/ to")
    skip_invalid: bool = Field(False, description="render the valid records and warn about invalid ones (off: exit 2)")
    grid_images: int = Field(8, ge=0, description="images per run in the sample grid linked from each row (0: no grids)")


class VerifySettings(JobSettings):
    """Settings of `python -m benchmark.leaderboard verify`."""

    record: CliPositionalArg[Path | None] = Field(
        None, description="a result.json file or a run directory (required; `record:` in --config)"
    )
    run_dir: Path | None = Field(None, description="where the run's images are (unset: the record's folder)")
    num_actors: int = Field(0, ge=0, description="Ray actors for the judge and the features (0: in this process)")
    rel_tol: float = Field(1e-6, ge=0, description="relative tolerance of a recomputed metric")
    abs_tol: float = Field(1e-9, ge=0, description="absolute tolerance of a recomputed metric")


# subcommand -> (its settings, its help line)
SUBCOMMANDS: dict[str, tuple[type[JobSettings], str]] = {
    "render": (RenderSettings, "render records to DIR/leaderboard.md and DIR/index.html"),
    "verify": (VerifySettings, "recompute a record's metrics from its stored images (exit 1 on any difference)"),
}


def _parse(command: str, argv: list[str]) -> JobSettings:
    """A subcommand's settings; exits 2 (with its usage) on bad input or a missing positional record."""
    settings_cls, help_line = SUBCOMMANDS[command]
    prog = f"{PROG} {command}"
    settings = parse_settings(settings_cls, argv, prog=prog, description=help_line)
    missing = (
        "RUNS: give at least one result.json file or run directory"
        if isinstance(settings, RenderSettings) and not settings.runs
        else "RECORD: give a result.json file or a run directory"
        if isinstance(settings, VerifySettings) and settings.record is None
        else None
    )
    if missing:
        settings_parser(settings_cls, prog=prog, description=help_line)[0].error(missing)
    return settings


def _top_parser() -> argparse.ArgumentParser:
    """`--help` and `--version` of the command itself, listing the subcommands (each has its own `--help`)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"laion-sg {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{render,verify}", required=True)
    for name, (_, help_line) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _render(settings: RenderSettings) -> int:
    try:
        entries = load_entries(settings.runs, skip_invalid=settings.skip_invalid)
    except RecordError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print("leaderboard: error: no valid result record to render", file=sys.stderr)
        return 2
    out = settings.output
    out.mkdir(parents=True, exist_ok=True)
    entries = [_with_grid(entry, out, settings.grid_images) for entry in entries]
    (out / "leaderboard.md").write_text(render_markdown(entries, base=out), encoding="utf-8")
    (out / "index.html").write_text(render_html(entries, base=out), encoding="utf-8")
    print(f"rendered {len(entries)} records to {out / 'leaderboard.md'} and {out / 'index.html'}")
    return 0


def _verify(settings: VerifySettings) -> int:
    assert settings.record is not None  # `_parse` refuses settings without one
    try:
        problems = verify_record(
            settings.record,
            settings.run_dir,
            num_actors=settings.num_actors,
            rel_tol=settings.rel_tol,
            abs_tol=settings.abs_tol,
        )
    except RecordError as exc:
        print(f"leaderboard: error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print("verify: " + ("FAILED" if problems else "ok, every metric reproduced"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in SUBCOMMANDS:
        parser = _top_parser()
        parser.parse_args(args)  # --help, --version, or an error naming the subcommands: all exit
        parser.error("the subcommand (render or verify) comes first")  # e.g. after a stray "--"
    settings = _parse(args[0], args[1:])
    if isinstance(settings, RenderSettings):
        return _render(settings)
    assert isinstance(settings, VerifySettings)
    return _verify(settings)


if __name__ == "__main__":
    raise SystemExit(main())
