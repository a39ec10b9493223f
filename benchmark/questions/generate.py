"""Atomic yes/no questions from a scene graph, with dependencies (the question track, DSG/TIFA style).

A `SceneGraph` becomes a deterministic tuple of `Question`s, in this order: for each object (in graph order) its
entity question, then one question per attribute (in attribute order); then one question per relation (in
relation order). Parents come before their children, which `benchmark.questions.score` relies on.

Templates (version `QUESTION_TEMPLATE_VERSION`; records state it beside the questions' answers):

- entity: ``Is there a {name}?`` (``an`` before a name whose first letter is a, e, i, o or u, or a number said
  with a vowel sound; nothing more: "an unicorn", and plural or mass names keep the article: "Is there a trees?")
- attribute: ``Is the {name} {attribute}?``, parent: the object's entity question
- relation: ``Is the {subject} {predicate} the {object}?``, parents: the subject's, then the object's entity
  question
  (predicates are used as they are: "has" gives "Is the man has the hat?"; the judge reads the intent)

Repeated names. Two objects with the same name are two instances, each with its own attributes and relations,
so both keep their questions (merging them would lose which attribute or relation belongs to which instance).
Asking "Is there a dog?" twice would however count one dog twice, and DSG requires questions to be unique
(Cho et al., ICLR 2024: "atomic and unique" questions; its DSG-1k annotations refer to repeated instances as
``square_1``/``square_2`` and ask "Is there another person?" for a second one). So instances of a repeated name
are told apart by ordinal words in graph order: the entity questions are "Is there a dog?", "Is there a second
dog?", "Is there a third dog?" (a count: true when at least that many dogs are shown), and the other questions
name "the first dog", "the second dog". Each further instance's entity question depends on the previous one's
(a second dog entails a dog, as DSG's count questions depend on their entity). A name that occurs once is never
numbered. Ordinals are words up to "tenth", then "11th", "12th", "21st", ...

Question ids are stable and readable: ``e{object id}``, ``e{object id}.a{attribute index}``,
``r{relation index}``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from schemas import DEFAULT_LIMITS, Limits, SceneGraph, SGObject

__all__ = ["CATEGORIES", "QUESTION_TEMPLATE_VERSION", "Question", "generate_questions", "ordinal"]

# Bump when any question text, id, order or dependency a graph produces changes (tests pin a fingerprint).
QUESTION_TEMPLATE_VERSION = "v1"

CATEGORIES = ("entity", "attribute", "relation")

_ELEVEN_EIGHTEEN = re.compile(r"1[18](?:\d{3})*(?!\d)")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


@dataclass(frozen=True)
class Question:
    """One yes/no question about a generated image.

    `parents` are the ids of the questions it depends on (it counts as no when one of them does); `objects` are
    the graph object ids it is about (one, or subject and object of a relation); `terms` is its DSG-style tuple:
    ``(name,)``, ``(name, attribute)`` or ``(subject name, predicate, object name)``.
    """

    id: str
    category: str
    text: str
    parents: tuple[str, ...] = ()
    objects: tuple[int, ...] = ()
    terms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"question {self.id!r}: category {self.category!r} is not one of {CATEGORIES}")


def ordinal(n: int) -> str:
    """``first`` .. ``tenth`` for 1..10, then ``11th``, ``12th``, ``13th``, ``21st``, ``22nd``, ``23rd``, ..."""
    if n < 1:
        raise ValueError(f"ordinal of {n}: expected a positive integer")
    if n <= len(_ORDINALS):
        return _ORDINALS[n - 1]
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _article(word: str) -> str:
    """``an`` before a vowel letter or a number said with a vowel sound (8, 11, 18, 80..89, 8000, 11000, ...)."""
    if word[:1] in ("a", "e", "i", "o", "u") or word[:1] == "8" or _ELEVEN_EIGHTEEN.match(word):
        return "an"
    return "a"


def generate_questions(graph: SceneGraph, limits: Limits = DEFAULT_LIMITS) -> tuple[Question, ...]:
    """The questions of `graph` (see the module docstring), parents first.

    The graph must be valid under `limits` (`SceneGraph.validate`, which raises `SceneGraphError`): its text then
    keeps the character rule of graph text, so a question is safe to put into a judge's prompt. An empty graph
    gives no questions.
    """
    graph.validate(limits)
    counts = Counter(obj.name for obj in graph.objects)
    instance: dict[int, int] = {}  # object id -> 1-based instance number among objects of its name
    seen: Counter[str] = Counter()
    for obj in graph.objects:
        seen[obj.name] += 1
        instance[obj.id] = seen[obj.name]

    def mention(obj: SGObject) -> str:
        """``the dog``, or ``the second dog`` when the name is repeated."""
        if counts[obj.name] == 1:
            return f"the {obj.name}"
        return f"the {ordinal(instance[obj.id])} {obj.name}"

    questions: list[Question] = []
    previous: dict[str, str] = {}  # name -> entity question id of its latest instance
    for obj in graph.objects:
        entity_id = f"e{obj.id}"
        n = instance[obj.id]
        if n == 1:
            text, parents = f"Is there {_article(obj.name)} {obj.name}?", ()
        else:
            text, parents = f"Is there {_article(ordinal(n))} {ordinal(n)} {obj.name}?", (previous[obj.name],)
        questions.append(Question(entity_id, "entity", text, parents, (obj.id,), (obj.name,)))
        previous[obj.name] = entity_id
        for j, attribute in enumerate(obj.attributes):
            questions.append(
                Question(
                    f"{entity_id}.a{j}",
                    "attribute",
                    f"Is {mention(obj)} {attribute}?",
                    (entity_id,),
                    (obj.id,),
                    (obj.name, attribute),
                )
            )
    by_id = {obj.id: obj for obj in graph.objects}
    for i, rel in enumerate(graph.relations):
        subject, target = by_id[rel.subject], by_id[rel.object]
        questions.append(
            Question(
                f"r{i}",
                "relation",
                f"Is {mention(subject)} {rel.predicate} {mention(target)}?",
                (f"e{subject.id}", f"e{target.id}"),
                (subject.id, target.id),
                (subject.name, rel.predicate, target.name),
            )
        )
    return tuple(questions)
