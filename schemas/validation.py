"""The checks behind `SceneGraph.problems()` (one field at a time) and the bounded change list of
`SceneGraph.repair()`."""

from __future__ import annotations

from typing import Any

from schemas.errors import _MAX_CHANGE_LINES
from schemas.graph_text import _CONTROL, normalize_text, text_rule_problem
from schemas.limits import Limits

_SHOWN = 40  # at most this many characters of a bad value appear in a message
_MAX_ID = 2**31 - 1  # ids are stored as int32


def _text_problem(value: Any, where: str, limits: Limits) -> str | None:
    if not isinstance(value, str):
        return f"{where}: expected a string, got {type(value).__name__}"
    if not value:
        return f"{where} is empty"
    if len(value) > limits.max_text_length:
        return f"{where} is longer than {limits.max_text_length} characters"
    if _CONTROL.search(value):
        return f"{where} {value!r:.{_SHOWN}} contains control characters"
    normal = normalize_text(value)
    if problem := text_rule_problem(normal):  # the rule holds for the normalised text, as in repair()
        return f"{where} {value!r:.{_SHOWN}}: {problem}"
    if value != normal:
        return f"{where} {value!r:.{_SHOWN}} is not normalised (lower-case, trimmed, single spaces, no underscores)"
    return None


def _id_problem(value: Any, where: str) -> str | None:
    if not _is_id(value):
        return f"{where}: expected an integer, got {type(value).__name__}"
    if not 0 <= value <= _MAX_ID:
        return f"{where}: id {_show_id(value)} outside 0..{_MAX_ID}"
    return None


class _Changes:
    """The change list of `repair()`: per-item lines up to a cap, then a count; summaries are always kept."""

    def __init__(self, cap: int = _MAX_CHANGE_LINES):
        self.lines: list[str] = []
        self.cap = cap
        self.items = 0
        self.omitted = 0

    def add(self, line: str) -> None:
        if self.items < self.cap:
            self.lines.append(line)
            self.items += 1
        else:
            self.omitted += 1

    def summary(self, line: str) -> None:
        self.lines.append(line)

    def result(self) -> list[str]:
        return self.lines + ([f"... and {self.omitted} more changes"] if self.omitted else [])


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show_id(value: int) -> str:
    """An id for a message; a hostile id of thousands of digits is not printed (nor can `str` print it)."""
    return str(value) if abs(value) < 10**30 else f"of {value.bit_length()} bits"


def _over_limit(count: int, first: int, last: int, what: str, where: str, limit: int) -> str:
    span = f"{where}[{first}]" if first == last else f"{where}[{first}..{last}]"
    return f"dropped {count} {what} ({span}): over the limit of {limit} {what}"
