"""The ``hf`` engine: transformers ``generate`` with the task's JSON schema enforced by xgrammar.

`HFGenerator` is a plain class (load once, `generate(requests)`), usable without Ray, e.g. by the benchmark's
judge. The same class is the Ray Data actor: ``map_batches(HFGenerator, compute=ActorPoolStrategy(size=n))``
calls it on batches of prepared rows. Decoding is greedy; batches are left-padded; every answer is bounded by
``max_new_tokens``. The schema is compiled with ``any_whitespace=False``: with free whitespace a weak model can
spend its whole budget on spaces (measured with xgrammar 0.2.8), and the schema's string patterns, id bounds and
``maxItems`` (see `SceneGraph.json_schema`) bound the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.engines.base import (
    Engine,
    EngineOptions,
    Generation,
    output_table,
    pending_requests,
)
from pipelines.prompting import ChatRequest
from pipelines.tasks import Task

if TYPE_CHECKING:
    import ray.data
    from PIL import Image

__all__ = ["HFEngine", "HFGenerator"]


def _pil(image: Any) -> Image.Image:
    from PIL import Image

    if isinstance(image, bytes | bytearray | memoryview):
        import io

        image = Image.open(io.BytesIO(bytes(image)))
    return image.convert("RGB")


class HFGenerator:
    """A transformers image-text-to-text model with xgrammar-constrained, greedy, batched generation.

    `model` is a hub id or a local directory (loaded with `AutoProcessor` and `AutoModelForImageTextToText`;
    ``trust_remote_code`` only when `options.trust_remote_code`). `task` is needed only when the instance is
    called on Ray Data batches.
    """

    def __init__(self, model: str, options: EngineOptions | None = None, task: Task | None = None):
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForImageTextToText, AutoProcessor

        options = options or EngineOptions()
        self.options = options
        self.task = task
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(options.cpus_per_actor)))
        if options.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = getattr(torch, options.dtype)
        remote = options.trust_remote_code
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=remote)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, trust_remote_code=remote)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        vocab_size = self.model.config.get_text_config().vocab_size
        tokenizer_info = xgr.TokenizerInfo.from_huggingface(self.processor.tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(tokenizer_info)
        self._grammars: dict[str, Any] = {}

    def grammar(self, schema: dict[str, Any]) -> Any:
        """The compiled grammar of a JSON schema (cached per schema)."""
        key = json.dumps(schema)  # key order matters: it is the order the grammar generates properties in
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def _messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        user = [{"type": "image"}] if request.image is not None else []
        user.append({"type": "text", "text": request.user})
        return [
            {"role": "system", "content": [{"type": "text", "text": request.system}]},
            {"role": "user", "content": user},
        ]

    def _generate_batch(self, requests: Sequence[ChatRequest], max_new_tokens: int) -> list[Generation]:
        import torch
        import xgrammar as xgr

        start = time.perf_counter()
        texts = [
            self.processor.apply_chat_template(self._messages(r), tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        images = [_pil(r.image) for r in requests if r.image is not None]
        inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        logits_processor = xgr.contrib.hf.LogitsProcessor([self.grammar(r.schema) for r in requests])
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=[logits_processor],
            )
        generated = output[:, inputs["input_ids"].shape[1] :].tolist()
        seconds = (time.perf_counter() - start) / len(requests)
        texts_out = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [
            Generation(text, seconds=seconds, truncated=not self.eos_ids.intersection(ids))
            for text, ids in zip(texts_out, generated, strict=True)
        ]

    def generate(
        self, requests: Sequence[ChatRequest], max_new_tokens: int | None = None
    ) -> list[Generation]:
        """One answer per request. A batch that fails is retried request by request, so that one bad request
        (e.g. longer than the model's context) fails alone, with its error."""
        limit = max_new_tokens or self.options.max_new_tokens
        if not requests:
            return []
        try:
            return self._generate_batch(requests, limit)
        except Exception as exc:  # noqa: BLE001 - any model failure becomes the row's error
            if len(requests) == 1:
                return [Generation(None, error=f"engine error: {type(exc).__name__}: {exc}")]
        return [generation for request in requests for generation in self.generate([request], limit)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data entry point: prepared rows -> passthrough columns + generations."""
        if self.task is None:
            raise ValueError("HFGenerator needs a task to annotate dataset batches")
        pending = pending_requests(self.task, batch)
        generations = self.generate([request for _, request in pending])
        return output_table(batch, {i: g for (i, _), g in zip(pending, generations, strict=True)})


class HFEngine(Engine):
    """transformers + xgrammar in a pool of Ray Data actors (CPU or GPU)."""

    name = "hf"

    def run(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        import ray.data

        options = self.options
        return ds.map_batches(
            HFGenerator,
            fn_constructor_kwargs={"model": self.model, "options": options, "task": self.task},
            compute=ray.data.ActorPoolStrategy(size=options.num_actors),
            batch_size=options.batch_size,
            batch_format="pyarrow",
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
        )
