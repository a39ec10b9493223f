"""Row filters (`IngestFilters`), what they removed and why (`FilterCounts`), and applying them to a shard's rows.

Every row a filter removes is counted under its reason, once. De-duplication is by `key` and keeps the first
row among those that pass the other filters; the keys already taken by earlier shards come from the
de-duplication pre-pass (`pipelines.ingest.planning.plan_dedupe`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pydantic
from pydantic import ConfigDict, Field

from pipelines.ingest.formats import INGEST_SCHEMA


@pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class IngestFilters:
    """Row filters. A bound of None is off. A row whose value is unknown fails a bound that is on.

    A validated dataclass: the annotate job's ``--filters.*`` flags are these fields, with these checks."""

    min_aesthetic_score: float | None = Field(None, description="keep rows with at least this aesthetic score")
    min_width: int | None = Field(None, ge=0, description="keep images at least this wide")
    min_height: int | None = Field(None, ge=0, description="keep images at least this high")
    max_pwatermark: float | None = Field(
        None, ge=0, le=1, description="keep rows with at most this watermark probability"
    )
    max_punsafe: float | None = Field(None, ge=0, le=1, description="keep rows with at most this NSFW probability")
    dedupe_urls: bool = Field(True, description="keep only the first row of each URL")


# The default of every `filters` argument: no bound, de-duplication on (a frozen instance, shared safely).
_DEFAULT_FILTERS = IngestFilters()


@dataclass
class FilterCounts:
    """Rows read, rows kept, and rows removed per reason (e.g. ``"aesthetic_score<6.5"``, ``"duplicate"``).

    Each removed row is counted once, under the first filter that removed it, in this order: not downloaded,
    no url or image, aesthetic score, width, height, pwatermark, punsafe, duplicate.
    """

    rows_in: int = 0
    rows_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: FilterCounts) -> FilterCounts:
        return FilterCounts(
            self.rows_in + other.rows_in,
            self.rows_out + other.rows_out,
            dict(Counter(self.removed) + Counter(other.removed)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for a job summary: ``rows in: 10, kept: 7, filtered: aesthetic_score<6.5: 2, duplicate: 1``."""
        removed = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.removed.items())) or "none"
        return f"rows in: {self.rows_in}, kept: {self.rows_out}, filtered: {removed}"


class _RowFilter:
    """Applies removal masks in order and counts each removed row once."""

    def __init__(self, n: int):
        self.keep = np.ones(n, dtype=bool)
        self.removed: Counter[str] = Counter()

    def drop(self, reason: str, mask: np.ndarray) -> None:
        hit = self.keep & mask
        if hit.any():
            self.removed[reason] += int(hit.sum())
        self.keep &= ~mask

    def bound(self, name: str, values: pa.ChunkedArray, limit: float | None, is_min: bool) -> None:
        if limit is None:
            return
        array = values.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        self.drop(f"{name} missing", np.isnan(array))
        with np.errstate(invalid="ignore"):
            self.drop(f"{name}{'<' if is_min else '>'}{limit:g}", array < limit if is_min else array > limit)


def _apply_filters(
    raw: pa.Table, filters: IngestFilters, drop_keys: frozenset[str]
) -> tuple[pa.Table, FilterCounts]:
    """The rows of a raw shard table (`pipelines.ingest.readers`) that pass `filters`, not counting `drop_keys`
    (keys owned by an earlier shard) as new, cast to `INGEST_SCHEMA`; and the `FilterCounts`."""
    rows = _RowFilter(raw.num_rows)
    rows.drop("not downloaded", ~raw.column("downloaded").to_numpy(zero_copy_only=False).astype(bool))
    keys = raw.column("key").to_pylist()
    rows.drop("no url or image", np.array([key is None for key in keys], dtype=bool))
    rows.bound("aesthetic_score", raw.column("aesthetic_score"), filters.min_aesthetic_score, is_min=True)
    rows.bound("width", raw.column("width"), filters.min_width, is_min=True)
    rows.bound("height", raw.column("height"), filters.min_height, is_min=True)
    rows.bound("pwatermark", raw.column("pwatermark"), filters.max_pwatermark, is_min=False)
    rows.bound("punsafe", raw.column("punsafe"), filters.max_punsafe, is_min=False)
    if filters.dedupe_urls:
        seen = set(drop_keys)
        duplicate = np.zeros(raw.num_rows, dtype=bool)
        for i, key in enumerate(keys):
            if rows.keep[i]:
                duplicate[i] = key in seen
                seen.add(key)
        rows.drop("duplicate", duplicate)
    kept = raw.filter(pa.array(rows.keep))
    # `width`/`height` hold the original size (metadata first, else the image header); the annotate job replaces
    # them with the stored image's decoded size and keeps these as `original_*`.
    kept = kept.append_column("original_width", kept.column("width"))
    kept = kept.append_column("original_height", kept.column("height"))
    kept = kept.select(INGEST_SCHEMA.names).cast(INGEST_SCHEMA)
    return kept, FilterCounts(raw.num_rows, kept.num_rows, dict(rows.removed))
