"""The annotation job's settings: one typed model, which `schemas.settings` turns into flags, `--config` YAML
and `--help`.

Nested groups become dotted flags and YAML mappings: ``--filters.max-punsafe 0.1`` is ``filters: {max_punsafe:
0.1}``, likewise ``limits`` (graph size bounds) and ``engine_options``. The groups are the validated classes the
job uses (`pipelines.ingest.IngestFilters`, `schemas.Limits`, `pipelines.engines.EngineOptions`), not copies.
Range checks are constraints of the model, so a bad value is refused with the flag's name before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.engines import ENGINES, EngineOptions
from pipelines.images import MAX_PIXELS, MAX_SIDE
from pipelines.ingest import INPUT_FORMATS, IngestFilters
from pipelines.tasks import Task, task_names
from schemas import Limits
from schemas.settings import JobSettings, parse_settings

__all__ = [
    "PROG",
    "AnnotateConfig",
    "AnnotateSettings",
    "ConfigError",
    "load_config",
]

PROG = "python -m pipelines.annotate"
DESCRIPTION = "Annotate images with scene graphs (or another task) and write Parquet shards."


class ConfigError(ValueError):
    """The settings do not fit the input or the output (a metadata-only input for an image task, an output
    that is not writable, an output of an earlier run with different settings); `main` exits 2."""


class AnnotateSettings(JobSettings):
    """Everything a run needs (`python -m pipelines.annotate --help` lists it)."""

    input: str = Field(description="folder of images, webdataset tars, img2dataset or LAION Parquet, URL list")
    output: str = Field(description="output directory (data/*.parquet, shards/, run.json, summary.json)")
    model: str = Field(
        description="hub id or local directory (hf, vllm); model name sent to the endpoint (openai); answer file "
        "(JSON Lines) or 'builtin' (fixed)"
    )
    task: str = Field("scene_graph", description=f"annotation task: {', '.join(task_names())}")
    engine: Literal[tuple(sorted(ENGINES))] = Field(  # type: ignore[valid-type]
        "hf", description="hf (transformers), vllm (ray.data.llm), openai (HTTP) or fixed (no model: a dry run)"
    )
    input_format: Literal[INPUT_FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description=f"one of {', '.join(INPUT_FORMATS)} (unset: detected from the input)"
    )
    images: bool = Field(True, description="store the original image bytes in the output rows")
    limit: int | None = Field(
        None,
        ge=1,
        description="annotate only the first N input rows, in input order, counted before the ingest filters "
        "(smoke tests; a later run without it annotates the rest)",
    )
    files_per_shard: int = Field(256, ge=1, description="images per shard of a folder input")
    rows_per_shard: int = Field(10_000, ge=1, description="rows per shard of a Parquet or URL-list input")
    max_side: int = Field(MAX_SIDE, ge=1, description="longest side in pixels of the image the model sees")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="pixels at most of the image the model sees")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the in-process Ray instance (local runs only)")
    dashboard: bool = Field(False, description="start Ray's dashboard (local runs only)")
    progress_seconds: float = Field(
        10.0, ge=0, description="seconds between progress lines: rows done, rate, ETA, failures (0: none)"
    )
    filters: IngestFilters = Field(default_factory=IngestFilters, description="ingest filters")
    limits: Limits = Field(default_factory=Limits, description="graph size bounds")
    engine_options: EngineOptions = Field(default_factory=EngineOptions, description="engine settings")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in task_names():
            raise ValueError(f"unknown task; choose one of {', '.join(task_names())}")
        return value

    def manifest(self, task: Task, input_format: str) -> dict[str, Any]:
        """The settings that decide what an output row contains (``OUT/run.json``, compared on resume)."""
        return {
            "input": str(Path(self.input).resolve()),
            "input_format": input_format,
            "files_per_shard": self.files_per_shard,
            "rows_per_shard": self.rows_per_shard,
            "filters": asdict(self.filters),
            "task": task.name,
            "prompt_version": task.prompt_version,
            "limits": asdict(self.limits),
            "model": self.model,
            "images": self.images,
            "max_side": self.max_side,
            "max_pixels": self.max_pixels,
        }


# The name before the settings layer; `bench/annotate_overhead.py` and older scripts build it by keyword.
AnnotateConfig = AnnotateSettings


def load_config(argv: list[str] | None = None) -> AnnotateSettings:
    """Settings from defaults < the ``--config`` YAML < flags; bad input exits 2 naming the flag or the file."""
    return parse_settings(AnnotateSettings, argv, prog=PROG, description=DESCRIPTION)
