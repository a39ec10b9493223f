"""The leaderboard as a static, self-contained HTML page (`render_html`).

The page needs nothing outside itself to display: per benchmark set a sortable table (a few lines of inline
JavaScript, allowed by a Content-Security-Policy hash and nothing else), one inline-SVG bar chart per metric,
an SG-IoU-vs-FID scatter plot, and each record's provenance in a details row and in the model cell's title.
Chart axes follow one rule (`axis_range`): each axis includes 0 and the metric's bounds where it has them
(IoUs 0–1, CLIP-T 0–100, CLIP-I 0–1), so lengths are proportional to values and a 0.01 difference never fills
the chart. Every text taken from a record is escaped with `html.escape` (quotes included); the only links are
the Files links (`benchmark.leaderboard.table.file_links`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.leaderboard.records import METRICS, TRACKS, Entry, Metric
from benchmark.leaderboard.table import (
    LEGEND,
    as_entries,
    benchmark_groups,
    best_shown,
    competition_ranks,
    file_links,
    format_value,
    metric_spread,
    provenance_summary,
    settings_text,
    track_tables,
    value_text,
)
from schemas import BenchmarkResult

_SCATTER_AXES = ("fid", "sg_iou")

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
    return f"<td title='{_e(provenance_summary(entry.record))}'>{name}</td>"


def _metric_cell(record: BenchmarkResult, metric: Metric, best: str | None) -> str:
    value = record.metrics.get(metric.key)
    if value is None:
        return f"<td class='num'>{_e(format_value(value))}</td>"
    shown = format_value(value)
    spread = metric_spread(record, metric)
    classes = "num best" if shown == best else "num"
    title = "" if spread is None else f" title='± {_e(spread[1])}'"
    return (
        f"<td class='{classes}' data-value='{_e(repr(float(value)))}' data-shown='{_e(shown)}'{title}>"
        f"{_e(value_text(record, metric))}</td>"
    )


def _table(members: Sequence[Entry], columns: Sequence[Metric], base: Path, sort: Metric | None) -> str:
    head = [
        "<th>#</th>",
        "<th><button data-dir='1'>Model</button></th>",
        "<th>Adapter</th>",
        "<th>Settings</th>",
    ]
    for metric in columns:
        default = " data-default" if metric == sort else ""
        direction = -1 if metric.higher_is_better else 1
        head.append(
            f"<th><button data-dir='{direction}'{default} title='sort by {_e(metric.label)}'>"
            f"{_e(metric.label)} {metric.arrow}</button></th>"
        )
    if sort is None:
        head[1] = "<th><button data-dir='1' data-default>Model</button></th>"
    links = [file_links(entry, base) for entry in members]
    if any(links):
        head.append("<th>Files</th>")
    best = {m.key: best_shown(members, m) for m in columns}
    ranks = competition_ranks(members, sort)
    bodies = []
    for rank, entry, files in zip(ranks, members, links, strict=True):
        record = entry.record
        cells = [
            f"<td>{rank}</td>",
            _name_cell(entry),
            f"<td>{_e(record.model.adapter)}</td>",
            f"<td>{_e(settings_text(record))}</td>",
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
            f"data-value='{_e(repr(float(value)))}'><title>{_e(name)}: {_e(format_value(value))}</title></rect>"
            f"<text x='{right + 4:.1f}' y='{y + 14}'>{_e(format_value(value))}</text>"
        )
    axis_y = max(len(rows), 1) * row_h
    axis = (
        f"<line x1='{x(0.0):.2f}' y1='0' x2='{x(0.0):.2f}' y2='{axis_y}' stroke='#888'/>"
        f"<text class='tick' x='{label_w}' y='{axis_y + 14}' data-value='{_e(repr(low))}'>{_e(format_value(low))}</text>"
        f"<text class='tick' x='{label_w + bar_w}' y='{axis_y + 14}' text-anchor='end' "
        f"data-value='{_e(repr(high))}'>{_e(format_value(high))}</text>"
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
            f"<title>{_e(name)}: FID {_e(format_value(x))}, SG-IoU {_e(format_value(y))}</title></circle>"
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
        f"<text x='{size / 2}' y='{size - 12}' text-anchor='middle'>FID ↓ (axis {_e(format_value(x_low))} – "
        f"{_e(format_value(x_high))})</text>"
        f"<text x='14' y='{size / 2}' text-anchor='middle' transform='rotate(-90 14 {size / 2})'>"
        f"SG-IoU ↑ (axis {_e(format_value(y_low))} – {_e(format_value(y_high))})</text>"
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
    for (name, version, content_hash), members in benchmark_groups(as_entries(records)).items():
        tracks = []
        for track, columns, ranked, sort in track_tables(members):
            charts = [_bar_chart(ranked, m) for m in columns] + ([_scatter(ranked)] if track == "compsg" else [])
            tracks.append(
                f"<section class='track' data-track='{_e(track)}'><h3>{_e(TRACKS[track])}</h3>"
                f"{_table(ranked, columns, base, sort)}<div class='charts'>{''.join(charts)}</div></section>"
            )
        sections.append(
            f"<section><h2>{_e(name)} {_e(version)} <small>(<code>{_e(content_hash[:12])}</code>, "
            f"{members[0].record.benchmark.n_samples} samples)</small></h2>{''.join(tracks)}</section>"
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
        f"record. {_e(LEGEND)} Chart axes start at 0 (and span a metric's full range where it is bounded).</p>"
        f"{''.join(sections)}<script>{_SCRIPT}</script></body></html>\n"
    )
