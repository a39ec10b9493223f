"""Image generation for CompSG-Bench: a registry of model adapters and a resumable, order-independent runner.

Adapters (`ADAPTERS`):

- ``diffusers-caption``: any diffusers text-to-image pipeline (`DiffusionPipeline.from_pretrained`), prompt = caption;
- ``diffusers-sg-text``: the same, prompt = the canonical scene-graph text (`sg_text`);
- ``sdxl-sg``: an SDXL-SG pipeline folder (`training.pipeline.SDXLSGPipeline.from_pretrained`), conditioned on
  the scene graph itself;
- ``sdxl-lora``: a `training.lora` run (`training.lora_pipeline.LoraSDXLPipeline.from_pretrained`: its base SDXL plus the
  LoRA weights), prompt = caption.

With `GenerationSettings.long_prompt` (off by default) a text adapter does not pass ``prompt=``: it encodes the
prompt in 75-token windows (`training.long_prompt.long_prompt_embeds`, for SDXL pipelines) and passes the
embeddings, so text beyond CLIP's 77 tokens conditions the image; the scene-graph adapter encodes the graph's SG
text in the same windows (`SDXLSGPipeline(..., long_prompt=True)`).

Image i of sample k is generated alone (batch of one) from its own seed, `image_seed(seed, key, i)`, drawn on a
CPU generator, so the pixels depend neither on how samples were split across actors nor on the device's RNG.
Images are written under ``RUN_DIR/images/`` as Parquet chunks (``key, image_index, seed, png``) named by a hash
of their keys, each written atomically; a re-run skips every key already present.
"""

from __future__ import annotations

import hashlib
import importlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from benchmark.chunks import chunk_name, iter_chunks, map_chunks, write_chunk
from benchmark.provenance import weights_sha256
from benchmark.sample_set import BenchmarkSample
from schemas import GenerationSettings, ModelInfo, SceneGraph

__all__ = [
    "ADAPTERS",
    "IMAGES_SCHEMA",
    "Adapter",
    "GenerationTask",
    "ImageGenerator",
    "check_adapter",
    "generate_images",
    "image_index",
    "image_seed",
    "images_digest",
    "iter_images",
    "local_model",
    "model_info",
    "register_adapter",
    "stored_image_ids",
]

Conditioning = Literal["caption", "sg_text", "scene_graph"]

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image_index", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("png", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class GenerationTask:
    """What one sample contributes to generation (no reference image, so it is cheap to ship to actors)."""

    key: str
    caption: str
    sg_text: str
    scene_graph_json: str

    @classmethod
    def of(cls, sample: BenchmarkSample) -> GenerationTask:
        return cls(sample.key, sample.caption, sample.sg_text, sample.scene_graph.to_json())


@dataclass(frozen=True)
class Adapter:
    """Which diffusers pipeline class loads a model and which field of a sample conditions it.

    `pipeline` is ``"module:Class"``; the model loads with that class's own `from_pretrained`."""

    name: str
    conditioning: Conditioning
    pipeline: str = "diffusers:DiffusionPipeline"

    def load(self, model: str, dtype: Any) -> Any:
        """`from_pretrained(model, dtype=dtype)` of the adapter's pipeline class."""
        module, _, class_name = self.pipeline.partition(":")
        return getattr(importlib.import_module(module), class_name).from_pretrained(model, dtype=dtype)

    def condition(self, task: GenerationTask) -> dict[str, Any]:
        """The conditioning keyword argument of the pipeline call."""
        if self.conditioning == "scene_graph":
            return {"scene_graph": SceneGraph.from_json(task.scene_graph_json, record=task.key)}
        return {"prompt": task.caption if self.conditioning == "caption" else task.sg_text}


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    """Add an adapter to the registry (by name); returns it."""
    ADAPTERS[adapter.name] = adapter
    return adapter


register_adapter(Adapter("diffusers-caption", "caption"))
register_adapter(Adapter("diffusers-sg-text", "sg_text"))
register_adapter(Adapter("sdxl-sg", "scene_graph", "training.pipeline:SDXLSGPipeline"))
register_adapter(Adapter("sdxl-lora", "caption", "training.lora_pipeline:LoraSDXLPipeline"))


def check_adapter(name: str) -> str:
    """`name` if it is a registered adapter, else `ValueError` listing them (a settings validator)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter; choose one of {', '.join(sorted(ADAPTERS))}")
    return name


def local_model(model: str) -> str:
    """A model directory made absolute; a hub id as it is (so a record points at the same files from anywhere)."""
    return str(Path(model).resolve()) if Path(model).exists() else model


def model_info(adapter: str, model: str) -> ModelInfo:
    """The `model` part of a result record: adapter, model id, weights hash and conditioning."""
    return ModelInfo(
        adapter=adapter,
        model_id=model,
        weights_hash=weights_sha256(model),
        conditioning=ADAPTERS[adapter].conditioning,
    )


def image_seed(seed: int, key: str, image_index: int) -> int:
    """The seed of image `image_index` of sample `key`: 63 bits of sha256("{seed}:{key}:{image_index}")."""
    digest = hashlib.sha256(f"{seed}:{key}:{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class ImageGenerator:
    """Loads one pipeline and generates every image of the tasks it is called with (a chunk worker)."""

    def __init__(
        self, adapter: Adapter | str, model: str, settings: GenerationSettings, device: str | None = None
    ) -> None:
        import diffusers
        import torch

        self.adapter = ADAPTERS[adapter] if isinstance(adapter, str) else adapter
        self.settings = settings
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        pipe = self.adapter.load(model, getattr(torch, settings.dtype))
        if settings.scheduler and type(pipe.scheduler).__name__ != settings.scheduler:
            pipe.scheduler = getattr(diffusers, settings.scheduler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)

    def __call__(self, tasks: Sequence[GenerationTask]) -> list[dict[str, Any]]:
        return [row for task in tasks for row in self._generate(task)]

    def _generate(self, task: GenerationTask) -> list[dict[str, Any]]:
        import torch

        condition = self.adapter.condition(task)
        if self.settings.long_prompt and "scene_graph" in condition:
            condition["long_prompt"] = True  # the SG text in windows (`SDXLSGPipeline.encode_scene_graphs`)
        elif self.settings.long_prompt:
            from training.long_prompt import long_prompt_embeds

            condition = long_prompt_embeds(self.pipe, condition.pop("prompt")) | condition
        rows = []
        for index in range(self.settings.images_per_sample):
            seed = image_seed(self.settings.seed, task.key, index)
            output = self.pipe(
                **condition,
                num_inference_steps=self.settings.num_inference_steps,
                guidance_scale=self.settings.guidance_scale,
                height=self.settings.height,
                width=self.settings.width,
                generator=torch.Generator("cpu").manual_seed(seed),
            )
            rows.append({"key": task.key, "image_index": index, "seed": seed, "png": _png(output.images[0])})
        return rows


def _images_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "images"


def iter_images(run_dir: str | Path, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The stored images of a run, one table per chunk file (every image of a key is in the same file)."""
    yield from iter_chunks(_images_dir(run_dir), IMAGES_SCHEMA, columns)


def image_index(run_dir: str | Path) -> pa.Table:
    """``key, image_index, seed`` of every stored image (no pixels), sorted by (key, image_index)."""
    columns = ["key", "image_index", "seed"]
    tables = [IMAGES_SCHEMA.empty_table().select(columns), *iter_images(run_dir, columns)]
    return pa.concat_tables(tables).sort_by([("key", "ascending"), ("image_index", "ascending")])


def images_digest(run_dir: str | Path) -> str:
    """sha256 over the lines ``key, image_index, seed, sha256(png)`` of every stored image, in sorted order."""
    lines = []
    for table in iter_images(run_dir):
        for row in table.to_pylist():
            lines.append(f"{row['key']}\t{row['image_index']}\t{row['seed']}\t{hashlib.sha256(row['png']).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def stored_image_ids(run_dir: str | Path, keys: Sequence[str], images_per_key: int, noun: str) -> set[tuple[str, int]]:
    """The (key, image_index) of every image stored under `run_dir`; `ValueError` unless they are exactly
    `images_per_key` images for each of `keys` (`noun` names them in the message: "samples", "prompts")."""
    stored = image_index(run_dir)
    expected = {(key, i) for key in keys for i in range(images_per_key)}
    found = set(zip(stored.column("key").to_pylist(), stored.column("image_index").to_pylist(), strict=True))
    if found != expected:
        raise ValueError(
            f"{run_dir}: {len(expected - found)} images missing and {len(found - expected)} unexpected "
            f"for {len(keys)} {noun} x {images_per_key} images"
        )
    return found


def generate_images(
    samples: Sequence[BenchmarkSample],
    adapter: str,
    model: str,
    settings: GenerationSettings,
    run_dir: str | Path,
    *,
    num_actors: int = 0,
    chunk_size: int = 8,
    device: str | None = None,
) -> pa.Table:
    """Generate the images of every sample not yet stored under `run_dir`; return the run's `image_index`.

    `num_actors=0` generates in this process; otherwise on that many Ray actors.
    """
    if adapter not in ADAPTERS:
        raise KeyError(f"unknown adapter {adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
    out = _images_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = set(image_index(run_dir).column("key").to_pylist())
    todo = sorted((GenerationTask.of(s) for s in samples if s.key not in done), key=lambda t: t.key)
    chunks = [
        (chunk_name([t.key for t in todo[i : i + chunk_size]]), todo[i : i + chunk_size])
        for i in range(0, len(todo), chunk_size)
    ]
    # the Adapter itself travels to the actors, so one registered at run time works there too
    worker = {"adapter": ADAPTERS[adapter], "model": model, "settings": settings, "device": device}
    map_chunks(
        ImageGenerator, worker, chunks, lambda name, rows: write_chunk(out, name, rows, IMAGES_SCHEMA), num_actors=num_actors
    )
    return image_index(run_dir)
