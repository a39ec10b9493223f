"""The CompSG-Bench result record: every metric of one (model, benchmark version) run and its provenance."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

__all__ = ["BenchmarkInfo", "BenchmarkResult", "GenerationSettings", "ModelInfo", "Provenance", "json_kind"]

RESULT_SCHEMA_VERSION = 1


def json_kind(value: Any) -> str:
    """JSON's name for the type of a parsed JSON value: ``a JSON array``, ``a JSON number``, ``JSON null``, ...
    (a value JSON cannot hold is named by its Python type)."""
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, numbers.Real):
        return "a JSON number"
    kinds = {dict: "a JSON object", list: "a JSON array", str: "a JSON string"}
    return kinds.get(type(value), type(value).__name__)


_PLAIN_KINDS = {
    "a JSON object": "an object",
    "a JSON array": "an array",
    "a JSON string": "a string",
    "a JSON number": "a number",
    "a JSON boolean": "a boolean",
    "JSON null": "null",
}


def _shown(value: Any) -> str:
    """A value as JSON would show it, and its JSON kind: ``true (a boolean)``, ``"27.5" (a string)``."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = json_kind(value)  # "a JSON array" -> "an array"; a Python type name stays as it is
    return f"{text} ({_PLAIN_KINDS.get(kind, kind)})"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchmarkInfo(_Strict):
    """Which frozen benchmark set was used."""

    name: str = "CompSG-Bench"
    version: str
    content_hash: str = Field(description="sha256 of the frozen benchmark file")
    n_samples: int = Field(ge=1)


class ModelInfo(_Strict):
    """The model adapter and the exact weights."""

    adapter: str = Field(description="adapter name, e.g. 'diffusers-caption', 'diffusers-sg-text', 'sdxl-sg'")
    model_id: str = Field(description="hub id or local directory")
    weights_hash: str | None = Field(default=None, description="sha256 over the weight files, when local")
    conditioning: Literal["caption", "sg_text", "scene_graph"]


# GenerationSettings fields added after records were first written -> their default, at which they are not dumped
LATER_DEFAULTS: dict[str, Any] = {"long_prompt": False}


class GenerationSettings(_Strict):
    """Everything that determines the generated pixels besides the model.

    Settings added after the first records (`LATER_DEFAULTS`: `long_prompt`) are left out of the dump while they
    hold their default, so a record or ``run.json`` written before they existed dumps, hashes (`run_id`) and
    compares as it did; a record without them reads with the default."""

    seed: int
    images_per_sample: int = Field(ge=1)
    num_inference_steps: int = Field(ge=1)
    guidance_scale: float
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    scheduler: str | None = None
    dtype: str = "float32"
    long_prompt: bool = Field(
        False,
        description="text encoded in 75-token windows concatenated along the sequence (training.long_prompt), "
        "not truncated at 77 tokens",
    )

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name, default in LATER_DEFAULTS.items():
            if name in data and getattr(self, name) == default:
                del data[name]
        return data



class Provenance(_Strict):
    """Where and how the record was produced."""

    package_version: str
    packages: dict[str, str] = Field(description="versions of torch, diffusers, transformers, open_clip, ray, ...")
    hardware: dict[str, Any] = Field(description="device name, count, CPU, platform")
    wall_time_s: float = Field(ge=0)
    created_at: str = Field(description="ISO-8601 UTC time")
    config: dict[str, Any] = Field(default_factory=dict, description="the full run configuration")


class BenchmarkResult(_Strict):
    """One leaderboard entry. `metrics` holds the numbers; `metric_details` how each was computed
    (extractor, weights hash, resize mode, sample counts, judge model, CLIP model, ...).

    Every metric value must be a finite real number: a JSON number (an int is read as a float). Booleans and
    strings are refused even where they would convert (``true``, ``"27.5"``), and so are NaN and infinities."""

    schema_version: int = RESULT_SCHEMA_VERSION
    benchmark: BenchmarkInfo
    model: ModelInfo
    generation: GenerationSettings
    metrics: dict[str, float]
    metric_details: dict[str, dict[str, Any]] = Field(default_factory=dict)
    provenance: Provenance

    @field_validator("metrics", mode="before")
    @classmethod
    def _real_numbers(cls, metrics: Any) -> Any:
        if isinstance(metrics, dict):
            bad = [
                f"{name} = {_shown(value)}"
                for name, value in metrics.items()
                if isinstance(value, bool) or not isinstance(value, numbers.Real)
            ]
            if bad:
                raise ValueError(f"metrics must be real numbers (not booleans or strings); not a number: {', '.join(bad)}")
        return metrics

    @field_validator("metrics")
    @classmethod
    def _finite(cls, metrics: dict[str, float]) -> dict[str, float]:
        bad = [name for name, value in metrics.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"metrics must be finite numbers; not finite: {', '.join(bad)}")
        return metrics

    @property
    def run_id(self) -> str:
        """Stable id of what was measured (benchmark + model + generation settings), not of when."""
        identity = {
            "benchmark": self.benchmark.model_dump(),
            "model": self.model.model_dump(),
            "generation": self.generation.model_dump(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> BenchmarkResult:
        return cls.model_validate_json(text)
