"""What a run reports: `RunSummary` (``OUT/summary.json`` and the closing text) and `Progress` (the periodic
progress line)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.annotate.writing import ShardResult
from pipelines.ingest import Shard

__all__ = ["OutputTotals", "Progress", "RunSummary"]

logger = logging.getLogger(__name__)


@dataclass
class OutputTotals:
    """Counts over every finished shard of the output (all runs so far), not only this run's."""

    shards_done: int = 0
    rows_in: int = 0
    rows_filtered: dict[str, int] = field(default_factory=dict)
    rows_annotated: int = 0
    ok: int = 0
    repaired: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, result: ShardResult) -> None:
        self.shards_done += 1
        self.rows_in += result.filters.rows_in
        self.rows_filtered = dict(Counter(self.rows_filtered) + Counter(result.filters.removed))
        self.rows_annotated += result.rows
        self.ok += result.status["ok"]
        self.repaired += result.status["repaired"]
        self.failed += result.status["failed"]
        self.failed_by_reason = dict(Counter(self.failed_by_reason) + result.failures)

    def lines(self) -> list[str]:
        filtered = sum(self.rows_filtered.values())
        lines = [
            f"rows: {self.rows_in} in, {filtered} filtered {self.rows_filtered or ''}".rstrip(),
            f"annotated: {self.rows_annotated} = {self.ok} ok + {self.repaired} repaired + {self.failed} failed",
        ]
        return lines + [f"  failed: {reason}: {n}" for reason, n in sorted(self.failed_by_reason.items())]


@dataclass
class RunSummary(OutputTotals):
    """The run summary written to ``OUT/summary.json``: this run's own figures at the top level, and in `output`
    the totals over the whole output directory (what a re-run that had nothing left to do still reports).
    No secrets: not even the name of the API-key variable."""

    task: str = ""
    prompt_version: str = ""
    model: str = ""
    engine: str = ""
    input: str = ""
    input_format: str = ""
    output_dir: str = ""
    shards_total: int = 0
    shards_skipped: int = 0
    shards_superseded: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    planning_seconds: float = 0.0  # listing the shards and planning de-duplication (Ray's start aside)
    startup_seconds: float | None = None
    rows_per_second: float = 0.0
    images: bool = True
    output: OutputTotals = field(default_factory=OutputTotals)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        unit = "images/s" if self.images else "rows/s"
        lines = [
            f"annotate: task={self.task} ({self.prompt_version}) engine={self.engine} model={self.model}",
            f"  shards: {self.shards_total} total, {self.shards_done} written, {self.shards_skipped} already done, "
            f"{len(self.shards_failed)} failed"
            + (f", {len(self.shards_superseded)} superseded" if self.shards_superseded else ""),
            *(f"  this run: {line}" for line in OutputTotals.lines(self)),
            *(f"  whole output: {line}" for line in self.output.lines()),
        ]
        lines += [f"  shard failed: {name}: {reason}" for name, reason in sorted(self.shards_failed.items())]
        startup = (
            "" if self.startup_seconds is None else f" ({self.startup_seconds:.1f} s until the first result)"
        )
        lines.append(
            f"  {self.rows_per_second:.2f} {unit}, {self.wall_seconds:.1f} s wall "
            f"({self.planning_seconds:.1f} s planning){startup}"
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """The progress of a run, logged (``INFO`` on this module's logger, which `main` sends to stderr) every
    `interval` seconds by a background thread, so that it shows while the model loads and whether or not stdout
    is a terminal, and once more by `finish`. A line: rows done of the expected total, the rate, the ETA, the
    failed rows so far and the finished shards.

    The expected total is exact for the shards whose rows have started to arrive (every row carries its shard's
    row count); a shard not seen yet counts as its planned size (the files of a folder chunk, the row range of a
    Parquet slice), else as the mean of the shards seen. `unit` is ``images`` or ``rows`` (text-only tasks).
    """

    def __init__(
        self,
        shards: list[Shard],
        unit: str,
        interval: float,
        clock: Callable[[], float] = time.perf_counter,
        start: float | None = None,
    ):
        self.unit, self.interval, self.clock = unit, interval, clock
        self.start = clock() if start is None else start
        self.planned = {shard.name: self._planned_rows(shard) for shard in shards}
        self.shard_rows: dict[str, int] = {}
        self.arrived: Counter[str] = Counter()
        self.rows = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _planned_rows(shard: Shard) -> int | None:
        planned = None
        if shard.files:
            planned = len(shard.files)
        elif shard.row_stop is not None:
            planned = shard.row_stop - shard.row_start
        if shard.row_limit is not None:  # the shard where an annotate --limit falls
            planned = shard.row_limit if planned is None else min(planned, shard.row_limit)
        return planned

    def add(self, batch: pa.Table) -> list[str]:
        """Count one batch of postprocessed rows (with ``_shard``, ``_shard_rows`` and ``annotation``); return
        the shards whose last row this batch brought."""
        status = pc.struct_field(batch.column("annotation"), "status")
        failed = pc.sum(pc.equal(status, "failed")).as_py() or 0
        names = batch.column("_shard").to_pylist()
        sizes = batch.column("_shard_rows").to_pylist()
        with self._lock:
            self.rows += batch.num_rows
            self.failed += failed
            for name, size in zip(names, sizes, strict=True):
                self.arrived[name] += 1
                self.shard_rows[name] = size
            return sorted({name for name in names if self.arrived[name] == self.shard_rows[name]})

    def expected_rows(self) -> int | None:
        """The expected number of rows of the run (None while nothing tells)."""
        with self._lock:
            known = dict(self.shard_rows)
        unseen = [self.planned[name] for name in self.planned if name not in known]
        guess = sum(known.values()) / len(known) if known else None
        if any(size is None for size in unseen) and guess is None:
            return None
        return sum(known.values()) + round(sum(guess if size is None else size for size in unseen))

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        expected = self.expected_rows()
        with self._lock:
            rows, failed = self.rows, self.failed
            done = sum(1 for name, n in self.arrived.items() if n >= self.shard_rows[name])
        rate = rows / elapsed
        if expected is None:
            of, eta = " rows", "?"
        else:
            expected = max(expected, rows)
            of = f" of ~{expected} rows ({100 * rows / expected if expected else 100:.0f}%)"
            eta = _duration((expected - rows) / rate) if rate else "?"
        return (
            f"progress: {rows}{of}, {rate:.2f} {self.unit}/s, ETA {eta}, {failed} failed so far, "
            f"{done} of {len(self.planned)} shards complete, {_duration(elapsed)} elapsed"
        )

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            logger.info("%s", self.line())

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._tick, name="annotate-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.finish()

    def finish(self) -> None:
        logger.info("%s", self.line().replace("progress:", "progress (done):", 1))
