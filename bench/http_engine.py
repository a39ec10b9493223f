"""Throughput of the ``openai`` engine against a server with a fixed latency, per requests-in-flight bound.

Starts an OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1 (aiohttp, in a thread of this process)
that waits `--latency` seconds and then answers a fixed valid scene graph, writes a LAION-style Parquet of N
captions, and runs the real ``text_to_graph`` annotate job (`pipelines.annotate.run`, ``engine="openai"``, one
HTTP worker, ``--engine-options.max-concurrency C``) once per C in `--concurrency`, in an already started
in-process Ray. The ideal rate of one worker is C / latency rows/s; the printed ratio is the measured rate over
it (target: >= 0.8)::

    python bench/http_engine.py                       # C = 8, 32, 128 at 200 ms, about 15 s of requests each
    python bench/http_engine.py --concurrency 32 --rows 3000

Two rates per C: end to end (the job's rows over its wall time, Ray Data's start and the writes included) and
steady state, the one the ratio uses: the requests the server received over the time from the first request's
arrival to the last answer (server clock), i.e. without the job's start-up and its tail after the last answer.
The server also reports the most requests it held at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.annotate import RunSummary, run
from pipelines.annotate.settings import load_config

GRAPH = json.dumps(
    {
        "objects": [
            {"id": 0, "name": "ball", "attributes": ["red"]},
            {"id": 1, "name": "table", "attributes": ["wooden"]},
        ],
        "relations": [{"subject": 0, "predicate": "on", "object": 1}],
    }
)


class LatencyServer:
    """A chat-completions server answering `GRAPH` after `latency` seconds; counts requests and the most in flight."""

    def __init__(self, latency: float):
        self.latency = latency
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_arrival: float | None = None
        self.last_answer: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = None
        self.base_url = ""

    def reset(self) -> None:
        self.requests = self.max_in_flight = 0
        self.first_arrival = self.last_answer = None

    async def _handle(self, request):
        from aiohttp import web

        now = time.perf_counter()
        self.first_arrival = self.first_arrival or now
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        self.last_answer = time.perf_counter()
        return web.json_response(
            {
                "id": f"chatcmpl-{self.requests}",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": GRAPH}, "finish_reason": "stop"}
                ],
            }
        )

    async def _start(self) -> int:
        from aiohttp import web

        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def __enter__(self) -> LatencyServer:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def write_captions(directory: Path, rows: int) -> None:
    """A LAION-style Parquet (URL, TEXT) of `rows` distinct captions; text tasks never fetch the URLs."""
    directory.mkdir(parents=True)
    table = pa.table(
        {
            "URL": [f"https://img.example/{i}.jpg" for i in range(rows)],
            "TEXT": [f"a red ball number {i} on a wooden table" for i in range(rows)],
        }
    )
    pq.write_table(table, directory / "part-0.parquet")


def annotate(
    source: Path, output: Path, base_url: str, concurrency: int, batch_size: int, rows_per_shard: int
) -> RunSummary:
    """The summary of the text_to_graph job through the openai engine (every row must come out ok)."""
    argv = ["--input", str(source), "--output", str(output), "--model", "bench", "--task", "text_to_graph"]
    argv += ["--engine", "openai", "--rows-per-shard", str(rows_per_shard)]
    argv += ["--engine-options.base-url", base_url, "--engine-options.api-key-env", ""]
    argv += ["--engine-options.num-actors", "1", "--engine-options.batch-size", str(batch_size)]
    argv += ["--engine-options.max-concurrency", str(concurrency)]
    summary = run(load_config(argv))
    if summary.ok != summary.rows_annotated or not summary.rows_annotated:
        raise RuntimeError(f"expected every row ok: {summary.text()}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits per request")
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows per run (default: what the ideal rate answers in --seconds, at least 200)",
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=8, help="--engine-options.batch-size")
    parser.add_argument("--rows-per-shard", type=int, default=5000)
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the in-process Ray (default: all; a Ray already running in this process is used as it is)",
    )
    args = parser.parse_args(argv)

    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    results = []
    try:
        with LatencyServer(args.latency) as server, tempfile.TemporaryDirectory(prefix="http_bench_") as tmp:
            for concurrency in args.concurrency:
                ideal = concurrency / args.latency
                rows = args.rows or max(200, math.ceil(ideal * args.seconds))
                source = Path(tmp) / f"c{concurrency}" / "in"
                write_captions(source, rows)
                server.reset()
                summary = annotate(
                    source,
                    source.parent / "out",
                    server.base_url,
                    concurrency,
                    args.batch_size,
                    args.rows_per_shard,
                )
                window = server.last_answer - server.first_arrival
                results.append((concurrency, rows, summary, server.requests, window, server.max_in_flight))
    finally:
        if started:
            ray.shutdown()

    print(
        f"openai engine, text_to_graph, server latency {args.latency * 1000:g} ms, 1 HTTP worker, "
        f"batch size {args.batch_size}, Ray CPUs: {cpus}"
    )
    print("steady = server requests / (last answer - first request arrival); ideal = C / latency")
    print(
        f"{'C':>5} {'rows':>7} {'wall s':>8} {'e2e rows/s':>11} {'window s':>9} {'steady rows/s':>14} "
        f"{'ideal rows/s':>13} {'ratio':>6} {'max in flight':>14}"
    )
    for concurrency, rows, summary, requests, window, peak in results:
        ideal = concurrency / args.latency
        steady = requests / window
        print(
            f"{concurrency:>5} {rows:>7} {summary.wall_seconds:>8.2f} {summary.rows_per_second:>11.1f} "
            f"{window:>9.3f} {steady:>14.1f} {ideal:>13.1f} {steady / ideal:>6.3f} {peak:>14}"
        )
    print("target: ratio >= 0.8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
