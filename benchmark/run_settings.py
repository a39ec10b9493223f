"""The settings of `benchmark.run`: one typed model, `BenchRunSettings`, with groups written as dotted flags or
nested YAML mappings (``generation``, ``judge``, ``questions``, ``clip``, ``cmmd``, ``inception``, ``kid``, ``features``), and
the readers of older layouts: records' ``provenance.config`` (`BenchRunSettings.from_record`) and ``run.json``
(`upgrade_run_identity`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from benchmark.features import FeatureSettings
from benchmark.generate import ADAPTERS, check_adapter, local_model
from benchmark.judge import FLAT_LIMITS, JudgeSettings, nest_limits
from schemas import GenerationSettings, Limits
from schemas.settings import JobSettings

__all__ = [
    "LEGACY_KEYS",
    "RENAMED_KEYS",
    "BenchRunSettings",
    "ClipOptions",
    "CmmdOptions",
    "FeatureOptions",
    "GenerationOptions",
    "InceptionOptions",
    "JudgeOptions",
    "KidOptions",
    "QuestionOptions",
    "upgrade_run_identity",
]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationOptions(_Group):
    """What decides the generated pixels besides the model (recorded as the result's `GenerationSettings`)."""

    images_per_sample: int = Field(1, ge=1, description="images generated per benchmark sample")
    steps: int = Field(40, ge=1, description="denoising steps")
    guidance: float = Field(5.0, ge=0, description="classifier-free guidance scale")
    height: int = Field(1024, ge=8, description="image height in pixels")
    width: int = Field(1024, ge=8, description="image width in pixels")
    seed: int = Field(42, description="base seed; each image's seed depends only on it, its key and its index")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="the generator's weight dtype")
    scheduler: str | None = Field(
        None, description="diffusers scheduler class (unset: the one in the model's model_index.json)"
    )
    long_prompt: bool = Field(
        False,
        description="encode text prompts in 75-token windows, beyond CLIP's 77 tokens (SDXL text adapters only)",
    )

    def settings(self, model: str) -> GenerationSettings:
        return GenerationSettings(
            seed=self.seed,
            images_per_sample=self.images_per_sample,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            height=self.height,
            width=self.width,
            scheduler=self.scheduler or _default_scheduler(model),
            dtype=self.dtype,
            long_prompt=self.long_prompt,
        )


class JudgeOptions(_Group):
    """The VLM judge (`benchmark.judge.JudgeSettings`, which decides its answers) and the synonyms its graphs are
    scored with."""

    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="judge VLM: hub id or local directory")
    restrict_vocabulary: bool = Field(
        True, description="answer in the intended graph's vocabulary (off: the open scene_graph task)"
    )
    max_new_tokens: int = Field(1024, ge=1, description="token bound of each answer")
    batch_size: int = Field(1, ge=1, description="images per judge batch (1: answers independent of batching)")
    limits: Limits = Field(default_factory=Limits, description="size bounds of the judged graphs")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="the judge's weight dtype")
    synonyms: Path | None = Field(
        None, description="YAML (or JSON) mapping of term -> canonical term for the graph IoUs"
    )

    def settings(self) -> JudgeSettings:
        return JudgeSettings(**{name: getattr(self, name) for name in JudgeOptions.model_fields if name != "synonyms"})


class QuestionOptions(_Group):
    """The question track: the judge answers yes/no questions made from each sample's graph
    (`benchmark.questions`)."""

    enabled: bool = Field(True, description="ask the judge each graph's yes/no questions (the question track)")
    max_new_tokens: int = Field(32, ge=1, description="token bound of each yes/no answer")


class ClipOptions(_Group):
    """The CLIP model of CLIP-T and CLIP-I."""

    model: str = Field("ViT-B-32", description="open_clip model name, hf-hub: id or local directory")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag (None: no tag)")
    text: Literal["caption", "sg_text"] = Field(
        "caption", description="the sample text CLIP-T compares each image with"
    )


class CmmdOptions(_Group):
    """The CLIP model of CMMD."""

    model: str = Field("ViT-L-14-336", description="open_clip model name, hf-hub: id or local directory")
    pretrained: str | None = Field("openai", description="open_clip pretrained tag (None: no tag)")


class InceptionOptions(_Group):
    """The Inception network of FID and KID."""

    weights: Path | None = Field(
        None, description="pt_inception weights file (unset: $LAION_SG_INCEPTION_WEIGHTS, else torch hub's cache)"
    )
    allow_download: bool = Field(False, description="download the weights into torch hub's cache when missing")


class KidOptions(_Group):
    """KID's subset sampling."""

    subsets: int = Field(100, ge=1, description="random subsets KID is averaged over")
    subset_size: int = Field(1000, ge=1, description="images per subset (capped at the smaller set)")


class FeatureOptions(_Group):
    """Image feature extraction (Inception and CLIP)."""

    batch_size: int = Field(32, ge=1, description="images per feature batch (part of the features' identity)")


# The judge group mirrors `benchmark.judge.JudgeSettings`; a field added there must be added here.
if set(JudgeOptions.model_fields) - {"synonyms"} != {f.name for f in fields(JudgeSettings)}:
    raise TypeError("JudgeOptions and JudgeSettings have different fields")

# Flat keys of records written before the settings were grouped -> (group, name) now. The judge's graph bounds
# (``judge_max_objects``, ...) then go on into ``judge.limits`` (`benchmark.judge.nest_limits`).
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    **{name: ("generation", name) for name in ("images_per_sample", "steps", "guidance", "height", "width", "seed")},
    "dtype": ("generation", "dtype"),
    "scheduler": ("generation", "scheduler"),
    **{
        f"judge_{name}": ("judge", name)
        for name in ("model", "restrict_vocabulary", "max_new_tokens", "batch_size", *FLAT_LIMITS, "dtype")
    },
    "synonyms": ("judge", "synonyms"),
    "clip_model": ("clip", "model"),
    "clip_pretrained": ("clip", "pretrained"),
    "clip_t_text": ("clip", "text"),
    "cmmd_clip_model": ("cmmd", "model"),
    "cmmd_clip_pretrained": ("cmmd", "pretrained"),
    "inception_weights": ("inception", "weights"),
    "allow_download": ("inception", "allow_download"),
    "kid_subsets": ("kid", "subsets"),
    "kid_subset_size": ("kid", "subset_size"),
    "feature_batch_size": ("features", "batch_size"),
}

# Top-level keys of records written before a setting was renamed -> its name now.
RENAMED_KEYS: dict[str, str] = {"bench": "input"}


class BenchRunSettings(JobSettings):
    """Every setting of a benchmark run (recorded in the result's ``provenance.config``).

    `display_name` is the run's name on the leaderboard (default: the model id); it changes neither the images
    nor the numbers (a run can be resumed under another name)."""

    input: Path = Field(description="the benchmark Parquet file (python -m benchmark.dataset)")
    adapter: str = Field(description=f"how the model is conditioned: {', '.join(sorted(ADAPTERS))}")
    model: str = Field(description="the model to benchmark: hub id or local directory")
    output: Path = Field(description="the run directory (images/, judge/, features/, run.json, result.json)")
    num_actors: int = Field(0, ge=0, description="Ray actors (one GPU each on a GPU cluster); 0: in this process")
    chunk_size: int = Field(8, ge=1, description="samples per generation and judge chunk (the unit of resuming)")
    display_name: str | None = Field(None, description="the run's name on the leaderboard (unset: the model id)")
    generation: GenerationOptions = Field(default_factory=GenerationOptions, description="image generation")
    judge: JudgeOptions = Field(default_factory=JudgeOptions, description="the VLM judge")
    questions: QuestionOptions = Field(default_factory=QuestionOptions, description="the question track")
    clip: ClipOptions = Field(default_factory=ClipOptions, description="CLIP-T and CLIP-I")
    cmmd: CmmdOptions = Field(default_factory=CmmdOptions, description="CMMD")
    inception: InceptionOptions = Field(default_factory=InceptionOptions, description="FID and KID")
    kid: KidOptions = Field(default_factory=KidOptions, description="KID")
    features: FeatureOptions = Field(default_factory=FeatureOptions, description="image feature extraction")

    _known_adapter = field_validator("adapter")(check_adapter)

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> BenchRunSettings:
        """The settings of a record's ``provenance.config``: nested as these settings, or as older records wrote
        them: flat, before they were grouped (``judge_model``, ``steps``, ...; see `LEGACY_KEYS`), with the
        benchmark file under ``bench`` before it was ``input`` (`RENAMED_KEYS`), with the judge's graph bounds flat
        before they were ``judge.limits`` (`benchmark.judge.nest_limits`), without ``questions`` before the question
        track (which such a record did not run)."""
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key in LEGACY_KEYS:
                group, name = LEGACY_KEYS[key]
                values.setdefault(group, {})[name] = value
            else:
                values[RENAMED_KEYS.get(key, key)] = value
        if isinstance(values.get("judge"), Mapping):
            values["judge"] = nest_limits(values["judge"])
        values.setdefault("questions", {"enabled": False})  # a record from before the question track
        return cls.model_validate(values)

    def generation_settings(self) -> GenerationSettings:
        return self.generation.settings(self.model)

    def judge_settings(self) -> JudgeSettings:
        return self.judge.settings()

    def features_settings(self, reference_images: bool = True) -> FeatureSettings:
        """The feature networks; without `reference_images` (a reference-free set) CLIP's only are used."""
        return FeatureSettings(
            inception_weights=None if self.inception.weights is None else str(self.inception.weights),
            allow_download=self.inception.allow_download,
            clip_model=self.clip.model,
            clip_pretrained=self.clip.pretrained,
            cmmd_clip_model=self.cmmd.model,
            cmmd_clip_pretrained=self.cmmd.pretrained,
            batch_size=self.features.batch_size,
            reference_images=reference_images,
        )

    def resolved(self) -> BenchRunSettings:
        """Local paths made absolute (hub ids stay as they are, model directories become absolute), so the
        record points at the same files from anywhere."""

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else path.resolve()

        return self.model_validate(
            self.model_dump()
            | {
                "input": self.input.resolve(),
                "output": self.output.resolve(),
                "model": local_model(self.model),
                "judge": self.judge.model_dump()
                | {"model": local_model(self.judge.model), "synonyms": absolute(self.judge.synonyms)},
                "clip": self.clip.model_dump() | {"model": local_model(self.clip.model)},
                "cmmd": self.cmmd.model_dump() | {"model": local_model(self.cmmd.model)},
                "inception": self.inception.model_dump() | {"weights": absolute(self.inception.weights)},
            }
        )


def _default_scheduler(model: str) -> str | None:
    """The scheduler class named in a diffusers model's ``model_index.json``, when it has one."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(model)
    except (OSError, ValueError):
        return None
    entry = config.get("scheduler")
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


def upgrade_run_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's ``run.json`` in today's layout: one pinned before the judge's graph bounds were nested (flat
    ``max_objects``, ... in ``judge``) reads as the same judge settings (`benchmark.judge.nest_limits`)."""
    judge = stored.get("judge")
    return stored | {"judge": nest_limits(judge)} if isinstance(judge, Mapping) else stored
