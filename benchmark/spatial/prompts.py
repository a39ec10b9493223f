"""The spatial track's prompt set: VISOR's SR2D two-object spatial prompts, fixed, versioned and hashed.

The set (as VISOR's ``create_spatial_phrases.py`` builds it, github.com/microsoft/VISOR): for every unordered pair
of distinct COCO classes (`COCO_CLASSES`, the 80 detection classes in COCO order; pairs in
``itertools.combinations`` order) and every relation (left of, right of, above, below), both orders
"{a} {A} {phrase} {a} {B}" and "{a} {B} {phrase} {a} {A}", where the phrase is VISOR's ("to the left of",
"to the right of", "above", "below") and the article is "an" before a vowel, "a" otherwise (what VISOR's
``inflect`` gives for these 80 names; "a skis" and "a scissors" are VISOR's text too). That is
80 * 79 / 2 pairs * 4 relations * 2 orders = 80 * 79 * 4 = 25,280 prompts.

Each prompt keeps VISOR's SR2D ``unique_id`` (``sr2d_id``; SR2D also holds two "A and B" prompts per pair and 80
one-object prompts, not spatial, left out here), so results can be joined with VISOR's released detections
(image ``{sr2d_id}_{i}``). ``prompt_id`` is ``"sr2d-"`` and that id in five digits. ``relation`` is the metric's
name (`benchmark.metrics.visor.RELATIONS`); ``text`` is the prompt to generate from.

A stable sample (``--max-prompts N``): the N prompts with the smallest ``sha256(f"{seed}:{prompt_id}")``, the rule of
CompSG-Bench's subset (`benchmark.sample_set.subset_rank`): a sample of N is a prefix of a sample of M > N. The sample is
written in ``sr2d_id`` order.

The seed of image ``i`` of a prompt (`image_seed`): the first 8 bytes of ``sha256(f"{seed}:{prompt_id}:{i}")``,
big-endian, shifted right by one bit (an int in [0, 2**63), valid for ``torch.Generator.manual_seed``).

The file holds `PROMPT_SCHEMA` rows in ``sr2d_id`` order, with ``<name>.manifest.json`` beside it: name, version,
content hash (canonical, independent of the Parquet encoding: the sha256 of one JSON line per row, in ``prompt_id``
order, ``[prompt_id, sr2d_id, text, subject, relation, object]``), the full set's hash, the sample rule, counts.
`load_prompts` recomputes the hash and refuses a file that does not match. Changing the set changes its hash;
`PROMPT_SET_HASH` pins the full set of `PROMPT_SET_VERSION` (a test rebuilds it).

    python -m benchmark.spatial.prompts --output spatial_prompts.parquet [--max-prompts N --seed 0]
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from benchmark.metrics.visor import RELATIONS
from benchmark.sample_set import subset_rank
from schemas import with_hf_metadata
from schemas.runs import write_atomically
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "COCO_CLASSES",
    "PROMPT_SCHEMA",
    "PROMPT_SET_HASH",
    "PROMPT_SET_NAME",
    "PROMPT_SET_VERSION",
    "RELATION_PHRASES",
    "PromptSet",
    "SpatialPrompt",
    "build_prompt_set",
    "build_prompts",
    "content_hash",
    "image_seed",
    "image_seeds",
    "load_prompts",
    "main",
    "manifest_path",
    "prompt_text",
    "sample_prompts",
]

PROMPT_SET_NAME = "VISOR-SR2D-spatial"
PROMPT_SET_VERSION = "1.0"
# content_hash(build_prompts()) of PROMPT_SET_VERSION; a change to the set must bump the version and this hash
PROMPT_SET_HASH = "1f166ef8a3224177dd8a76ce30ab0a2215fa0ce267ab0e612b54057c94b23f6d"

# COCO's 80 detection classes, in COCO order (as VISOR's create_spatial_phrases.py lists them)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

# the metric's relation name -> VISOR's phrase in the prompt
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# SR2D gives each pair 2 prompts per relation and 2 "A and B" prompts, in this order, numbering them consecutively
_SR2D_AND_PROMPTS = 2

HASH_RULE = "sha256 of JSON lines [prompt_id, sr2d_id, text, subject, relation, object] in prompt_id order"
SAMPLE_RULE = "the {n} prompts with the smallest sha256('{seed}:' + prompt_id)"
SEED_RULE = "first 8 bytes of sha256('{seed}:' + prompt_id + ':' + image_index), big-endian, >> 1"

PROMPT_SCHEMA = with_hf_metadata(
    pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sr2d_id", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("subject", pa.string(), nullable=False),
            pa.field("relation", pa.string(), nullable=False),
            pa.field("object", pa.string(), nullable=False),
        ]
    )
)


class PromptHashError(ValueError):
    """The prompt file does not match the content hash of its manifest."""


@dataclass(frozen=True)
class SpatialPrompt:
    """One prompt of the spatial track: "{a} {subject} {relation phrase} {a} {object}"."""

    prompt_id: str
    sr2d_id: int
    text: str
    subject: str
    relation: str
    object: str

    def seeds(self, n_images: int, seed: int = 0) -> list[int]:
        """The seeds of this prompt's images 0 .. n_images - 1 (`image_seed`)."""
        return image_seeds(self.prompt_id, n_images, seed)


@dataclass(frozen=True)
class PromptSet:
    """A loaded, hash-verified prompt file and its manifest."""

    path: Path
    manifest: dict[str, Any]
    prompts: tuple[SpatialPrompt, ...]


def manifest_path(prompts_path: str | Path) -> Path:
    """``prompts.parquet`` → ``prompts.manifest.json`` (same directory)."""
    path = Path(prompts_path)
    return path.with_name(path.stem + ".manifest.json")


def _article(name: str) -> str:
    return "an" if name[:1] in "aeiou" else "a"


def prompt_text(subject: str, relation: str, obj: str) -> str:
    """VISOR's text of a prompt: ``prompt_text("dog", "left of", "apple") == "a dog to the left of an apple"``."""
    return f"{_article(subject)} {subject} {RELATION_PHRASES[relation]} {_article(obj)} {obj}"


def build_prompts(
    classes: Sequence[str] = COCO_CLASSES, relations: Sequence[str] = RELATIONS
) -> tuple[SpatialPrompt, ...]:
    """The spatial prompts over `classes` and `relations`, in SR2D order (the default: the whole set)."""
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"the classes must be at least two distinct names, got {list(classes)}")
    unknown = [r for r in relations if r not in RELATION_PHRASES]
    if unknown or not relations or len(set(relations)) != len(relations):
        raise ValueError(f"the relations must be distinct names among {', '.join(RELATIONS)}, got {list(relations)}")
    per_pair = 2 * len(relations) + _SR2D_AND_PROMPTS
    prompts = []
    for pair_index, (first, second) in enumerate(itertools.combinations(classes, 2)):
        for relation_index, relation in enumerate(relations):
            for order, (subject, obj) in enumerate(((first, second), (second, first))):
                sr2d_id = pair_index * per_pair + 2 * relation_index + order
                prompts.append(
                    SpatialPrompt(
                        prompt_id=f"sr2d-{sr2d_id:05d}",
                        sr2d_id=sr2d_id,
                        text=prompt_text(subject, relation, obj),
                        subject=subject,
                        relation=relation,
                        object=obj,
                    )
                )
    return tuple(prompts)


def content_hash(prompts: Iterable[SpatialPrompt]) -> str:
    """The canonical hash of prompts, in ``prompt_id`` order (`HASH_RULE`)."""
    digest = hashlib.sha256()
    for p in sorted(prompts, key=lambda p: p.prompt_id):
        line = [p.prompt_id, p.sr2d_id, p.text, p.subject, p.relation, p.object]
        digest.update(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def sample_prompts(
    prompts: Sequence[SpatialPrompt], max_prompts: int | None, seed: int = 0
) -> tuple[SpatialPrompt, ...]:
    """The stable sample of at most `max_prompts` prompts (`SAMPLE_RULE`), in ``sr2d_id`` order; all when None."""
    if max_prompts is None:
        return tuple(sorted(prompts, key=lambda p: p.sr2d_id))
    if max_prompts < 1:
        raise ValueError(f"max_prompts must be at least 1, got {max_prompts}")
    chosen = sorted(prompts, key=lambda p: subset_rank(p.prompt_id, seed))[:max_prompts]
    return tuple(sorted(chosen, key=lambda p: p.sr2d_id))


def image_seed(prompt_id: str, image_index: int, seed: int = 0) -> int:
    """The generation seed of image `image_index` of a prompt (`SEED_RULE`): an int in [0, 2**63)."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def image_seeds(prompt_id: str, n_images: int, seed: int = 0) -> list[int]:
    """The seeds of images 0 .. n_images - 1 of a prompt."""
    return [image_seed(prompt_id, i, seed) for i in range(n_images)]


def build_prompt_set(output: str | Path, *, max_prompts: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write the prompt set (or its stable sample) to `output` with its manifest; return the manifest."""
    full = build_prompts()
    prompts = sample_prompts(full, max_prompts, seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([asdict(p) for p in prompts], schema=PROMPT_SCHEMA)
    write_atomically(output, lambda tmp: pq.write_table(table, tmp))
    manifest = {
        "name": PROMPT_SET_NAME,
        "version": PROMPT_SET_VERSION,
        "file": output.name,
        "content_hash": content_hash(prompts),
        "hash_rule": HASH_RULE,
        "full_set_hash": content_hash(full),
        "n_prompts": len(prompts),
        "n_full_set": len(full),
        "classes": len(COCO_CLASSES),
        "relations": list(RELATIONS),
        "sample": {
            "max_prompts": max_prompts,
            "seed": seed,
            "rule": SAMPLE_RULE.format(n=max_prompts, seed=seed) if max_prompts is not None else None,
        },
        "image_seed_rule": SEED_RULE,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_atomically(manifest_path(output), lambda tmp: tmp.write_text(text))
    return manifest


def load_prompts(path: str | Path) -> PromptSet:
    """Read a prompt file, check it against its manifest's content hash, and return its prompts (sr2d order)."""
    path = Path(path)
    manifest = json.loads(manifest_path(path).read_text())
    rows = pq.read_table(path, schema=PROMPT_SCHEMA).to_pylist()
    prompts = tuple(sorted((SpatialPrompt(**row) for row in rows), key=lambda p: p.sr2d_id))
    found = content_hash(prompts)
    if found != manifest["content_hash"]:
        raise PromptHashError(f"{path}: content hash {found} does not match the manifest's {manifest['content_hash']}")
    return PromptSet(path=path, manifest=manifest, prompts=prompts)


class SpatialPromptSettings(JobSettings):
    """Settings of `python -m benchmark.spatial.prompts`."""

    output: Path = Field(description="the prompt Parquet file to write (its manifest is written beside it)")
    max_prompts: int | None = Field(None, ge=1, description="keep a stable sample of this many prompts")
    seed: int = Field(0, description="seed of the stable sample")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        SpatialPromptSettings, argv, prog="python -m benchmark.spatial.prompts", description=__doc__.split("\n\n")[0]
    )
    manifest = build_prompt_set(settings.output, max_prompts=settings.max_prompts, seed=settings.seed)
    print(json.dumps({k: manifest[k] for k in ("name", "version", "content_hash", "n_prompts")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
