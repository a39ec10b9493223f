"""Typed access to the fields of an untrusted record: each reader returns the value or raises `RecordError` naming
the record and the field (used by `SceneGraph.from_json` and `schemas.converters`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.errors import RecordError

_INT_TEXT = re.compile(r"-?[0-9]{1,18}")  # an id written as text: ASCII digits, short enough for int()


def _field(mapping: Mapping[str, Any], key: str, record: str, where: str) -> Any:
    if key not in mapping:
        raise RecordError(record, f"{where}.{key}", "missing")
    return mapping[key]


def _require_mapping(value: Any, record: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(record, where, f"expected an object, got {type(value).__name__}")
    return value


def _require_list(value: Any, record: str, where: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise RecordError(record, where, f"expected a list, got {type(value).__name__}")
    return value


def _require_mappings(value: Any, record: str, where: str) -> list[Mapping[str, Any]]:
    return [_require_mapping(v, record, f"{where}[{i}]") for i, v in enumerate(_require_list(value, record, where))]


def _require_int(value: Any, record: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        integral = isinstance(value, float) and value.is_integer()
        if integral or (isinstance(value, str) and _INT_TEXT.fullmatch(value.strip())):
            value = int(value)
        else:
            raise RecordError(record, where, f"expected an integer, got {type(value).__name__} {value!r:.40}")
    if not -(2**63) <= value < 2**63:
        raise RecordError(record, where, f"integer of {value.bit_length()} bits is out of range")
    return value


def _require_str(value: Any, record: str, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError(record, where, f"expected a string, got {type(value).__name__} {value!r:.40}")
    return value


def _require_str_list(value: Any, record: str, where: str) -> list[str]:
    return [_require_str(v, record, f"{where}[{i}]") for i, v in enumerate(_require_list(value, record, where))]
