"""The engine interface: (task, model, options) -> a transform of a Ray Dataset of prepared rows.

An engine receives rows with the `PASSTHROUGH_COLUMNS` plus ``caption`` and ``prepared_image`` (bounded JPEG
bytes from `pipelines.images.prepare_batch`), and returns the `PASSTHROUGH_COLUMNS` plus `OUTPUT_FIELDS`:
the raw model text, an engine error, seconds spent, and whether the answer hit the token limit. It never sees
the original image bytes and never returns image bytes. Rows whose ``skip_reason`` is set (image failed to
decode, no caption for a text task) are passed through without calling the model.

Engines know nothing about tasks beyond `Task.request` (prompt, image, JSON schema) and the name of the schema, so
a new task never needs engine code.
"""

from __future__ import annotations

import base64
import io
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipelines.prompting import ChatRequest
from pipelines.tasks import Task

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "ENGINE_OUTPUT_SCHEMA",
    "OUTPUT_FIELDS",
    "PASSTHROUGH_COLUMNS",
    "PASSTHROUGH_FIELDS",
    "ROW_POSITION_FIELDS",
    "Engine",
    "EngineOptions",
    "Generation",
    "image_data_url",
    "openai_messages",
    "output_table",
    "pending_requests",
]

# Where a row belongs: its input shard, its position there, and the shard's row count (to know when it is done).
ROW_POSITION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("_shard", pa.string()),
    pa.field("_index", pa.int64()),
    pa.field("_shard_rows", pa.int64()),
)
# Row bookkeeping that every engine carries through unchanged, and what it adds.
PASSTHROUGH_FIELDS: tuple[pa.Field, ...] = (
    *ROW_POSITION_FIELDS,
    pa.field("key", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("skip_reason", pa.string()),
)
OUTPUT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("raw_output", pa.string()),
    pa.field("engine_error", pa.string()),
    pa.field("seconds", pa.float64()),
    pa.field("truncated", pa.bool_()),
)
PASSTHROUGH_COLUMNS: tuple[str, ...] = tuple(f.name for f in PASSTHROUGH_FIELDS)
ENGINE_OUTPUT_SCHEMA = pa.schema([*PASSTHROUGH_FIELDS, *OUTPUT_FIELDS])


class EngineOptions(BaseModel):
    """Engine settings; each engine reads the ones that apply to it (also the ``engine_options`` settings of
    `python -m pipelines.annotate`, hence a help line each and range checks).

    `batch_size` rows per model call (hf) or per Ray Data batch (vllm, openai); `num_actors` model replicas
    (hf actors, vLLM engines) or concurrent HTTP workers; `max_new_tokens` bounds every answer. The openai engine
    retries a failed request `max_retries` times (waiting ``retry_wait * 2**n`` seconds, or the server's
    ``Retry-After``) and gives up on one after `request_timeout` seconds; each of its workers keeps at most
    `max_concurrency` requests in flight (`pipelines.engines.openai.OpenAIEngine` gives the effective bound). Its
    API key is read from the environment variable named `api_key_env` (empty: send no key), never from a config
    value.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    batch_size: int = Field(8, ge=1, description="rows per model call (hf) or per Ray Data batch (vllm, openai)")
    num_actors: int = Field(1, ge=1, description="model replicas (hf actors, vLLM engines) or HTTP workers")
    max_new_tokens: int = Field(1024, ge=1, description="token bound of every answer")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved by each model actor (hf)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs reserved by each model actor (hf)")
    device: str | None = Field(None, description="hf: torch device (unset: cuda if available, else cpu)")
    dtype: str = Field("auto", description="hf, vllm: weight dtype: auto, float32, bfloat16 or float16")
    trust_remote_code: bool = Field(False, description="hf, vllm: allow model code from the hub")
    base_url: str | None = Field(None, description="openai: endpoint base URL, e.g. http://host:8000/v1")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="openai: NAME of the environment variable holding the API key ('' sends no key)",
    )
    max_retries: int = Field(3, ge=0, description="openai: further tries of a failed request")
    retry_wait: float = Field(1.0, ge=0, description="openai: first wait between tries in seconds, doubling")
    request_timeout: float = Field(120.0, gt=0, description="openai: seconds before a request is given up")
    qps: int | None = Field(None, gt=0, description="openai: requests per second per worker (unset: unbounded)")
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="openai: requests in flight per HTTP worker (unset: 4 x batch size, as Ray's HTTP stage "
        "runs 4 batches at once); batches grow to at least half of it",
    )
    max_model_len: int = Field(8192, ge=1, description="vllm: context length")
    accelerator_type: str | None = Field(None, description="vllm: Ray accelerator type of the engines, e.g. H100")
    engine_kwargs: dict[str, Any] = Field(
        {}, description="vllm: further vLLM engine arguments (a YAML mapping, or key=value flags)"
    )


@dataclass
class Generation:
    """One model answer: the text, or an engine error; seconds spent; whether it stopped at the token limit."""

    text: str | None
    error: str | None = None
    seconds: float | None = None
    truncated: bool | None = None


class Engine(ABC):
    """Runs a task's requests through a model, as a transform of a Ray Dataset (see the module docstring)."""

    name: ClassVar[str]

    def __init__(self, task: Task, model: str, options: EngineOptions | None = None):
        self.task = task
        self.model = model
        self.options = options or EngineOptions()

    @abstractmethod
    def run(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Prepared rows -> `PASSTHROUGH_COLUMNS` + `OUTPUT_FIELDS`, one output row per input row."""


def pending_requests(task: Task, batch: pa.Table) -> list[tuple[int, ChatRequest]]:
    """(position in `batch`, request) for every row that is not skipped."""
    skip = batch.column("skip_reason").to_pylist()
    captions = batch.column("caption").to_pylist()
    images = batch.column("prepared_image").to_pylist()
    return [(i, task.request(captions[i], images[i])) for i in range(batch.num_rows) if skip[i] is None]


def output_table(batch: pa.Table, generations: Mapping[int, Generation]) -> pa.Table:
    """The passthrough columns of `batch` plus the generation of each row (null where the row was skipped)."""
    rows = [generations.get(i) for i in range(batch.num_rows)]
    values = {
        "raw_output": [g.text if g else None for g in rows],
        "engine_error": [g.error if g else None for g in rows],
        "seconds": [g.seconds if g else None for g in rows],
        "truncated": [g.truncated if g else None for g in rows],
    }
    columns = [batch.column(f.name).cast(f.type) for f in PASSTHROUGH_FIELDS]
    columns += [pa.array(values[f.name], f.type) for f in OUTPUT_FIELDS]
    return pa.Table.from_arrays(columns, schema=ENGINE_OUTPUT_SCHEMA)


def _encoded_with_mime(image: Any) -> tuple[bytes, str]:
    """Encoded bytes and MIME type of `image` (JPEG/PNG bytes pass through; a PIL image is encoded as PNG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        if data.startswith(b"\x89PNG"):
            return data, "image/png"
        if data.startswith(b"\xff\xd8"):
            return data, "image/jpeg"
        from PIL import Image

        image = Image.open(io.BytesIO(data))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def image_data_url(image: Any) -> str:
    """A ``data:`` URL (base64) of an image, as OpenAI-compatible servers accept in ``image_url`` parts."""
    data, mime = _encoded_with_mime(image)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """OpenAI chat messages of a request: the system text, then the image (if any) and the user text.

    Contents are strings, except a user message with an image, whose content is a list of an ``image_url`` part
    and a ``text`` part. Ray Data stores these rows exactly: with string contents only, as an Arrow struct with
    the same keys in every message; with a string beside a list, as pickled Python objects. (A list of parts in
    every message would become an Arrow list of structs with the union of all part keys, i.e. a text part with
    ``"image_url": null``, which changes the request.)
    """
    if request.image is None:
        user: Any = request.user
    else:
        user = [
            {"type": "image_url", "image_url": {"url": image_data_url(request.image)}},
            {"type": "text", "text": request.user},
        ]
    return [{"role": "system", "content": request.system}, {"role": "user", "content": user}]
