"""Chunked, resumable work: apply a chunk worker in-process or on a pool of Ray actors (one GPU each when the
cluster has GPUs, else one CPU each), and keep each chunk's results in its own Parquet file.

A worker is a class built once per process from keyword arguments (it loads a model) and called on a list of
items, returning one list of results per chunk. Results come back to the caller, which writes them, so workers
need no shared storage. Chunks are independent, so results never depend on how many actors ran them. A chunk's
file, ``part-{name}.parquet``, is named by a hash of its item ids and written atomically, so an interrupted run
leaves only complete chunks and a re-run can skip the items they hold.

Ray runs a one-CPU actor with one intra-op thread; in-process runs do the same (torch's thread count is set to 1
while the worker runs), because float reductions on CPU depend on the thread count: this way a run without Ray
produces the same pixels and judge outputs as a run on any number of actors.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.runs import init_ray

__all__ = ["chunk_name", "iter_chunks", "map_chunks", "map_stored", "read_stored", "write_chunk"]

Item = TypeVar("Item")


class _ChunkActor:
    """Holds one worker; `run` applies it to a named chunk."""

    def __init__(self, worker_cls: type, worker_kwargs: dict[str, Any]) -> None:
        self.worker = worker_cls(**worker_kwargs)

    def run(self, name: str, items: list[Any]) -> tuple[str, list[Any]]:
        return name, self.worker(items)


def map_chunks(
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    chunks: Iterable[tuple[str, list[Item]]],
    on_result: Callable[[str, list[Any]], None],
    *,
    num_actors: int = 0,
) -> None:
    """Run `worker_cls(**worker_kwargs)` over the named `chunks`, calling `on_result(name, results)` as each
    chunk finishes. `num_actors=0` runs in this process without Ray; otherwise on that many Ray actors (Ray is
    started if needed, joining the cluster named by RAY_ADDRESS when set). `chunks` is consumed lazily: at most
    one chunk per actor is in flight, so the driver never holds the whole workload."""
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        return
    chunks = itertools.chain([first], chunks)
    if num_actors <= 0:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            worker = worker_cls(**worker_kwargs)
            for name, items in chunks:
                on_result(name, worker(items))
        finally:
            torch.set_num_threads(threads)
        return

    import ray

    init_ray()
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    actor_cls = ray.remote(num_cpus=1, num_gpus=gpus)(_ChunkActor)
    actors: list[Any] = []  # started on demand, so a small workload does not load the model num_actors times
    idle: list[Any] = []
    running: dict[Any, Any] = {}
    try:
        while True:
            while (idle or len(actors) < num_actors) and (chunk := next(chunks, None)) is not None:
                if not idle:
                    actors.append(actor_cls.remote(worker_cls, worker_kwargs))
                    idle.append(actors[-1])
                actor = idle.pop()
                running[actor.run.remote(*chunk)] = actor
            if not running:
                break
            [finished], _ = ray.wait(list(running), num_returns=1)
            idle.append(running.pop(finished))
            on_result(*ray.get(finished))
    finally:
        for actor in actors:
            ray.kill(actor)


def chunk_name(ids: Sequence[str]) -> str:
    """The deterministic name of a chunk: 16 hex digits of sha256 over its item ids."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def write_chunk(out_dir: Path, name: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    """Write ``out_dir/part-{name}.parquet`` atomically (a temporary file renamed into place)."""
    partial = out_dir / f".part-{name}.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), partial)
    partial.replace(out_dir / f"part-{name}.parquet")


def iter_chunks(out_dir: Path, schema: pa.Schema, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The chunk files under `out_dir`, one table each, in file-name order."""
    for file in sorted(Path(out_dir).glob("part-*.parquet")):
        yield pq.read_table(file, columns=list(columns) if columns else None, schema=schema)


def read_stored(out_dir: str | Path, schema: pa.Schema) -> pa.Table:
    """Every row stored under `out_dir` in chunks of `schema` (which has ``key`` and ``image_index``), sorted by
    (key, image_index)."""
    tables = [schema.empty_table(), *iter_chunks(Path(out_dir), schema)]
    return pa.concat_tables(tables).sort_by([("key", "ascending"), ("image_index", "ascending")])


def map_stored(
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    items: Iterable[Any],
    schema: pa.Schema,
    out_dir: str | Path,
    *,
    num_actors: int = 0,
    chunk_size: int = 8,
) -> pa.Table:
    """`map_chunks` over per-image items (each with ``key`` and ``image_index``) whose row is not yet stored under
    `out_dir`, `chunk_size` at a time, the worker returning one row of `schema` per item; each chunk is written
    as it finishes (`write_chunk`). Returns every stored row (`read_stored`). `items` is consumed lazily."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = read_stored(out, schema).select(["key", "image_index"]).to_pylist()
    done = {(r["key"], r["image_index"]) for r in stored}
    todo = (item for item in items if (item.key, item.image_index) not in done)

    def chunks() -> Iterator[tuple[str, list[Any]]]:
        while chunk := list(itertools.islice(todo, chunk_size)):
            yield chunk_name([f"{i.key}:{i.image_index}" for i in chunk]), chunk

    map_chunks(
        worker_cls,
        worker_kwargs,
        chunks(),
        lambda name, rows: write_chunk(out, name, rows, schema),
        num_actors=num_actors,
    )
    return read_stored(out, schema)
