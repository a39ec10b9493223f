"""The HTTP client under the ``openai`` engine: every answer of a server becomes a JSON object, never an exception.

``ray.data.llm``'s HTTP stage (Ray 2.60) sends each row with ``session.post(url, headers=..., data=...)``, reads
``response.status`` and ``await response.json()``, and raises (ending the whole job) on a body that is not JSON,
on a retryable status that persists, or on a connection error; its error text then embeds the whole request,
a base64 image included. `ResilientSession` is the session factory we hand to that stage instead of a plain
``aiohttp.ClientSession``. Its ``post`` does the request itself and resolves to an `Answer` with status 200 whose
JSON is always ``{"body": text | None, "content_type": ..., "error": message | None}``: the body of a 2xx answer
as text (the engine parses it, so a body that is not a chat completion is that row's error), or the reason there
is none. One shape for every row also keeps Ray Data's Arrow blocks unifiable, which differently shaped server
JSON objects are not. Ray's own retry loop is thereby unused (the stage never sees a retryable status); retries live
here, where ``Retry-After`` is honoured and the request timeout is a setting.

``post`` starts the request at once as an asyncio task, so the requests of a batch run concurrently, whereas the
stage awaits them one after the other. The stage opens one session per batch and a worker runs up to 4 batches
at once (Ray Data's ``RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY``), all on one event loop; `max_concurrency`
bounds the requests in flight of all the sessions one factory opens on that loop, i.e. of one HTTP worker.

``qps`` bounds the tries per second of all the sessions one factory opens, i.e. of one HTTP worker. The stage's own
``qps`` paces each batch from its own start, and a worker runs several batches at once, so it bounds nothing per
worker (measured: 7 requests in 1 s at ``qps=2`` with three batches in flight).

Error texts name the status, the content type and size of the body, and at most `SNIPPET_CHARS` characters of
a server's error message with ``data:`` URLs and the API key masked: never the request body, never image bytes.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RETRYABLE_STATUSES",
    "SNIPPET_CHARS",
    "Answer",
    "api_key_headers",
    "ResilientSession",
    "RetryPolicy",
    "mask_secrets",
    "retry_after_seconds",
]

# Statuses worth another try: rate limits, timeouts and transient server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
SNIPPET_CHARS = 300
# A server's Retry-After is honoured up to this many seconds per wait.
MAX_RETRY_AFTER_SECONDS = 120.0
_DATA_URL = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]*")


@dataclass(frozen=True)
class RetryPolicy:
    """`max_retries` further tries after the first; waits of ``base_wait * 2**n`` seconds (capped at `max_wait`),
    or the server's ``Retry-After`` when it sends one (capped at `MAX_RETRY_AFTER_SECONDS`)."""

    max_retries: int = 3
    base_wait: float = 1.0
    max_wait: float = 30.0
    timeout: float = 120.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_SECONDS)
        return min(self.base_wait * 2**attempt, self.max_wait)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def mask_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with ``data:`` URLs and every secret replaced by placeholders."""
    text = _DATA_URL.sub("data:…", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _snippet(text: str, secrets: tuple[str, ...]) -> str:
    text = mask_secrets(" ".join(text.split()), secrets)
    return text if len(text) <= SNIPPET_CHARS else f"{text[:SNIPPET_CHARS]}… ({len(text)} characters)"


class Answer:
    """What ``ray.data.llm``'s HTTP stage reads of a response: ``status``, ``reason`` and ``await json()``."""

    status = 200
    reason = "OK"

    def __init__(self, payload: dict[str, Any]):
        self.payload = payload

    async def json(self, **_: Any) -> dict[str, Any]:
        return self.payload

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _RateLimit:
    """Spaces the starts of tries at least ``1 / qps`` seconds apart, across every session that shares it."""

    def __init__(self, qps: float):
        self.interval = 1.0 / qps
        self._next = 0.0
        self._lock = threading.Lock()

    async def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class _Slots:
    """One ``asyncio.Semaphore`` of `size` per event loop, shared by every session that shares this object."""

    def __init__(self, size: int):
        self.size = size
        self._by_loop: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._lock = threading.Lock()

    def semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            for other in [known for known in self._by_loop if known.is_closed()]:
                del self._by_loop[other]
            if loop not in self._by_loop:
                self._by_loop[loop] = asyncio.Semaphore(self.size)
            return self._by_loop[loop]


def _error(message: str) -> dict[str, Any]:
    return {"body": None, "content_type": None, "error": message}


class ResilientSession:
    """Session factory and session in one: ``ResilientSession(...)()`` opens the aiohttp session.

    `headers` (e.g. ``Authorization``) go with every request and never appear in errors or in ``repr``. `qps`
    (None: unbounded) bounds the tries per second of all the sessions this factory opens in one process, and
    `max_concurrency` the requests in flight of all the sessions it opens on one event loop.
    """

    def __init__(
        self,
        headers: dict[str, str] | None = None,
        policy: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 64,
        qps: float | None = None,
        _rate: _RateLimit | None = None,
        _slots: _Slots | None = None,
    ):
        self._headers = dict(headers or {})
        self.policy = policy
        self.max_concurrency = max_concurrency
        self.qps = qps
        self._rate = _rate
        self._slots = _slots
        self._session: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return f"ResilientSession(policy={self.policy!r}, headers={sorted(self._headers)})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None, "_semaphore": None, "_rate": None, "_slots": None}

    def __call__(self) -> ResilientSession:
        if self.qps and self._rate is None:
            self._rate = _RateLimit(self.qps)  # one per process, shared by the sessions opened here
        if self._slots is None:
            self._slots = _Slots(self.max_concurrency)  # likewise: one in-flight bound per worker
        return ResilientSession(
            self._headers, self.policy, self.max_concurrency, self.qps, self._rate, self._slots
        )

    @property
    def _secrets(self) -> tuple[str, ...]:
        values = []
        for value in self._headers.values():
            values.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() == "bearer":
                values.append(token)
        return tuple(sorted(values, key=len, reverse=True))

    async def __aenter__(self) -> ResilientSession:
        import aiohttp

        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.policy.timeout)
        )
        self._semaphore = self._slots.semaphore() if self._slots else asyncio.Semaphore(self.max_concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()
        self._session = None

    def post(self, url: str, **kwargs: Any) -> asyncio.Task[Answer]:
        """Start the request now; the task resolves to an `Answer` (never raises for what a server does)."""
        return asyncio.ensure_future(self._post(url, kwargs))

    async def _post(self, url: str, kwargs: dict[str, Any]) -> Answer:
        assert self._semaphore is not None, "use the session inside 'async with'"
        async with self._semaphore:
            return Answer(await self._with_retries(url, kwargs))

    async def _with_retries(self, url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        policy = self.policy
        for attempt in range(policy.max_retries + 1):
            payload, retryable, retry_after = await self._attempt(url, kwargs, attempt + 1)
            if not retryable or attempt == policy.max_retries:
                return payload
            await asyncio.sleep(policy.wait(attempt, retry_after))
        raise AssertionError("unreachable")

    async def _attempt(
        self, url: str, kwargs: dict[str, Any], attempts: int
    ) -> tuple[dict[str, Any], bool, float | None]:
        """(answer, whether to retry, Retry-After seconds) of one request."""
        import aiohttp

        if self._rate is not None:
            await self._rate.wait()
        try:
            async with self._session.post(url, **kwargs) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                body = await response.read()
                content_type = response.headers.get("Content-Type", "unknown content type")
        except asyncio.TimeoutError:
            message = f"HTTP request timed out after {self.policy.timeout:g} s ({attempts} tries)"
            return _error(message), True, None
        except aiohttp.ClientError as exc:
            detail = _snippet(str(exc), self._secrets)
            return _error(f"HTTP connection failed ({attempts} tries): {type(exc).__name__}: {detail}"), True, None
        text = body.decode("utf-8", errors="replace")
        if 200 <= status < 300:
            return {"body": text, "content_type": content_type, "error": None}, False, None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        detail = _server_message(data, text)
        if '"messages"' in detail:  # the server repeats the request: never quote a request body
            detail = "(the body repeats the request; not quoted)"
        message = (
            f"HTTP {status} ({attempts} {'try' if attempts == 1 else 'tries'}; {content_type}, {len(body)} bytes)"
        )
        if detail:
            message += f": {_snippet(detail, self._secrets)}"
        return _error(message), status in RETRYABLE_STATUSES, retry_after


def _server_message(data: Any, text: str) -> str:
    """The server's own error message: ``error.message`` of a JSON error, else the body's text."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return re.sub(r"<[^>]{0,200}>", " ", text)  # an HTML error page: its text, not its markup


def api_key_headers(env_name: str) -> dict[str, str]:
    """``Authorization: Bearer`` from the environment variable `env_name` (none when `env_name` is empty)."""
    key = os.environ.get(env_name) if env_name else None
    return {"Authorization": f"Bearer {key}"} if key else {}
