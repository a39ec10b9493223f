"""The two errors of the data contract: an invalid graph (`SceneGraphError`), a malformed source record
(`RecordError`)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RecordError", "SceneGraphError"]

_MAX_CHANGE_LINES = 20  # SceneGraphError shows this many problems; repair() this many changes, then a count


class SceneGraphError(ValueError):
    """A graph breaks an invariant. `problems` lists every violation found, each naming its field."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        shown = self.problems[:_MAX_CHANGE_LINES]
        more = len(self.problems) - len(shown)
        super().__init__(
            "invalid scene graph: " + "; ".join(shown) + (f"; ... and {more} more problems" if more else "")
        )


class RecordError(ValueError):
    """A source record (LAION-SG, Visual Genome, sg2im, VLM output) is malformed.

    `record` identifies the record (e.g. ``img_id=123``), `field` is the path of the offending field.
    """

    def __init__(self, record: str, field: str, reason: str):
        record = record if len(record) <= 64 else record[:61] + "..."  # a hostile record id stays short
        self.record = record
        self.field = field
        self.reason = reason
        super().__init__(f"record {record}: field {field!r}: {reason}")
