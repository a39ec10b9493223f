"""What both renderers show of a set of records, computed once: the groups (one table per benchmark set), the
columns, the shown values (4 significant digits) with their spread, ranks, best values, links and summaries.

Rows are ranked by SG-IoU (`DEFAULT_SORT`); values equal at the shown precision share a rank ("1, 1, 3"),
and the best value of each column is highlighted on every entry showing it. Where the record holds a spread, a
value is shown with ± its 95% confidence interval (means over items: CLIP-T, CLIP-I, and the IoUs if their std
is recorded) or its standard deviation (KID, over subsets). Links are relative to the output folder (which can
be moved or published together with the run directories' relative positions), percent-encoded URL paths of the
files read and written, never with a scheme.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any
from urllib.parse import quote

from benchmark.leaderboard.records import METRICS, TRACKS, Entry, Metric
from schemas import BenchmarkResult

DEFAULT_SORT = METRICS[0]  # the column rows are ranked by (SG-IoU)
_Z95 = NormalDist().inv_cdf(0.975)  # two-sided 95% normal quantile, 1.95996...


def as_entries(records: Sequence[BenchmarkResult | Entry]) -> list[Entry]:
    """Records as entries (an entry stays as it is; a bare record links to no files)."""
    return [r if isinstance(r, Entry) else Entry(r) for r in records]


def metric_columns(entries: Sequence[Entry]) -> list[Metric]:
    """The known metrics present in any record, then any other metric keys (sorted, assumed higher-better)."""
    present = {key for e in entries for key in e.record.metrics}
    known = [m for m in METRICS if m.key in present]
    extra = sorted(present - {m.key for m in METRICS})
    return known + [Metric(key, key, True) for key in extra]


def track_tables(members: Sequence[Entry]) -> list[tuple[str, list[Metric], list[Entry], Metric | None]]:
    """The tables of one benchmark set, one per track with a column present (`TRACKS` order; columns of unknown
    keys go to CompSG-Bench's): (track, columns, entries, sort metric). A table holds the entries with a value
    in one of its columns. CompSG-Bench's are ranked by SG-IoU (`DEFAULT_SORT`), another track's by its first
    column; entries without the value come last."""
    columns = metric_columns(members)
    tables = []
    for track in TRACKS:
        shown = [m for m in columns if m.track == track]
        if not shown:
            continue
        sort = DEFAULT_SORT if track == DEFAULT_SORT.track else shown[0]
        sort = sort if sort in shown else None
        ranked = [e for e in members if any(m.key in e.record.metrics for m in shown)]
        if sort is not None:
            sign = -1.0 if sort.higher_is_better else 1.0
            ranked.sort(key=lambda e: sign * e.record.metrics[sort.key] if sort.key in e.record.metrics else math.inf)
        tables.append((track, shown, ranked, sort))
    return tables


def benchmark_groups(entries: Sequence[Entry]) -> dict[tuple[str, str, str], list[Entry]]:
    """Entries per benchmark set, best SG-IoU first (stable: ties keep their input order)."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        b = entry.record.benchmark
        groups.setdefault((b.name, b.version, b.content_hash), []).append(entry)
    for members in groups.values():
        members.sort(key=lambda e: -e.record.metrics.get(DEFAULT_SORT.key, -math.inf))
    return groups


def format_value(value: float | None) -> str:
    """A value as both renderers show it: 4 significant digits, "–" when missing."""
    return "–" if value is None else f"{value:.4g}"


def competition_ranks(members: Sequence[Entry], metric: Metric | None) -> list[int]:
    """Competition ranks ("1, 1, 3") of entries sorted by `metric`: entries whose values are equal at the
    shown precision (`format_value`) share a rank; an entry without the value never ties. Without a sort
    metric: 1, 2, 3..."""
    ranks: list[int] = []
    previous = None
    for i, entry in enumerate(members):
        value = None if metric is None else entry.record.metrics.get(metric.key)
        shown = None if value is None else format_value(value)
        ranks.append(ranks[-1] if shown is not None and shown == previous else i + 1)
        previous = shown
    return ranks


def best_shown(members: Sequence[Entry], metric: Metric) -> str | None:
    """The best value of `metric` as shown (`format_value`), when some entry shows a worse one: every entry
    showing this value is highlighted, so ties share the highlight (and a column where all entries are equal,
    or only one has a value, highlights nothing)."""
    values = [e.record.metrics[metric.key] for e in members if metric.key in e.record.metrics]
    if len({format_value(value) for value in values}) < 2:
        return None
    return format_value(max(values) if metric.higher_is_better else min(values))


def _real(value: Any) -> float | None:
    """A finite real number from record details (free JSON: anything may be there), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


def metric_spread(record: BenchmarkResult, metric: Metric) -> tuple[float, str] | None:
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


def value_text(record: BenchmarkResult, metric: Metric) -> str:
    """The shown value of `metric`, with ± its spread where the record holds one (`metric_spread`)."""
    value = record.metrics.get(metric.key)
    spread = None if value is None else metric_spread(record, metric)
    return format_value(value) + ("" if spread is None else f" ± {format_value(spread[0])}")


def _link(file: Path, base: Path) -> str:
    """`file` relative to the folder `base` (where the page is written), as a percent-encoded URL path: only
    unreserved characters, "%" escapes and "/" remain, so it is never absolute, never has a scheme, and closes
    no Markdown or HTML syntax."""
    relative = os.path.relpath(Path(file).resolve(), Path(base).resolve())
    return quote(Path(relative).as_posix(), safe="/")


def file_links(entry: Entry, base: Path) -> list[tuple[str, str]]:
    """(label, relative URL) of the entry's result file and sample grid."""
    files = [("result.json", entry.result_file), ("samples", entry.grid_file)]
    return [(label, _link(file, base)) for label, file in files if file is not None]


def settings_text(record: BenchmarkResult) -> str:
    """The record's generation settings in one line (size, steps, guidance, images per prompt, seed)."""
    g = record.generation
    return f"{g.width}×{g.height}, {g.num_inference_steps} steps, cfg {g.guidance_scale:g}, {g.images_per_sample}/prompt, seed {g.seed}"


def provenance_summary(record: BenchmarkResult) -> str:
    """Where a record comes from, in one line: run, weights, git commit, version, devices, time, date."""
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


# what both renderers say under their tables
LEGEND = (
    "↑ higher is better, ↓ lower is better; the best value of each column is highlighted (on every tied entry). "
    "Runs whose ranking value is equal at the shown precision share a rank. "
    "± is the 95% confidence interval of a mean over items (CLIP-T, CLIP-I, and the IoUs where the record "
    "holds their spread) or the standard deviation over KID's subsets."
)
