"""The compositing job's input and plan: concept folders in Gen4Gen's layout, and one composition per output row.

Input layout (Gen4Gen's ``scene/concept/*.jpg``)::

    INPUT/
      kitchen/            a scene: the concepts composed together
        cat/ 1.jpg 2.jpg  a concept: its reference images
        teapot/ a.png

A concept's *phrase* (what the segmenter and the layout engine are asked about, and what a detector is queried
with) is its folder name with underscores and hyphens as spaces (`concept_phrase`).

Backgrounds (optional): a folder of images, used as given, or a text file of background prompts, one per line,
passed to the layout engine as a hint; without them the engine describes a background freely. The background image
is generated from the engine's description unless an image was given.

The plan (`plan_compositions`) is deterministic for the same input, settings and seed: composition ``i`` of a
scene draws one reference image per concept and one background with a random generator seeded by
``sha256(seed, scene, i)``, and its `Composition.seed` (for background generation and inpainting) comes from the
same hash. Its `key` is the sha1 of what the row depends on, so a re-run never duplicates a row.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.ingest.formats import IMAGE_EXTENSIONS

__all__ = [
    "Background",
    "Composition",
    "Concept",
    "Scene",
    "concept_phrase",
    "plan_compositions",
    "read_backgrounds",
    "scan_scenes",
]


def concept_phrase(name: str) -> str:
    """The words of a concept folder's name: ``"red_teapot"`` -> ``"red teapot"``."""
    phrase = " ".join(re.sub(r"[_\-]+", " ", name).split())
    if not phrase:
        raise ValueError(f"a concept folder name must hold a word, got {name!r}")
    return phrase


@dataclass(frozen=True)
class Concept:
    name: str  # the folder's name
    images: tuple[str, ...]  # reference images, paths relative to the input root, sorted

    @property
    def phrase(self) -> str:
        return concept_phrase(self.name)


@dataclass(frozen=True)
class Scene:
    name: str
    concepts: tuple[Concept, ...]  # sorted by folder name


@dataclass(frozen=True)
class Background:
    """A background prompt (a hint for the layout engine) or an image (path relative to its folder)."""

    prompt: str | None = None
    image: str | None = None


def _visible(path: Path) -> bool:
    return not path.name.startswith((".", "_"))


def scan_scenes(root: str | Path) -> list[Scene]:
    """The scenes under `root` (sorted); ValueError naming every folder that breaks the layout (a scene without
    concept folders, a concept without images, two concepts with the same phrase in one scene)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"input {root} is not a folder of scenes (scene/concept/*.jpg)")
    scenes, problems = [], []
    for scene_dir in sorted(p for p in root.iterdir() if p.is_dir() and _visible(p)):
        concepts = []
        for concept_dir in sorted(p for p in scene_dir.iterdir() if p.is_dir() and _visible(p)):
            images = sorted(
                str(f.relative_to(root))
                for f in concept_dir.iterdir()
                if f.is_file() and _visible(f) and f.suffix[1:].lower() in IMAGE_EXTENSIONS
            )
            if not images:
                problems.append(f"{concept_dir.relative_to(root)}: no images")
                continue
            concepts.append(Concept(concept_dir.name, tuple(images)))
        phrases = [c.phrase for c in concepts]
        if len(set(phrases)) != len(phrases):
            problems.append(f"{scene_dir.name}: two concept folders with the same phrase ({', '.join(phrases)})")
        elif not concepts:
            problems.append(f"{scene_dir.name}: no concept folders with images")
        else:
            scenes.append(Scene(scene_dir.name, tuple(concepts)))
    if problems:
        raise ValueError(f"input {root}: " + "; ".join(problems))
    if not scenes:
        raise ValueError(f"input {root}: no scene folders (expected scene/concept/*.jpg)")
    return scenes


def read_backgrounds(path: str | Path | None) -> list[Background]:
    """The backgrounds of `path`: every image of a folder (sorted), or every non-empty line of a text file;
    an empty list without `path`."""
    if path is None:
        return []
    path = Path(path)
    if path.is_dir():
        images = sorted(
            str(f.relative_to(path))
            for f in path.rglob("*")
            if f.is_file() and _visible(f) and f.suffix[1:].lower() in IMAGE_EXTENSIONS
        )
        found = [Background(image=image) for image in images]
    elif path.is_file():
        found = [Background(prompt=" ".join(line.split())) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise ValueError(f"backgrounds {path}: no such folder or prompt file")
    if not found:
        raise ValueError(f"backgrounds {path}: no images or prompts in it")
    return found


@dataclass(frozen=True)
class Composition:
    """One output row's recipe."""

    key: str
    scene: str
    index: int  # the composition's number within its scene
    concepts: tuple[str, ...]  # folder names
    phrases: tuple[str, ...]
    references: tuple[str, ...]  # one reference image per concept, relative to the input root
    background: Background
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _rng_seed(seed: int, scene: str, index: int) -> int:
    digest = hashlib.sha256(json.dumps([seed, scene, index]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a non-negative int64


def plan_compositions(
    scenes: Sequence[Scene], per_scene: int, seed: int, backgrounds: Sequence[Background] = ()
) -> list[Composition]:
    """`per_scene` compositions of every scene, scene by scene (module docstring: the seed rule)."""
    plan = []
    for scene in scenes:
        for index in range(per_scene):
            composition_seed = _rng_seed(seed, scene.name, index)
            rng = random.Random(composition_seed)
            references = tuple(rng.choice(concept.images) for concept in scene.concepts)
            background = rng.choice(list(backgrounds)) if backgrounds else Background()
            recipe = [scene.name, index, references, asdict(background), composition_seed]
            plan.append(
                Composition(
                    key=hashlib.sha1(json.dumps(recipe).encode()).hexdigest(),
                    scene=scene.name,
                    index=index,
                    concepts=tuple(c.name for c in scene.concepts),
                    phrases=tuple(c.phrase for c in scene.concepts),
                    references=references,
                    background=background,
                    seed=composition_seed,
                )
            )
    return plan
