"""The CompSG-Bench leaderboard: result records → Markdown and a static, self-contained HTML page; and `verify`,
which recomputes a record's metrics from its stored images.

    python -m benchmark.leaderboard render RECORD_OR_RUN_DIR... --output DIR   # DIR/leaderboard.md, DIR/index.html
    python -m benchmark.leaderboard verify RECORD [--run-dir RUN_DIR]          # exit 1 on any difference

Records of different benchmark sets (version or content hash) are not comparable and get separate tables.
Every text taken from a record is escaped in both outputs, and neither makes a link from record text.

One module per responsibility: `records` (the columns and strict reading of result records), `table` (what
both renderers show: groups, ranks, ties, best values, spreads, links), `markdown` and `page` (the two
renderers, the page with its inline-SVG charts), `grid` (the sample grids), `verify` (recomputing a record)
and `cli` (the command line). The names below are the package's interface.
"""

from benchmark.leaderboard.cli import RenderSettings, VerifySettings, main
from benchmark.leaderboard.grid import sample_grid
from benchmark.leaderboard.markdown import render_markdown
from benchmark.leaderboard.page import axis_range, render_html
from benchmark.leaderboard.records import METRICS, Entry, Metric, RecordError, load_entries, load_records
from benchmark.leaderboard.verify import verify_record

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
