"""Published prompts and the model calls built from them.

Prompts are Markdown files in ``pipelines/prompts/{task}.{version}.md`` with a small front matter (``task``,
``version``, ``inputs``) and two sections, ``## system`` and ``## user``. Placeholders use `string.Template`
syntax (``${max_objects}``) so that JSON examples in the prompt need no escaping. Every row records
``prompt_version`` = ``{version}+{sha1 of the file}[:8]``, so an edited prompt is never mistaken for the published
one. A `ChatRequest` is what an engine sends: the rendered messages, an optional image and the answer's schema.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

__all__ = ["PROMPTS_DIR", "ChatRequest", "PromptTemplate", "load_prompt"]

PROMPTS_DIR = Path(__file__).with_name("prompts")
INPUTS = frozenset({"image", "caption"})
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.DOTALL)
_SECTION = re.compile(r"^## (system|user)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    """A published prompt: system and user text with `string.Template` placeholders."""

    task: str
    version: str
    inputs: frozenset[str]
    system: str
    user: str
    sha1: str

    @property
    def prompt_version(self) -> str:
        return f"{self.version}+{self.sha1[:8]}"

    def render(self, variables: Mapping[str, Any]) -> tuple[str, str]:
        """(system, user) with every placeholder filled; a missing variable raises `KeyError`."""
        return Template(self.system).substitute(variables), Template(self.user).substitute(variables)


@cache
def load_prompt(task: str, version: str) -> PromptTemplate:
    """Read and check ``prompts/{task}.{version}.md``."""
    path = PROMPTS_DIR / f"{task}.{version}.md"
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    match = _FRONT_MATTER.match(text)
    if not match:
        raise ValueError(f"{path}: missing '---' front matter")
    meta = dict(line.split(":", 1) for line in match.group(1).splitlines() if line.strip())
    meta = {k.strip(): v.strip() for k, v in meta.items()}
    if meta.get("task") != task or meta.get("version") != version:
        raise ValueError(
            f"{path}: front matter says task={meta.get('task')!r} version={meta.get('version')!r}"
        )
    inputs = frozenset(part.strip() for part in meta.get("inputs", "").split(",") if part.strip())
    if not inputs or not inputs <= INPUTS:
        raise ValueError(f"{path}: inputs must be a subset of {sorted(INPUTS)}, got {sorted(inputs)}")
    parts = _SECTION.split(text[match.end() :])
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if sorted(parts[1::2]) != ["system", "user"]:
        raise ValueError(f"{path}: needs exactly one '## system' and one '## user' section")
    return PromptTemplate(
        task=task,
        version=version,
        inputs=inputs,
        system=sections["system"],
        user=sections["user"],
        sha1=hashlib.sha1(text.encode("utf-8")).hexdigest(),
    )



@dataclass(frozen=True)
class ChatRequest:
    """One model call: a system and a user message, an optional image, and the JSON schema of the answer.

    `image` is encoded image bytes (JPEG/PNG) or a PIL image; engines convert it to what they send.
    """

    system: str
    user: str
    schema: dict[str, Any]
    schema_name: str
    image: Any = None
