"""Which source column (or JSON metadata field) of any input format feeds which ingest column, and its raw type.

Every format names its columns differently (LAION's ``URL``/``TEXT``/``AESTHETIC_SCORE``, img2dataset's
``url``/``caption``/``original_width``, a sample's ``.json``): `_source_name` finds the one to read for an
output column, exactly first, then in any letter case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

# Output column -> source names in priority order. Each name matches exactly first, then in any letter case.
# img2dataset's `width`/`height` are the size after its resizing; `original_*` and LAION's upper-case ones are not.
_SOURCE_ALIASES: dict[str, tuple[str, ...]] = {
    "url": ("url",),
    "caption": ("caption", "TEXT", "txt"),
    "aesthetic_score": ("AESTHETIC_SCORE", "aesthetic"),
    "width": ("original_width", "WIDTH", "width"),
    "height": ("original_height", "HEIGHT", "height"),
    "pwatermark": ("pwatermark",),
    "punsafe": ("punsafe",),
    "similarity": ("similarity",),
    "sha256": ("sha256",),
    "source_key": ("key",),
    "status": ("status",),
}
# Scores stay float64 until the output cast, so that a bound like 0.8 compares exactly as written.
_RAW_TYPES: dict[str, pa.DataType] = {
    "url": pa.string(),
    "caption": pa.string(),
    "aesthetic_score": pa.float64(),
    "width": pa.int32(),
    "height": pa.int32(),
    "pwatermark": pa.float64(),
    "punsafe": pa.float64(),
    "similarity": pa.float64(),
    "sha256": pa.string(),
    "source_key": pa.string(),
    "status": pa.string(),
}
_DOWNLOAD_SUCCESS = "success"  # img2dataset's status of a downloaded image


def _source_name(names: Sequence[str], target: str) -> str | None:
    """The source name for output column `target` among `names` (see `_SOURCE_ALIASES`), or None."""
    aliases = _SOURCE_ALIASES[target]
    for alias in aliases:
        if alias in names:
            return alias
    lower = {name.lower(): name for name in names}
    return next((lower[a.lower()] for a in aliases if a.lower() in lower), None)


def _record_value(record: Mapping[str, Any], target: str) -> Any:
    """The value for output column `target` in a JSON metadata record, or None."""
    name = _source_name(list(record), target)
    return None if name is None else record[name]
