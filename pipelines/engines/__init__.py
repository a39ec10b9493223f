"""Annotation engines behind one interface (`Engine`), chosen by name.

``hf`` (transformers + xgrammar, Ray Data actors), ``openai`` (any OpenAI-compatible endpoint through
``ray.data.llm.HttpRequestProcessorConfig``) and ``vllm`` (``ray.data.llm.vLLMEngineProcessorConfig``; needs the
``gpu`` extra). Engine modules are imported on first use, so choosing ``hf`` never imports vLLM.
"""

from __future__ import annotations

from importlib import import_module

from pipelines.engines.base import Engine, EngineOptions, Generation
from pipelines.tasks import Task

__all__ = ["ENGINES", "Engine", "EngineOptions", "Generation", "build_engine"]

# name -> "module:class"
ENGINES: dict[str, str] = {
    "fixed": "pipelines.engines.fixed:fixed_engine",
    "hf": "pipelines.engines.hf:HFEngine",
    "openai": "pipelines.engines.openai:OpenAIEngine",
    "vllm": "pipelines.engines.vllm:VLLMEngine",
}


def build_engine(name: str, task: Task, model: str, options: EngineOptions | None = None) -> Engine:
    """The engine registered as `name`, for `task` on `model`."""
    try:
        module, cls = ENGINES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known engines: {', '.join(sorted(ENGINES))}") from None
    return getattr(import_module(module), cls)(task, model, options)
