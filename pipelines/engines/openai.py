"""The ``openai`` engine: any OpenAI-compatible ``/v1/chat/completions`` endpoint via ``ray.data.llm``.

Each request carries the task's JSON schema as ``response_format`` (``json_schema``, ``strict``), images as
base64 ``data:`` URLs, greedy decoding and a token bound. The API key is read from the environment variable named
by `EngineOptions.api_key_env` and handed to the HTTP workers inside the session factory
(`pipelines.engines.http_session.ResilientSession`), never in the processor config, the rows, the logs or the run
summary. Whatever the server answers (an HTML error page, a body that is not a chat completion, a rate limit that
never lifts, a timeout) becomes that row's ``engine_error``; it never ends the job.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipelines.engines.base import Generation, openai_messages
from pipelines.engines.http_session import ResilientSession, RetryPolicy, api_key_headers
from pipelines.engines.processor import ProcessorEngine
from pipelines.prompting import ChatRequest
from schemas import json_kind

if TYPE_CHECKING:
    from ray.data.llm import HttpRequestProcessorConfig

__all__ = [
    "DEFAULT_BASE_URL",
    "OpenAIEngine",
    "chat_completions_url",
    "read_chat_completion",
    "read_completion_object",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ERROR_CHARS = 300
# Batches one HTTP worker runs at once: Ray Data's RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY (Ray 2.60).
BATCHES_AT_ONCE = 4


def chat_completions_url(base_url: str | None) -> str:
    """``{base_url}/chat/completions`` (a URL that already ends with it is kept)."""
    url = (base_url or DEFAULT_BASE_URL).rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def read_chat_completion(answer: Any) -> Generation:
    """The generation in an answer of `ResilientSession` (``{"body", "content_type", "error"}``), or an engine
    error saying what is wrong with it."""
    if not isinstance(answer, dict) or answer.get("error"):
        error = answer.get("error") if isinstance(answer, dict) else f"unexpected answer {json_kind(answer)}"
        return Generation(None, error=f"engine error: {error}")
    body = answer.get("body") or ""
    if not body.strip():
        return Generation(None, error="engine error: HTTP 200 with an empty body")
    try:
        response = json.loads(body)
    except json.JSONDecodeError:
        return Generation(
            None,
            error=f"engine error: HTTP 200 with a non-JSON body ({answer.get('content_type')}, {len(body)} characters)",
        )
    return read_completion_object(response)


def read_completion_object(response: Any) -> Generation:
    """The generation in a decoded chat-completions body, or an engine error saying what is wrong with it."""
    if not isinstance(response, dict):
        return Generation(None, error=f"engine error: not a chat completion: the body is {json_kind(response)}")
    if not response:
        return Generation(None, error="engine error: not a chat completion: the body is an empty JSON object")
    error = response.get("error")
    if error:
        message = error.get("message", error) if isinstance(error, dict) else error
        return Generation(None, error=f"engine error: HTTP API error: {str(message)[:_ERROR_CHARS]}")
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        what = "an empty list" if choices == [] else json_kind(choices)
        keys = sorted(response)[:8]
        return Generation(
            None, error=f"engine error: not a chat completion: 'choices' is {what} (keys {keys})"
        )
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        return Generation(None, error="engine error: not a chat completion: choices[0].message is missing")
    content = message.get("content")
    if content is None and message.get("refusal"):
        return Generation(
            None, error=f"engine error: the model refused: {str(message['refusal'])[:_ERROR_CHARS]}"
        )
    if content is None:
        return Generation(None, error="engine error: empty answer: message.content is null")
    if not isinstance(content, str):
        return Generation(
            None, error=f"engine error: message.content is {json_kind(content)}, expected a string"
        )
    return Generation(content, truncated=choice.get("finish_reason") == "length")


class OpenAIEngine(ProcessorEngine):
    """Chat completions with structured outputs against an OpenAI-compatible server.

    Concurrency: `EngineOptions.num_actors` HTTP workers, each with at most ``max_concurrency`` (unset:
    4 × batch size, what the stage runs anyway) requests in flight. Ray's HTTP stage (Ray 2.60) runs one Ray task
    at a time per worker, and inside it up to 4 batches at once (``RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY``), each sent through its own
    session; so a worker has at most 4 × batch requests to send, and the shared bound of `ResilientSession` is
    reached only if batches are at least a quarter of it. The stage's batch is therefore
    ``max(batch_size, ceil(max_concurrency / 2))`` (twice what is needed, so that the next batch's requests wait
    on the bound while one batch finishes). Effective bound per worker:
    ``min(max_concurrency, 4 × stage batch, rows of the task's input bundle)``; the last is small only for inputs
    smaller than a few batches.
    """

    name = "openai"

    def concurrency(self) -> tuple[int, int]:
        """(requests in flight per worker, rows per batch of the HTTP stage)."""
        options = self.options
        if options.max_concurrency is None:  # what the stage runs anyway: 4 batches at once
            return BATCHES_AT_ONCE * options.batch_size, options.batch_size
        return options.max_concurrency, max(options.batch_size, -(-options.max_concurrency // 2))

    def processor_config(self) -> HttpRequestProcessorConfig:
        from ray.data.llm import HttpRequestProcessorConfig

        options = self.options
        in_flight, batch_size = self.concurrency()
        policy = RetryPolicy(
            max_retries=options.max_retries, base_wait=options.retry_wait, timeout=options.request_timeout
        )
        return HttpRequestProcessorConfig(
            url=chat_completions_url(options.base_url),
            session_factory=ResilientSession(
                api_key_headers(options.api_key_env),
                policy,
                max_concurrency=in_flight,
                qps=options.qps,
            ),
            qps=None,  # the session bounds the rate per worker; the stage's bound is per batch
            max_retries=0,  # retries happen in the session, which honours Retry-After
            batch_size=batch_size,
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
        return read_chat_completion(row["http_response"])
