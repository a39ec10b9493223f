"""A small OpenAI-compatible ``/v1/chat/completions`` server for tests (stdlib ``http.server``, 127.0.0.1 only).

It answers with a local model through `pipelines.engines.hf.HFGenerator`, constrained by the JSON schema the
request carries in ``response_format``, and it is strict about the request: a missing or non-strict
``json_schema`` response format, a wrong API key, or a message part with keys the OpenAI format does not have
(e.g. ``"image_url": null`` inside a text part) is answered with an HTTP error. Every request is recorded
(without the image data) in `OpenAIServer.requests`.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from local_http import LocalHTTPServer

from pipelines.engines.base import EngineOptions
from pipelines.engines.hf import HFGenerator
from pipelines.prompting import ChatRequest
from schemas import Limits

__all__ = ["TINY_QWEN_LIMITS", "TINY_QWEN_MAX_NEW_TOKENS", "OpenAIServer"]

# Graph bounds under which the tiny random-weight Qwen (tests' `tiny_models_dir / "qwen2_5_vl"`) always finishes a
# schema-valid graph well within `TINY_QWEN_MAX_NEW_TOKENS` (measured: at most ~100 tokens).
TINY_QWEN_LIMITS = Limits(
    max_objects=2, max_relations=2, max_attributes=1, text_pattern=r"^[a-z][a-z ]{0,7}$"
)
TINY_QWEN_MAX_NEW_TOKENS = 256

_PART_KEYS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}}


class RequestError(ValueError):
    """The request does not follow the OpenAI chat-completions format this server accepts."""


def _image(part: dict[str, Any]) -> bytes:
    url = part["image_url"]["url"]
    header, _, data = url.partition(",")
    if not (header.startswith("data:image/") and header.endswith(";base64")):
        raise RequestError(f"image_url must be a base64 data URL, got {url[:40]!r}")
    return base64.b64decode(data)


def _chat_request(body: dict[str, Any]) -> ChatRequest:
    response_format = body.get("response_format") or {}
    schema = response_format.get("json_schema") or {}
    if response_format.get("type") != "json_schema" or schema.get("strict") is not True:
        raise RequestError(
            "response_format must be {'type': 'json_schema', 'json_schema': {..., 'strict': true}}"
        )
    if not isinstance(schema.get("schema"), dict) or not schema.get("name"):
        raise RequestError("response_format.json_schema needs a name and a schema object")
    system, texts, images = "", [], []
    for message in body["messages"]:
        content = message["content"]
        if message["role"] == "system":
            system = content if isinstance(content, str) else "".join(p["text"] for p in content)
            continue
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if set(part) != _PART_KEYS.get(part.get("type"), set()) or any(v is None for v in part.values()):
                raise RequestError(f"malformed content part with keys {sorted(part)}")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(_image(part))
    if len(images) > 1:
        raise RequestError("at most one image per request")
    return ChatRequest(
        system, "\n".join(texts), schema["schema"], schema["name"], images[0] if images else None
    )


class OpenAIServer(LocalHTTPServer):
    """Serve `model_dir` on 127.0.0.1 in a background thread; use as a context manager.

    `api_key`, when given, must arrive as ``Authorization: Bearer <api_key>``. `requests` lists, per request:
    the model name, the schema name, whether the schema was strict, ``max_tokens``, the number of images and
    whether the key matched.
    """

    def __init__(
        self, model_dir: str | Path, api_key: str | None = None, options: EngineOptions | None = None
    ):
        self.api_key = api_key
        self.generator = HFGenerator(str(model_dir), options or EngineOptions(cpus_per_actor=1))
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__()


    def complete(self, body: dict[str, Any], authorized: bool) -> dict[str, Any]:
        """The chat-completion response to a request body (records the request)."""
        request = _chat_request(body)
        with self._lock:
            self.requests.append(
                {
                    "model": body.get("model"),
                    "schema_name": body["response_format"]["json_schema"]["name"],
                    "strict": body["response_format"]["json_schema"]["strict"],
                    "schema": body["response_format"]["json_schema"]["schema"],
                    "max_tokens": body.get("max_tokens"),
                    "images": int(request.image is not None),
                    "authorized": authorized,
                }
            )
            generation = self.generator.generate([request], max_new_tokens=body.get("max_tokens"))[0]
        if generation.error:
            raise RuntimeError(generation.error)
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": "length" if generation.truncated else "stop",
                }
            ],
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                authorized = (
                    server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}"
                )
                if not authorized:
                    self._reply(
                        401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}}
                    )
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    self._reply(200, server.complete(body, authorized))
                except RequestError as exc:
                    self._reply(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
                except RuntimeError as exc:
                    self._reply(500, {"error": {"message": str(exc), "type": "server_error"}})

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        return Handler
