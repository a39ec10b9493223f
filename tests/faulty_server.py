"""A hostile OpenAI-compatible server for tests (stdlib ``http.server``, 127.0.0.1 only, stops with its context).

Each request's behaviour is chosen by the first `CASES` name found in its user message, so a test drives one
behaviour per input row by putting the case name into the row's caption (``text_to_graph`` sends the caption);
``force=`` gives every request the same behaviour (image tasks, whose prompt has no caption).
Attempts per case are counted in `FaultyServer.attempts`; the ``Authorization`` header of every request is kept
in `FaultyServer.authorizations`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from local_http import LocalHTTPServer

__all__ = ["CASES", "GOOD_GRAPH", "FaultyServer", "completion"]

GOOD_GRAPH = {
    "objects": [{"id": 0, "name": "dog", "attributes": ["brown"]}, {"id": 1, "name": "sofa", "attributes": []}],
    "relations": [{"subject": 0, "predicate": "on", "object": 1}],
}


def completion(content: Any, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
        ],
    }


_HTML_500 = b"<html><head><title>500</title></head><body><h1>Internal Server Error</h1></body></html>"
_MANY_OBJECTS = {
    "objects": [{"id": i, "name": "cat", "attributes": []} for i in range(10_000)],
    "relations": [],
}
_MARKUP = {
    "objects": [
        {"id": 0, "name": "<script>alert(1)</script>", "attributes": []},
        {"id": 1, "name": "dog", "attributes": ["\"'><img src=x onerror=alert(1)>"]},
    ],
    "relations": [{"subject": 1, "predicate": "javascript:alert(1)", "object": 0}],
}

# case name -> (status, headers, body) or a callable(attempt) giving one
CASES: dict[str, Any] = {
    "goodrow": (200, {}, completion(json.dumps(GOOD_GRAPH))),
    "htmlerror": (500, {"Content-Type": "text/html"}, _HTML_500),
    "notjson": (200, {"Content-Type": "text/plain"}, b"this is not json at all"),
    "emptybody": (200, {"Content-Type": "application/json"}, b""),
    "foo": (200, {}, {"foo": 1}),
    "emptyobject": (200, {}, {}),
    "jsonlist": (200, {}, [1, 2, 3]),
    "emptychoices": (200, {}, {"choices": []}),
    "nullchoices": (200, {}, {"choices": None}),
    "objectcontent": (200, {}, completion({"objects": []})),
    "nullcontent": (200, {}, completion(None)),
    "reservedkey": (200, {}, {"__idx_in_batch": 0, "choices": []}),
    "ratelimited": (429, {"Retry-After": "0"}, {"error": {"message": "rate limit exceeded", "type": "rate"}}),
    "throttledonce": lambda attempt: (
        (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}})
        if attempt == 1
        else (200, {}, completion(json.dumps(GOOD_GRAPH)))
    ),
    "echokey": None,  # 401 whose body repeats the request's Authorization header (filled in by the handler)
    "echorequest": None,  # 400 whose body repeats the whole request body, image data URL included
    "slowanswer": "slow",  # answers after `FaultyServer.slow_seconds`
    "hugeanswer": (200, {}, completion(json.dumps(GOOD_GRAPH) + " " * 10_000_000)),
    "manyobjects": (200, {}, completion(json.dumps(_MANY_OBJECTS))),
    "markupgraph": (200, {}, completion(json.dumps(_MARKUP))),
}


class FaultyServer(LocalHTTPServer):
    """Serve `CASES` on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, slow_seconds: float = 3.0, force: str | None = None):
        self.slow_seconds = slow_seconds
        self.force = force
        self.attempts: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.log: list[tuple[str, float, str]] = []
        self._lock = threading.Lock()
        super().__init__()

    def answer(self, raw: bytes, authorization: str | None) -> tuple[int, dict[str, str], Any]:
        body = json.loads(raw)
        user = json.dumps(body["messages"][-1]["content"])
        case = self.force or next((name for name in CASES if name in user), "goodrow")
        with self._lock:
            self.attempts[case] += 1
            self.log.append((case, time.monotonic(), user[-40:]))
            self.authorizations.append(authorization)
            attempt = self.attempts[case]
        behaviour = CASES[case]
        if case == "echokey":
            return 401, {}, {"error": {"message": f"invalid credentials: {authorization}"}}
        if case == "echorequest":
            return 400, {"Content-Type": "text/plain"}, b"bad request: " + raw
        if behaviour == "slow":
            time.sleep(self.slow_seconds)
            return 200, {}, completion(json.dumps(GOOD_GRAPH))
        return behaviour(attempt) if callable(behaviour) else behaviour

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: no request fails on a closed connection

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                status, headers, body = server.answer(raw, self.headers.get("Authorization"))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    headers = {"Content-Type": "application/json", **headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the timeout case)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

        return Handler
