"""VISOR: spatial correctness of two-object prompts from object detections (pure python and numpy; no torch).

Following VISOR (Gokhale et al., "Benchmarking Spatial Relationships in Text-to-Image Generation",
github.com/microsoft/VISOR, ``visor.py`` and ``text2image_realtime_evaluate.ipynb``), as SPRIGHT reports it. A prompt
"a {subject} {relation} a {object}" is generated several times; a detector finds boxes in each image.

One image (`judge_image`):

- its detections are ``(label, score, (x0, y0, x1, y1))``, already thresholded; labels are compared with the
  prompt's class names exactly (the detector step queries those names);
- of each label, the highest-scoring box is used (equal scores: the first of them in the list);
- *both detected*: a box labelled `subject` and one labelled `object`;
- *relation right*: both detected and the subject box's centroid ``((x0 + x1) / 2, (y0 + y1) / 2)`` lies strictly
  on the named side of the object box's, in image coordinates (y grows downward): ``left of`` x_s < x_o,
  ``right of`` x_s > x_o, ``above`` y_s < y_o, ``below`` y_s > y_o. Equal centroids along that axis are not right.

Over all images of all prompts (`visor`, fractions in [0, 1]; VISOR's tables print them times 100):

- ``oa``: share of images with both detected;
- ``visor_uncond``: share of images with the relation right (= ``oa * visor_cond``);
- ``visor_cond``: share of relation-right images among those with both detected; **0.0 when no image has both**
  (VISOR's notebook divides by ``count + 1e-6``, which gives 0, its ``visor.py`` would divide by zero; a record
  refuses NaN). `visor_details` gives
  ``n_both`` so that case can be told apart from a real 0;
- ``visor_n`` (n = 1..4): share of prompts with at least n relation-right images among their first four images.
  Every prompt in `items` counts in the denominator, also one with no image right (as VISOR's ``visor.py``, which
  counts all images of a prompt: it had exactly four); a prompt with fewer than four images counts what it has
  (``n_prompts_short`` in `visor_details`).

The images of a prompt are ordered by the items' ``image_index`` (an int, VISOR's image file suffix
``{prompt}_{index}``) when its items carry one: then every item of that prompt must, and the indices must differ;
when none does, the order of the items in the list is the order. "The first four" are the first four of that
order. Items of one prompt must agree on subject, relation and object.

Where this differs from VISOR's code: VISOR judges the relation right when *any* pair of (subject box, object box)
satisfies it; here, as the issue specifies, only the highest-scoring box of each label is compared, which is
never more lenient. Its relation names are the prompt phrases ("to the left of", "to the right of"); here
``left of`` / ``right of`` / ``above`` / ``below`` (`RELATIONS`); the prompt set writes VISOR's phrases.

Input that cannot be judged raises ValueError naming the prompt: no items, an unknown relation, subject equal to
object (one box per label cannot relate a class to itself), a box that is not four finite numbers with
x0 <= x1 and y0 <= y1, a non-finite score, mixed or repeated ``image_index`` within a prompt, an item lacking
one of `ITEM_FIELDS`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "IMAGES_PER_PROMPT",
    "ITEM_FIELDS",
    "RELATIONS",
    "VISOR_KEYS",
    "best_boxes",
    "centroid",
    "judge_image",
    "judge_prompts",
    "judgement_details",
    "relation_holds",
    "visor",
    "visor_details",
]

RELATIONS = ("left of", "right of", "above", "below")
VISOR_KEYS = ("oa", "visor_uncond", "visor_cond", "visor_1", "visor_2", "visor_3", "visor_4")
IMAGES_PER_PROMPT = 4  # VISOR_n looks at the first four images of each prompt

ITEM_FIELDS = ("prompt_id", "subject", "relation", "object", "detections")

Box = tuple[float, float, float, float]


def _check_box(box: Any, where: str) -> Box:
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a box must be four numbers (x0, y0, x1, y1), got {box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: a box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{where}: a box must have x0 <= x1 and y0 <= y1 (corners, not width/height), got {box!r}")
    return values  # type: ignore[return-value]


def centroid(box: Sequence[float]) -> tuple[float, float]:
    """The centre ``((x0 + x1) / 2, (y0 + y1) / 2)`` of a box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def best_boxes(detections: Iterable[Sequence[Any]], where: str = "detections") -> dict[str, Box]:
    """The highest-scoring box of each label among ``(label, score, (x0, y0, x1, y1))`` detections; of equal
    scores, the first in the list."""
    best: dict[str, tuple[float, Box]] = {}
    for detection in detections:
        try:
            label, score, box = detection
        except (TypeError, ValueError):
            raise ValueError(f"{where}: a detection must be (label, score, box), got {detection!r}") from None
        score = float(score)
        if not math.isfinite(score):
            raise ValueError(f"{where}: a detection score must be finite, got {score!r} for {label!r}")
        checked = _check_box(box, where)
        if label not in best or score > best[label][0]:
            best[label] = (score, checked)
    return {label: box for label, (_, box) in best.items()}


def relation_holds(relation: str, subject_box: Sequence[float], object_box: Sequence[float]) -> bool:
    """Whether the subject box's centroid is strictly on the `relation` side of the object box's (y downward)."""
    (xs, ys), (xo, yo) = centroid(subject_box), centroid(object_box)
    if relation == "left of":
        return xs < xo
    if relation == "right of":
        return xs > xo
    if relation == "above":
        return ys < yo
    if relation == "below":
        return ys > yo
    raise ValueError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")


def judge_image(item: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(both detected, relation right)`` of one image (an item as `visor` takes it)."""
    where = f"prompt {item['prompt_id']!r}"
    subject, relation, obj = item["subject"], item["relation"], item["object"]
    if relation not in RELATIONS:
        raise ValueError(f"{where}: unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")
    if subject == obj:
        raise ValueError(f"{where}: subject and object are both {subject!r}; one box per label cannot relate them")
    boxes = best_boxes(item["detections"], where)
    if subject not in boxes or obj not in boxes:
        return False, False
    return True, relation_holds(relation, boxes[subject], boxes[obj])


def _ordered_prompts(items: Sequence[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    """Items grouped by prompt (prompts in order of first appearance), each group in image order."""
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for item in items:
        missing = [name for name in ITEM_FIELDS if name not in item]
        if missing:
            raise ValueError(f"visor: an item lacks {', '.join(missing)}: {dict(item)!r}")
        groups.setdefault(item["prompt_id"], []).append(item)
    for prompt_id, group in groups.items():
        where = f"prompt {prompt_id!r}"
        if len({(i["subject"], i["relation"], i["object"]) for i in group}) > 1:
            raise ValueError(f"{where}: its items disagree on subject, relation or object")
        indexed = ["image_index" in i for i in group]
        if any(indexed) and not all(indexed):
            raise ValueError(f"{where}: some items have an image_index and some do not")
        if all(indexed):
            indices = [i["image_index"] for i in group]
            if len(set(indices)) != len(indices):
                raise ValueError(f"{where}: repeated image_index in {sorted(indices)}")
            group.sort(key=lambda i: i["image_index"])
    return groups


def judge_prompts(items: Iterable[Mapping[str, Any]]) -> dict[Any, list[tuple[Mapping[str, Any], bool, bool]]]:
    """Each prompt's images, judged (`judge_image`) and in image order: prompt id -> [(item, both detected,
    relation right), ...], prompts in order of first appearance. Checks the items as `visor` does."""
    items = list(items)
    if not items:
        raise ValueError("visor: no items to score")
    return {
        prompt_id: [(item, *judge_image(item)) for item in group]
        for prompt_id, group in _ordered_prompts(items).items()
    }


def judgement_details(prompts: Iterable[Sequence[tuple[bool, bool]]]) -> dict[str, float | int]:
    """`visor_details` from judgements: each prompt's ``(both detected, relation right)`` per image, in image
    order."""
    both, right, right_first, short = [], [], [], 0
    for judged in prompts:
        both += [bool(b) for b, _ in judged]
        right += [bool(r) for _, r in judged]
        right_first.append(sum(bool(r) for _, r in judged[:IMAGES_PER_PROMPT]))
        short += len(judged) < IMAGES_PER_PROMPT
    if not both:
        raise ValueError("visor: no items to score")
    both_a, right_a = np.asarray(both, dtype=np.float64), np.asarray(right, dtype=np.float64)
    return {
        **_scores(both_a, right_a, np.asarray(right_first, dtype=np.int64)),
        "n_images": len(both),
        "n_both": int(both_a.sum()),
        "n_right": int(right_a.sum()),
        "n_prompts": len(right_first),
        "n_prompts_short": short,
    }


def _scores(both: np.ndarray, right: np.ndarray, right_first: np.ndarray) -> dict[str, float]:
    n_both = both.sum()
    scores = {
        "oa": float(both.mean()),
        "visor_uncond": float(right.mean()),
        "visor_cond": float(right.sum() / n_both) if n_both > 0 else 0.0,
    }
    for n in range(1, IMAGES_PER_PROMPT + 1):
        scores[f"visor_{n}"] = float(np.mean(right_first >= n, dtype=np.float64))
    return scores


def visor(items: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """``oa``, ``visor_uncond``, ``visor_cond``, ``visor_1`` … ``visor_4`` (fractions) of judged images.

    Each item is one image: a mapping with ``prompt_id``, ``subject``, ``relation`` (one of `RELATIONS`),
    ``object``, ``detections`` (a list of ``(label, score, (x0, y0, x1, y1))``, already thresholded) and optionally
    ``image_index``. The definitions are in the module docstring.
    """
    details = visor_details(items)
    return {key: float(details[key]) for key in VISOR_KEYS}


def visor_details(items: Iterable[Mapping[str, Any]]) -> dict[str, float | int]:
    """`visor`'s scores plus the counts behind them: ``n_images``, ``n_both`` (images with both detected),
    ``n_right`` (images with the relation right), ``n_prompts``, ``n_prompts_short`` (prompts with fewer than
    four images)."""
    prompts = judge_prompts(items).values()
    return judgement_details([(both, right) for _, both, right in judged] for judged in prompts)
