"""The unit of reading, `Shard`: which files or rows it reads, its name, its de-duplication plan, its fingerprint.

`pipelines.ingest.planning.list_shards` makes them; `pipelines.ingest.readers.read_shard` reads one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pipelines.ingest.filters import IngestFilters


@dataclass(frozen=True)
class Shard:
    """One unit of reading (and of annotation output: one output file per shard).

    `path` is the Parquet or tar file, or for a folder the folder itself, with `files` the shard's images
    relative to it. Parquet files longer than `rows_per_shard` are cut into row ranges
    [`row_start`, `row_stop`). `name` is deterministic, filesystem-safe and unique within the input.
    `drop_keys` are keys already taken by an earlier shard, and `planned_with` the filters they were planned
    with (both filled by `plan_dedupe`). `content_id` identifies what the shard reads (file names and sizes,
    row range); `fingerprint` adds `drop_keys`, so that an output written for an earlier version of the shard
    (files added to a folder chunk, a tar rewritten, a key now owned by another shard) is recognised as stale.

    `row_limit` (set by `pipelines.ingest.planning.limit_rows` on the shard where an annotate ``--limit`` falls)
    caps the shard at its first `row_limit` rows, in input order, counted before the filters; the readers apply
    it for every format. It keeps the shard's name, so a later run without the cap rewrites the same output, and
    it is part of the `fingerprint` (the capped shard's output is stale for a run without the cap).
    """

    path: str
    name: str
    files: tuple[str, ...] = ()
    row_start: int = 0
    row_stop: int | None = None
    drop_keys: frozenset[str] = frozenset()
    planned_with: IngestFilters | None = None
    content_id: str = ""
    row_limit: int | None = None

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha1(self.content_id.encode())
        for key in sorted(self.drop_keys):
            digest.update(key.encode())
        if self.row_limit is not None:  # an uncapped shard keeps the fingerprint it had before caps existed
            digest.update(f"\0row_limit={self.row_limit}".encode())
        return digest.hexdigest()
