"""Dependency-aware scores of the question track, and the parser of the judge's yes/no answers.

The rule is DSG's (Cho et al., ICLR 2024; github.com/j-min/DSG, ``calc_vqa_score``): a question scores 1 when
its answer is yes, 0 otherwise, and a question counts as no when any of its parents counts as no ("zero-out
scores if parent questions are answered 'no'"), whatever its own answer. The rule applies transitively, parents
before children (as DSG's reference loop does when parents come first): the attribute of a "second dog" counts
as no when "Is there a dog?" is answered no. A skipped question stays in its denominator.

Missing and invalid answers count as no. DSG scores ``answer == 'yes'``, so any answer that is not yes scores 0,
and this package's judge scores failed items 0.0 in the means (`benchmark.judge`): a model is not rewarded for
images or answers the judge cannot read. The details count them (``n_invalid``) so failures stay visible.

Scores of one item (`score_item`): the share of questions that count as yes, per category (``entity``,
``attribute``, ``relation``) and ``overall``; a category the item has no question of scores None, and an item
without questions (an empty graph) scores None overall. Scores of a run (`average_scores`): the mean of the
per-item scores (DSG reports the mean of per-prompt scores, not a share pooled over all questions, so a prompt
with many questions weighs as much as a short one), each key over the items where it is defined; the details
say over how many.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmark.questions.generate import CATEGORIES, Question

__all__ = ["SCORE_KEYS", "ItemScore", "average_scores", "counted_answers", "parse_yes_no", "score_item"]

SCORE_KEYS = (*CATEGORIES, "overall")

# ---------------------------------------------------------------------- parsing

# An optional label ("Answer:", "the answer is"), then the first word; anything before it that is not a letter or
# digit (quotes, markdown, spaces) is skipped.
_FIRST_WORD = re.compile(
    r"[\W_]*(?:(?:the\s+)?answer\b(?:\s*(?:is\b|[:=-]))?[\W_]*)?(\w+)(.*)", re.DOTALL | re.IGNORECASE
)
# What makes an answer ambiguous after its first word: "yes/no", "yes or no", "no, yes".
_SECOND_ANSWER = re.compile(r"[\s,/|;.-]*(?:or\s+)?(yes|no)\b")
_WORDS = {"yes": True, "no": False}


def parse_yes_no(text: Any) -> bool | None:
    """True for a yes, False for a no, None for anything else (never raises).

    Accepted: a text whose first word is "yes" or "no" in any case and width ("Yes.", "no", "YES, it is",
    "**No**", "Answer: yes"), unless a second answer follows ("yes/no", "Yes or no", "no, yes"); a JSON object
    with one ``answer`` key (in any case) holding such a text or a JSON boolean (``{"answer": "yes"}``,
    ``{"answer": false}``), also inside a ```json fence. Not accepted: other words ("yeah", "nope", "true",
    "yesterday", "none"), a text starting with ``{`` that is not such an object (no ``answer`` key, a repeated
    key, invalid or cut JSON), anything that is not a `str`.
    """
    return _parse(text, json_allowed=True)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused (`ValueError`) when a key repeats: {"answer": "no", "answer": "yes"} is no answer."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate key")
    return value


def _parse(text: Any, *, json_allowed: bool) -> bool | None:
    if not isinstance(text, str):
        return None
    text = unicodedata.normalize("NFKC", text).strip()
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):  # a fence, not a regex: no backtracking
        inner = text[3:-3]
        text = (inner[4:] if inner[:4].casefold() == "json" else inner).strip()
    if text.startswith("{"):
        if not json_allowed:
            return None
        try:
            value = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting such as {"a":{"a":{...}}}
            return None
        keys = [key for key in value if key.casefold() == "answer"] if isinstance(value, dict) else []
        value = value[keys[0]] if len(keys) == 1 else None  # one "answer" key, in any case
        return value if isinstance(value, bool) else _parse(value, json_allowed=False)
    match = _FIRST_WORD.match(text)
    if match is None:
        return None
    answer = _WORDS.get(match.group(1).casefold())
    if answer is None:
        return None
    second = _SECOND_ANSWER.match(match.group(2)[:64].casefold())
    if second is not None and _WORDS[second.group(1)] != answer:
        return None
    return answer


# ---------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ItemScore:
    """The scores of one item (one image against its graph's questions) and what went into them.

    `entity`, `attribute`, `relation`, `overall`: share of questions that count as yes, None without such
    questions. `n_questions`: questions asked; `n_yes`: questions that count as yes; `n_invalid`: missing or
    invalid answers (counted as no); `n_skipped`: questions answered yes that count as no because a parent does.
    """

    entity: float | None
    attribute: float | None
    relation: float | None
    overall: float | None
    n_questions: int
    n_yes: int
    n_invalid: int
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(questions: Sequence[Question], answers: Mapping[str, bool | None]) -> None:
    ids: set[str] = set()
    for q in questions:
        if q.id in ids:
            raise ValueError(f"duplicate question id {q.id!r}")
        missing = [p for p in q.parents if p not in ids]
        if missing:
            raise ValueError(
                f"question {q.id!r}: parents {missing} do not come before it (unknown ids, or a cycle)"
            )
        ids.add(q.id)
    unknown = sorted(str(key) for key in answers if key not in ids)
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"answers to unknown question ids: {shown}{more} (questions of another graph or version?)")
    for key, value in answers.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(
                f"answer to {key!r}: expected True, False or None, got {type(value).__name__} (see parse_yes_no)"
            )


def counted_answers(questions: Sequence[Question], answers: Mapping[str, bool | None]) -> dict[str, bool]:
    """Question id -> whether it counts as yes: its answer is True and every parent counts as yes.

    `answers` maps question ids to True (yes), False (no) or None (invalid); a missing id counts as no. Raises
    `ValueError` for duplicate ids, a parent that does not come before its child, or answers to unknown ids, and
    `TypeError` for an answer that is not a bool or None.
    """
    _check(questions, answers)
    counted: dict[str, bool] = {}
    for q in questions:
        counted[q.id] = answers.get(q.id) is True and all(counted[p] for p in q.parents)
    return counted


def score_item(questions: Sequence[Question], answers: Mapping[str, bool | None]) -> ItemScore:
    """The dependency-aware scores of one item (see the module docstring)."""
    counted = counted_answers(questions, answers)
    shares: dict[str, float | None] = {}
    for category in CATEGORIES:
        values = [counted[q.id] for q in questions if q.category == category]
        shares[category] = sum(values) / len(values) if values else None
    n_yes = sum(counted.values())
    return ItemScore(
        entity=shares["entity"],
        attribute=shares["attribute"],
        relation=shares["relation"],
        overall=n_yes / len(questions) if questions else None,
        n_questions=len(questions),
        n_yes=n_yes,
        n_invalid=sum(answers.get(q.id) is None for q in questions),
        n_skipped=sum(answers.get(q.id) is True and not counted[q.id] for q in questions),
    )


def average_scores(items: Iterable[ItemScore]) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The mean of the per-item scores for each of `SCORE_KEYS`, over the items where that score is defined
    (None when it is defined for none), and details: ``n_items`` (all items), ``n_scored`` (per key, the items
    the mean is over), ``n_questions``, ``n_invalid`` and ``n_skipped`` (summed over the items)."""
    items = list(items)
    means: dict[str, float | None] = {}
    n_scored: dict[str, int] = {}
    for key in SCORE_KEYS:
        values = [value for item in items if (value := getattr(item, key)) is not None]
        means[key] = sum(values) / len(values) if values else None
        n_scored[key] = len(values)
    details = {
        "n_items": len(items),
        "n_scored": n_scored,
        "n_questions": sum(item.n_questions for item in items),
        "n_invalid": sum(item.n_invalid for item in items),
        "n_skipped": sum(item.n_skipped for item in items),
    }
    return means, details
