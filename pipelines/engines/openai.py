"""The ``openai`` engine: any OpenAI-compatible ``/v1/chat/completions`` endpoint via ``ray.data.llm``.

Each request carries the task's JSON schema as ``response_format`` (``json_schema``, ``strict``), images as
base64 ``data:`` URLs, greedy decoding and a token bound. The API key is read from the environment variable named
by `EngineOptions.api_key_env` and handed to the HTTP workers inside an aiohttp session factory, never in the
processor config, the rows, the logs or the run summary.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipelines.engines.base import Generation, openai_messages
from pipelines.engines.processor import ProcessorEngine
from pipelines.tasks import ChatRequest

if TYPE_CHECKING:
    import aiohttp
    from ray.data.llm import HttpRequestProcessorConfig

__all__ = ["DEFAULT_BASE_URL", "AuthorizedSession", "OpenAIEngine", "chat_completions_url"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def chat_completions_url(base_url: str | None) -> str:
    """``{base_url}/chat/completions`` (a URL that already ends with it is kept)."""
    url = (base_url or DEFAULT_BASE_URL).rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class AuthorizedSession:
    """An aiohttp session factory that sends ``Authorization: Bearer <key>``; its repr never shows the key."""

    def __init__(self, env_name: str):
        self.env_name = env_name
        self._key = os.environ.get(env_name)

    def __call__(self) -> aiohttp.ClientSession:
        import aiohttp

        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        return aiohttp.ClientSession(headers=headers)

    def __repr__(self) -> str:
        return f"AuthorizedSession(env_name={self.env_name!r})"


class OpenAIEngine(ProcessorEngine):
    """Chat completions with structured outputs against an OpenAI-compatible server."""

    name = "openai"

    def processor_config(self) -> HttpRequestProcessorConfig:
        from ray.data.llm import HttpRequestProcessorConfig

        options = self.options
        return HttpRequestProcessorConfig(
            url=chat_completions_url(options.base_url),
            session_factory=AuthorizedSession(options.api_key_env),
            qps=options.qps,
            max_retries=options.max_retries,
            batch_size=options.batch_size,
            concurrency=options.num_actors,
        )

    def payload(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions request body."""
        return {
            "model": self.model,
            "messages": openai_messages(request),
            "temperature": 0.0,
            "max_tokens": self.options.max_new_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": request.schema_name, "schema": request.schema, "strict": True},
            },
        }

    def request_columns(self, request: ChatRequest) -> dict[str, Any]:
        return {"payload": self.payload(request)}

    def generation(self, row: dict[str, Any]) -> Generation:
        response = row["http_response"]
        error = response.get("error")
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            return Generation(None, error=f"engine error: HTTP API error: {message}")
        choice = response["choices"][0]
        message = choice["message"]
        if message.get("content") is None and message.get("refusal"):
            return Generation(None, error=f"engine error: the model refused: {message['refusal']}")
        return Generation(message.get("content"), truncated=choice.get("finish_reason") == "length")
