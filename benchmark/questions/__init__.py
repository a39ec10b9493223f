"""The question track (DSG/TIFA style): atomic yes/no questions derived from a scene graph, answered by the VLM
judge about each generated image, scored with DSG's dependency rule.

`benchmark.questions.generate` turns a `SceneGraph` into `Question`s (template version
`QUESTION_TEMPLATE_VERSION`); `benchmark.questions.score` parses yes/no answers and scores them per item and per
run. Both are pure python (no torch, no Ray), so the judge's actors and the driver can import them.
"""

from benchmark.questions.generate import CATEGORIES, QUESTION_TEMPLATE_VERSION, Question, generate_questions
from benchmark.questions.score import (
    SCORE_KEYS,
    ItemScore,
    average_scores,
    counted_answers,
    parse_yes_no,
    score_item,
)

__all__ = [
    "CATEGORIES",
    "QUESTION_TEMPLATE_VERSION",
    "SCORE_KEYS",
    "ItemScore",
    "Question",
    "average_scores",
    "counted_answers",
    "generate_questions",
    "parse_yes_no",
    "score_item",
]
