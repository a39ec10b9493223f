"""The compositing job's settings: one typed model, which `schemas.settings` turns into flags, ``--config`` YAML
and ``--help`` (``python -m pipelines.compositing --help``).

The ``masks`` and ``compositor`` groups are the validated classes the stages use
(`pipelines.compositing.masks.MaskSettings`, `pipelines.compositing.composite.CompositorSettings`), not copies;
``engine_options`` is the annotation engines' group, used by the layout step and the scene-graph step alike.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.compositing.composite import CompositorSettings
from pipelines.compositing.masks import MaskSettings
from pipelines.engines import ENGINES, EngineOptions
from pipelines.tasks import get_task, task_names
from schemas import Limits
from schemas.settings import JobSettings, parse_settings

__all__ = ["PROG", "CompositingSettings", "load_settings"]

PROG = "python -m pipelines.compositing"
DESCRIPTION = "Compose concept images into new scenes (Gen4Gen): masks, layout, composite, inpaint, annotate."


class CompositingSettings(JobSettings):
    """Everything a compositing run needs (`python -m pipelines.compositing --help` lists it)."""

    input: str = Field(description="folder of scenes in Gen4Gen's layout: INPUT/scene/concept/*.jpg")
    output: str = Field(description="output directory (data/*.parquet, composites/, annotations/, run.json)")
    model: str = Field(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        description="the engine's model (layout and scene graphs): hub id or local directory (hf, vllm), model "
        "name (openai), answer file (fixed)",
    )
    engine: Literal[tuple(sorted(ENGINES))] = Field(  # type: ignore[valid-type]
        "hf", description="hf (transformers), vllm (ray.data.llm), openai (HTTP) or fixed (no model)"
    )
    layout_engine: Literal[tuple(sorted(ENGINES))] | None = Field(  # type: ignore[valid-type]
        None, description="the layout step's engine (unset: --engine); a text model is enough"
    )
    layout_model: str | None = Field(None, description="the layout step's model (unset: --model)")
    backgrounds: str | None = Field(
        None,
        description="a folder of background images, or a text file of background prompts (one per line); unset: "
        "the engine describes one",
    )
    compositions_per_scene: int = Field(4, ge=1, description="compositions made of each scene")
    seed: int = Field(0, ge=0, description="seed of the plan (reference and background draws) and of generation")
    rows_per_shard: int = Field(64, ge=1, description="compositions per output shard (the unit of resume)")
    min_box: int = Field(32, ge=1, description="smallest box side in pixels of the engine's 512 x 512 canvas")
    max_overlap: float = Field(
        0.2, ge=0, le=1, description="largest share of a box covered by another (intersection / smaller area)"
    )
    annotate_task: str = Field("scene_graph", description=f"annotation of the composites: {', '.join(task_names())}")
    num_actors: int = Field(1, ge=1, description="actors of the mask stage and of the composite stage each")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs of each mask and composite actor (1 on GPU nodes)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs of each mask and composite actor")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the in-process Ray instance (local runs only)")
    masks: MaskSettings = Field(default_factory=MaskSettings, description="foreground masks (CLIPSeg)")
    compositor: CompositorSettings = Field(
        default_factory=CompositorSettings, description="background generation, compositing and inpainting (SDXL)"
    )
    limits: Limits = Field(default_factory=Limits, description="graph size bounds of the scene-graph step")
    engine_options: EngineOptions = Field(default_factory=EngineOptions, description="engine settings")

    @field_validator("annotate_task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in task_names() or not get_task(value).needs_image:
            raise ValueError("must be a registered task that looks at the image")
        return value

    def identity(self, input_root: Path, backgrounds: Path | None) -> dict[str, Any]:
        """What the rows depend on (``OUT/run.json``, compared on resume); actor counts and devices are not."""
        return {
            "input": str(input_root),
            "backgrounds": None if backgrounds is None else str(backgrounds),
            "compositions_per_scene": self.compositions_per_scene,
            "seed": self.seed,
            "rows_per_shard": self.rows_per_shard,
            "model": self.model,
            "engine": self.engine,
            "layout_engine": self.layout_engine,
            "layout_model": self.layout_model,
            "min_box": self.min_box,
            "max_overlap": self.max_overlap,
            "annotate_task": self.annotate_task,
            "limits": asdict(self.limits),
            "masks": asdict(self.masks),
            "compositor": asdict(self.compositor),
            "max_new_tokens": self.engine_options.max_new_tokens,
        }


def load_settings(argv: list[str] | None = None) -> CompositingSettings:
    """Settings from defaults < the ``--config`` YAML < flags; bad input exits 2 naming the flag or the file."""
    return parse_settings(CompositingSettings, argv, prog=PROG, description=DESCRIPTION)
