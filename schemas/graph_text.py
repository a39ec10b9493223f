"""The character rule of graph text (names, attributes, predicates) and its normalisation.

Text is data, not markup: `TEXT_PUNCTUATION` is the one allow-list, `text_rule_problem` says why a text breaks it,
`normalize_text` lower-cases, trims and collapses whitespace.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["TEXT_PUNCTUATION", "normalize_text", "text_rule_problem"]

_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The one allow-list of graph text (names, attributes, predicates): text is data, not markup. Besides letters
# (Unicode categories L*), combining marks (M*) and decimal digits (Nd), only these characters may appear, and
# text must begin with a letter or a digit. It admits real labels ("man's shirt", "t-shirt", "no. 5",
# "frisbee/disc", "wii controller (white)", "café", "日本語") and excludes markup and code: < > " ` = { } [ ] \\ ;
# & $ % # * + | ! ? : @ ^ ~, quotes other than the apostrophe (' and ’), control and format characters
# (zero-width, bidirectional overrides). `Limits.text_pattern`, the grammar of constrained decoding, emits a subset
# (tests/test_hostile_graphs.py checks it). Deliberately not a `Limits` field: a config cannot loosen it.
TEXT_PUNCTUATION = frozenset(" -'\u2019.,/()")
_PLAIN_TEXT = re.compile(r"[a-z0-9][a-z0-9 \-'.,/()]*")  # fast path: the common ASCII case


def normalize_text(text: str) -> str:
    """Lower-case, trim, and collapse runs of whitespace (and underscores) to one space."""
    return _WHITESPACE.sub(" ", text.replace("_", " ")).strip().lower()


def _allowed(char: str) -> bool:
    return char in TEXT_PUNCTUATION or char.isalpha() or char.isdecimal() or unicodedata.category(char)[0] == "M"


def text_rule_problem(text: str) -> str | None:
    """Why `text` breaks the character rule of graph text (see `TEXT_PUNCTUATION`), or None when it keeps it.

    Case and whitespace are not part of this rule (`normalize_text` handles them).
    """
    if _PLAIN_TEXT.fullmatch(text):
        return None
    bad: list[str] = []
    for char in text:
        if not _allowed(char) and char not in bad:
            bad.append(char)
            if len(bad) == 8:
                break
    if bad:
        return "characters not allowed in graph text: " + ", ".join(repr(c) for c in bad)
    if text and not (text[0].isalpha() or text[0].isdecimal()):
        return "must begin with a letter or digit"
    return None
