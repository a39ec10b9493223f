"""The tally of unusable rows (hostile inputs), and batches refilled to full size around them.

Collators split into ``decode`` (per row, skips and names what it skips, as a `Decoded`; runs in Ray's prefetch
threads) and ``assemble`` (stacks and tokenizes). `rebatch` refills batches to full size from what survives and
counts the skipped rows into a `BadRows` tally (counts and the first few keys with reasons, never a list of every
row); too many bad rows, or none usable, end the run with `BadDataError`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.rows import ANNOTATION_FAILED

if TYPE_CHECKING:
    from training.batches import TrainBatch

__all__ = [
    "BadDataError",
    "BadRows",
    "Decoded",
    "NoUsableRowsError",
    "exit_on_bad_data",
    "first_usable_row",
    "rebatch",
]

log = logging.getLogger(__name__)


class BadDataError(ValueError):
    """The training data has too many unusable rows (or none usable); the message names counts and keys."""


class NoUsableRowsError(BadDataError):
    """Not a single row of the train split can train."""


def _data_error_behind(exc: BaseException) -> BadDataError | None:
    """The `BadDataError` behind `exc` (Ray Train wraps a worker's error: `WorkerGroupError.worker_failures`),
    if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, BadDataError):
            return error
        stack += [error.__cause__, error.__context__, getattr(error, "cause", None)]
        stack += [getattr(error, "controller_failure", None), *getattr(error, "worker_failures", {}).values()]
    return None


def exit_on_bad_data(exc: BaseException) -> int:
    """A training job's answer to an error of its run: exit code 2 with ``error: <first line>`` on stderr when a
    `BadDataError` is behind `exc` (also one a Ray Train worker raised); any other error is raised again."""
    error = _data_error_behind(exc)
    if error is None:
        raise exc
    line = str(error).splitlines()[0] if str(error) else repr(error)
    print(f"error: {line}", file=sys.stderr)
    return 2


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class BadRows:
    """A running tally of one pass over a split: rows seen, rows skipped because their annotation failed
    (expected), and unusable rows (faults: counted toward ``--max-bad-fraction``) with the first `keep` of those
    as (key, reason). Counts only: it never holds every skipped row."""

    seen: int = 0
    failed_annotation: int = 0
    bad: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    keep: int = 5

    def add(self, seen: int, skipped: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Count `seen` rows of which `skipped` (key, reason) were skipped; return the newly kept examples."""
        self.seen += seen
        new = []
        for key, reason in skipped:
            if reason == ANNOTATION_FAILED:
                self.failed_annotation += 1
                continue
            self.bad += 1
            if len(self.examples) < self.keep and all(key != k for k, _ in self.examples):
                self.examples.append((key, reason))
                new.append((key, reason))
        return new

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def exceeds(self, max_fraction: float, total_rows: int = 0) -> bool:
        """Whether the bad rows are certainly more than `max_fraction` of the split: of `total_rows` (the split's
        size, known before the pass ends) or of the rows seen, whichever is larger (later epochs)."""
        return self.bad > max_fraction * max(total_rows, self.seen)

    def merge_examples(self, groups: Iterable[Iterable[Sequence[str]]]) -> None:
        """Fill `examples` (up to `keep`) from other tallies' examples, e.g. those of every worker."""
        for group in groups:
            for key, reason in group:
                if len(self.examples) < self.keep and all(key != k for k, _ in self.examples):
                    self.examples.append((str(key), str(reason)))

    def first(self) -> str:
        return "; ".join(f"{key} ({_short(reason)})" for key, reason in self.examples) or "none recorded"

    def describe(self) -> str:
        """One line: counts, fraction and the first keys with their reasons."""
        text = f"{self.bad} of {self.seen} rows unusable ({self.fraction:.2%})"
        if self.failed_annotation:
            text += f", {self.failed_annotation} skipped with a failed annotation"
        return text + (f"; first: {self.first()}" if self.bad else "")

    def summary(self) -> dict[str, Any]:
        """For metrics and summaries (JSON)."""
        return {
            "rows_seen": self.seen,
            "bad_rows": self.bad,
            "bad_fraction": self.fraction,
            "failed_annotation_rows": self.failed_annotation,
            "bad_row_examples": [f"{key}: {_short(reason)}" for key, reason in self.examples],
        }


@dataclass
class Skipped:
    index: int  # position in the decoded rows
    key: str
    reason: str


@dataclass
class Decoded:
    """What a collator's ``decode`` made of some rows: the usable ones (in order, with their positions) and the
    skipped ones with their reasons."""

    rows: int
    samples: list[Any] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, index: int, key: str, reason: str) -> None:
        self.skipped.append(Skipped(index, key, reason))

    def keep(self, index: int, sample: Any) -> None:
        self.kept.append(index)
        self.samples.append(sample)


def rebatch(
    decoded: Iterable[Decoded],
    batch_size: int,
    assemble: Callable[[list[Any]], TrainBatch],
    *,
    drop_last: bool,
    tally: BadRows | None = None,
) -> Iterator[TrainBatch]:
    """Full batches of `batch_size` usable samples out of decoded chunks (skipped rows leave no holes), counting
    every chunk into `tally` (and logging its first bad rows) as it is consumed; the last partial batch is
    dropped when `drop_last`."""
    tally = BadRows() if tally is None else tally
    buffer: list[Any] = []
    for chunk in decoded:
        for key, reason in tally.add(chunk.rows, [(s.key, s.reason) for s in chunk.skipped]):
            log.warning("skipping unusable row %s: %s", key, _short(reason, 300))
        buffer.extend(chunk.samples)
        while len(buffer) >= batch_size:
            yield assemble(buffer[:batch_size])
            buffer = buffer[batch_size:]
    if buffer and not drop_last:
        yield assemble(buffer)


def first_usable_row(files: Sequence[str | Path], decode: Callable[[list[dict]], Decoded], chunk: int = 16) -> BadRows:
    """Read `files` in chunks until one row decodes; return the tally of what was read. Cheap when the data is
    fine (one chunk); reads everything when no row is usable (then ``tally.seen`` counts every row)."""
    import pyarrow.parquet as pq

    tally = BadRows()
    for f in files:
        for record_batch in pq.ParquetFile(f).iter_batches(batch_size=chunk):
            decoded = decode(record_batch.to_pylist())
            tally.add(decoded.rows, [(s.key, s.reason) for s in decoded.skipped])
            if decoded.samples:
                return tally
    return tally
