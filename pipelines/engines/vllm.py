"""The ``vllm`` engine: ``ray.data.llm.vLLMEngineProcessorConfig`` on GPU workers (the ``gpu`` extra).

Structured output is requested per row in ``sampling_params["structured_outputs"] = {"json": schema}`` (Ray 2.60
turns it into ``vllm.sampling_params.StructuredOutputsParams``; ``guided_decoding`` is deprecated). The schema is
passed as a JSON string so that Ray Data's Arrow conversion cannot add or reorder keys. Images go in
OpenAI-style messages through the prepare-multimodal stage. ``should_continue_on_error`` is on, so a row that
fails in the engine (e.g. a prompt longer than ``max_model_len``) becomes a failed row instead of a failed job.
Building the configuration does not import vLLM; running it does.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipelines.engines.base import EngineOptions, Generation, openai_messages
from pipelines.engines.processor import ProcessorEngine
from pipelines.prompting import ChatRequest

if TYPE_CHECKING:
    from ray.data.llm import vLLMEngineProcessorConfig

__all__ = ["VLLMEngine", "vllm_config_kwargs"]


def vllm_config_kwargs(model: str, options: EngineOptions, needs_image: bool) -> dict[str, Any]:
    """The keyword arguments of `vLLMEngineProcessorConfig` for `model` with `options`."""
    engine_kwargs: dict[str, Any] = {
        "max_model_len": options.max_model_len,
        "trust_remote_code": options.trust_remote_code,
    }
    if needs_image:
        engine_kwargs["limit_mm_per_prompt"] = {"image": 1}
    if options.dtype != "auto":
        engine_kwargs["dtype"] = options.dtype
    engine_kwargs |= options.engine_kwargs
    return {
        "model_source": model,
        "engine_kwargs": engine_kwargs,
        "batch_size": options.batch_size,
        "concurrency": options.num_actors,
        "accelerator_type": options.accelerator_type,
        "should_continue_on_error": True,
        "prepare_multimodal_stage": {"enabled": needs_image},
    }


class VLLMEngine(ProcessorEngine):
    """vLLM batch inference through ``ray.data.llm``."""

    name = "vllm"

    def processor_config(self) -> vLLMEngineProcessorConfig:
        from ray.data.llm import vLLMEngineProcessorConfig

        return vLLMEngineProcessorConfig(
            **vllm_config_kwargs(self.model, self.options, self.task.needs_image)
        )

    def request_columns(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "messages": openai_messages(request),
            "sampling_params": {
                "temperature": 0.0,
                "max_tokens": self.options.max_new_tokens,
                "structured_outputs": {"json": json.dumps(request.schema)},
            },
        }

    def generation(self, row: dict[str, Any]) -> Generation:
        seconds = row.get("time_taken_llm")
        return Generation(
            row["generated_text"],
            seconds=float(seconds) if seconds is not None and seconds >= 0 else None,
            truncated=int(row["num_generated_tokens"]) >= self.options.max_new_tokens,
        )
