"""Export of a large annotated input (`pipelines.export`): peak RSS and rows/s at N rows against a small baseline.

    .venv/bin/python bench/export_stream.py [--rows 1000000] [--baseline-rows 10000] [--image-bytes 1024]

Builds annotated shards of `schemas.row_schema` (what `pipelines.annotate` writes) with pyarrow, vectorised: keys
like sha1 hex digests, ~2% failed rows (three error reasons), ~0.2% rows repeating an earlier key, scene graphs of
0-12 objects (Zipf-distributed names from 3,000, 0-3 attributes each from 800) and 0-8 relations (from 300
predicates), captions, sg_text and raw_output drawn from pools, and an image of `--image-bytes` random bytes
(the export copies image bytes, it never decodes them; 0 leaves the image column out). Then each size is exported
in its own subprocess, so that its peak RSS (`ru_maxrss`) is its own: the figures are the export call's wall
time, rows/s (input rows over that time), the process's peak RSS and its RSS after the imports, and per size the
peak over the after-import RSS. Printed as JSON with the ratios N ÷ baseline (peak RSS, rows/s) and the peak RSS
growth per extra input row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas import ANNOTATION_TYPE, SCENE_GRAPH_TYPE, row_schema  # noqa: E402

ROWS_PER_SHARD = 10_000  # rows per input file (one row group each); the baseline should be a multiple
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 of each value (uint64): a vectorised stand-in for a hash."""
    with np.errstate(over="ignore"):
        z = (values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _keys(index: np.ndarray) -> pa.Array:
    """40-character lowercase hex keys (like `schemas.row_key`'s sha1), a function of the row index."""
    words = np.stack([_mix(index * np.uint64(3) + np.uint64(k)) for k in range(3)], axis=1).astype(">u8")
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = words.view(np.uint8).reshape(len(index), 24)
    digits = np.stack([hex_digits[raw >> 4], hex_digits[raw & 15]], axis=2).reshape(len(index), 48)[:, :40]
    data = np.ascontiguousarray(digits).tobytes()
    offsets = np.arange(len(index) + 1, dtype=np.int32) * 40
    return pa.Array.from_buffers(pa.string(), len(index), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _strings(prefix: str, index: np.ndarray, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(index).cast(pa.string()), suffix, "")


def _lists(lengths: np.ndarray, values: pa.Array, valid: np.ndarray | None = None) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), values, mask=None if valid is None else pa.array(~valid)
    )


def _graphs(rng: np.random.Generator, valid: np.ndarray) -> pa.Array:
    n = len(valid)
    n_objects = np.where(valid, np.minimum(rng.poisson(4.0, n), 12), 0)
    n_objects[valid & (n_objects == 0)] = 1
    total_objects = int(n_objects.sum())
    object_ids = np.arange(total_objects) - np.repeat(np.cumsum(n_objects) - n_objects, n_objects)
    names = pa.array(np.minimum(rng.zipf(1.3, total_objects), 3000)).cast(pa.string())
    names = pc.binary_join_element_wise("object", names, "")
    n_attributes = rng.integers(0, 4, total_objects)
    attributes = pc.binary_join_element_wise(
        "attr", pa.array(np.minimum(rng.zipf(1.4, int(n_attributes.sum())), 800)).cast(pa.string()), ""
    )
    objects = pa.StructArray.from_arrays(
        [pa.array(object_ids, pa.int32()), names, _lists(n_attributes, attributes)],
        fields=list(SCENE_GRAPH_TYPE.field("objects").type.value_type),
    )
    n_relations = np.where(n_objects > 1, np.minimum(rng.poisson(2.5, n), 8), 0)
    total_relations = int(n_relations.sum())
    owner_objects = np.repeat(np.maximum(n_objects, 1), n_relations)
    predicates = pc.binary_join_element_wise(
        "predicate", pa.array(np.minimum(rng.zipf(1.5, total_relations), 300)).cast(pa.string()), ""
    )
    relations = pa.StructArray.from_arrays(
        [
            pa.array(rng.integers(0, owner_objects), pa.int32()),
            predicates,
            pa.array(rng.integers(0, owner_objects), pa.int32()),
        ],
        fields=list(SCENE_GRAPH_TYPE.field("relations").type.value_type),
    )
    return pa.StructArray.from_arrays(
        [_lists(n_objects, objects), _lists(n_relations, relations)],
        fields=list(SCENE_GRAPH_TYPE),
        mask=pa.array(~valid),
    )


def _pool(rng: np.random.Generator, prefix: str, size: int, words: int) -> pa.Array:
    vocabulary = [f"{prefix}{i}" for i in range(500)]
    return pa.array([" ".join(rng.choice(vocabulary, words)) for _ in range(size)])


def _shard(start: int, stop: int, image_bytes: int, seed: int) -> pa.Table:
    """Rows `start`..`stop` of the synthetic annotated input."""
    rng = np.random.default_rng([seed, start])
    n = stop - start
    index = np.arange(start, stop, dtype=np.uint64)
    key_index = index.copy()
    repeat = (rng.random(n) < 0.002) & (index > 0)  # rows that repeat an earlier row's key
    key_index[repeat] = (rng.random(int(repeat.sum())) * index[repeat]).astype(np.uint64)
    draw = rng.random(n)
    status = np.where(draw < 0.02, "failed", np.where(draw < 0.10, "repaired", "ok"))
    failed = status == "failed"
    reasons = np.array(["invalid json: unexpected end", "timeout: no answer", "image: cannot identify image"])
    error = np.where(failed, reasons[rng.integers(0, len(reasons), n)], None)
    texts = _pool(rng, "w", 256, 12)
    raw = _pool(rng, '{"objects": "o', 256, 60)
    columns = {
        "key": _keys(key_index),
        "url": _strings("https://laion.example/images/", index, ".jpg"),
        "caption": texts.take(pa.array(rng.integers(0, 256, n))),
        "aesthetic_score": pa.array(rng.uniform(6.0, 8.0, n)),
        "width": pa.array(np.full(n, 256, np.int32)),
        "height": pa.array(np.full(n, 256, np.int32)),
        "scene_graph": _graphs(rng, ~failed),
        "sg_text": pc.if_else(pa.array(failed), pa.nulls(n, pa.string()), texts.take(pa.array(rng.integers(0, 256, n)))),
        "annotation": pa.StructArray.from_arrays(
            [
                pa.array(np.full(n, "fixed-engine")),
                pa.array(np.full(n, "fixed")),
                pa.array(np.full(n, "scene_graph")),
                pa.array(np.full(n, "v1")),
                raw.take(pa.array(rng.integers(0, 256, n))),
                pa.array(status),
                pa.array(error, pa.string()),
                pa.array(rng.uniform(0.1, 2.0, n)),
            ],
            fields=list(ANNOTATION_TYPE),
        ),
    }
    schema = row_schema(with_image=image_bytes > 0)
    if image_bytes > 0:
        offsets = np.arange(n + 1, dtype=np.int32) * image_bytes
        data = rng.bytes(n * image_bytes)
        images = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        columns["image"] = pa.StructArray.from_arrays([images, _strings("", index, ".jpg")], ["bytes", "path"])
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def build_input(directory: Path, rows: int, image_bytes: int = 1024, seed: int = 0) -> Path:
    """Write `rows` synthetic annotated rows as ``directory/data/shard-*.parquet``; returns `directory`."""
    (directory / "data").mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
        table = _shard(start, min(rows, start + ROWS_PER_SHARD), image_bytes, seed)
        pq.write_table(table, directory / "data" / f"shard-{shard:05d}.parquet")
    return directory


_CHILD = """
import json, resource, sys, time
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
from pipelines.export import export
import matplotlib.figure, datasets, huggingface_hub  # what the export imports on the way, before the baseline
after_import = rss_kib()
start = time.perf_counter()
stats = export(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_kib": peak, "after_import_rss_kib": after_import,
                  "total": stats["rows"]["total"], "exported": stats["rows"]["exported"]}))
"""


def export_in_subprocess(input_dir: Path, output_dir: Path) -> dict[str, float]:
    """Run the export in a fresh Python process; its wall time, peak RSS and RSS after the imports."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(input_dir), str(output_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"export failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(rows: int, work: Path, image_bytes: int, seed: int = 0) -> dict[str, float]:
    start = time.perf_counter()
    source = build_input(work / f"input-{rows}", rows, image_bytes, seed)
    build_seconds = time.perf_counter() - start
    run = export_in_subprocess(source, work / f"output-{rows}")
    if run["total"] != rows:
        raise RuntimeError(f"the export read {run['total']} rows of {rows}")
    mib = 1 / 1024
    return {
        "rows": rows,
        "exported": run["exported"],
        "input_mib": round(sum(p.stat().st_size for p in (source / "data").iterdir()) / 2**20, 1),
        "build_seconds": round(build_seconds, 2),
        "seconds": round(run["seconds"], 3),
        "rows_per_s": round(rows / run["seconds"], 1),
        "peak_rss_mib": round(run["peak_rss_kib"] * mib, 1),
        "after_import_rss_mib": round(run["after_import_rss_kib"] * mib, 1),
        "export_rss_mib": round((run["peak_rss_kib"] - run["after_import_rss_kib"]) * mib, 1),
    }


def run(rows: int, baseline_rows: int, image_bytes: int = 1024, work: Path | None = None) -> dict:
    """Measure the baseline size, then `rows`; the figures and their ratios."""
    with tempfile.TemporaryDirectory(prefix="export-stream-", dir=work) as tmp:
        baseline = measure(baseline_rows, Path(tmp), image_bytes)
        large = measure(rows, Path(tmp), image_bytes)
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "image_bytes": image_bytes,
        "baseline": baseline,
        "large": large,
        "ratios": {
            "peak_rss": round(large["peak_rss_mib"] / baseline["peak_rss_mib"], 3),
            "rows_per_s": round(large["rows_per_s"] / baseline["rows_per_s"], 3),
        },
        # the peak's growth per extra input row, in bytes
        "peak_rss_bytes_per_row": round(
            (large["peak_rss_mib"] - baseline["peak_rss_mib"]) * 2**20 / (rows - baseline_rows), 1
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000)
    parser.add_argument("--image-bytes", type=int, default=1024, help="random image payload per row; 0: none")
    parser.add_argument("--work", type=Path, default=None, help="where to write the inputs and outputs (a temp dir)")
    args = parser.parse_args(argv)
    if not 0 < args.baseline_rows < args.rows:
        parser.error("need 0 < --baseline-rows < --rows")
    print(json.dumps(run(args.rows, args.baseline_rows, args.image_bytes, args.work), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
