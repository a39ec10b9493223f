"""How annotation scales with the input: rows/s, driver and worker peak memory, and planning time, from 10k rows
up, through the fixed-answer engine (`--engine fixed --model builtin`: no model, so what is measured is the
pipeline itself: planning, reading, decoding, prompting, parsing, writing).

    python bench/scale_annotate.py --rows 10000,100000,1000000 --num-cpus 2,1 --cpu-rows 100000

Writes a LAION-style input in img2dataset's Parquet layout (10,000 rows per file, as img2dataset writes them;
columns url, caption, key, status, width, height, original_width, original_height, jpg; small JPEGs, every URL
distinct, one row in 1,000 a duplicate URL so that de-duplication has work to do), then runs
``python -m pipelines.annotate`` on it in a subprocess per size and CPU count, watching its process tree:

- driver peak RSS: the job process's ``VmHWM`` (which counts the shared object-store pages it reads), and the
  largest private memory (``RssAnon``) sampled every 0.2 s;
- worker peak RSS: the largest ``VmHWM`` of any Ray worker process (``ray::...``) of that run;
- CPU seconds of the driver and of all Ray workers together (as last sampled);
- planning time, rows/s end to end and rows/s in steady state (after the first result), from ``summary.json``.

It prints one JSON object: the figures per run, the ratios of each size's figures to the smallest size's at the
first CPU count (targets at 1M rows: driver peak RSS ≤ 1.5×, rows/s ≥ 0.8×), and the rows/s (end to end) at the
first CPU count over that at each further one, at `--cpu-rows` rows (target ≥ 1.7× for 2 CPUs over 1). "Steady"
rows/s count from the first result on; a run of one shard has no steady state (its rows arrive together).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS_PER_FILE = 10_000  # img2dataset's default number of samples per shard
DUPLICATE_EVERY = 1_000


def _jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """`count` distinct small JPEGs of random smooth colour fields."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
        image = Image.fromarray(corners).resize(size, Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def write_input(directory: Path, rows: int, size: tuple[int, int] = (64, 48)) -> Path:
    """An img2dataset-style Parquet input of `rows` rows in files of `ROWS_PER_FILE` rows; returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pool = _jpegs(256, size)
    width, height = size
    for file_index, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        index = np.arange(start, min(rows, start + ROWS_PER_FILE))
        url_index = np.where(index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1, index - 1, index)
        n = len(index)
        table = pa.table(
            {
                "url": pa.array([f"https://images.example.com/{i}.jpg" for i in url_index.tolist()]),
                "caption": pa.array([f"a photograph number {i}" for i in index.tolist()]),
                "key": pa.array([f"{i:09d}" for i in index.tolist()]),
                "status": pa.array(["success"] * n),
                "width": pa.array(np.full(n, width, np.int64)),
                "height": pa.array(np.full(n, height, np.int64)),
                "original_width": pa.array(np.full(n, width * 4, np.int64)),
                "original_height": pa.array(np.full(n, height * 4, np.int64)),
                "jpg": pa.array([pool[i % len(pool)] for i in index.tolist()], pa.binary()),
            }
        )
        pq.write_table(table, directory / f"{file_index:05d}.parquet", row_group_size=1_000)
    return directory


def _memory(pid: int, field: str = "VmHWM") -> int:
    """A field of ``/proc/PID/status`` in bytes (``VmHWM``: peak resident set; ``RssAnon``: private memory now);
    0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _TreeWatcher:
    """Samples the peak RSS of a process and of the Ray workers below it, every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.driver_peak = self.driver_private_peak = 0
        self.worker_peaks: dict[int, int] = {}
        self.driver_cpu = 0.0  # user + system seconds, as last seen
        self.worker_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        self.driver_peak = max(self.driver_peak, _memory(self.pid))
        self.driver_private_peak = max(self.driver_private_peak, _memory(self.pid, "RssAnon"))
        try:
            driver = psutil.Process(self.pid)
            times = driver.cpu_times()
            self.driver_cpu = times.user + times.system
            children = driver.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                    self.worker_peaks[child.pid] = max(self.worker_peaks.get(child.pid, 0), _memory(child.pid))
                    times = child.cpu_times()
                    self.worker_cpu[child.pid] = times.user + times.system
            except psutil.Error:
                continue

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> _TreeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_annotate(source: Path, output: Path, num_cpus: int, extra: list[str] = ()) -> dict[str, Any]:
    """One ``python -m pipelines.annotate`` run with the fixed engine; its figures."""
    command = [
        sys.executable, "-m", "pipelines.annotate",
        "--input", str(source), "--output", str(output),
        "--engine", "fixed", "--model", "builtin",
        "--num-cpus", str(num_cpus), "--progress-seconds", "60", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with _TreeWatcher(process.pid) as watcher:
        log, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"annotate exited {process.returncode}:\n{log[-4000:]}")
    summary = json.loads((output / "summary.json").read_text())
    rows = summary["rows_annotated"]
    steady = summary["wall_seconds"] - (summary["startup_seconds"] or 0.0)
    return {
        "rows": rows,
        "num_cpus": num_cpus,
        "wall_seconds": round(wall, 2),
        "planning_seconds": summary["planning_seconds"],
        "startup_seconds": summary["startup_seconds"],
        "rows_per_second": round(rows / wall, 1),
        "steady_rows_per_second": round(rows / steady, 1) if steady > 0 else None,
        "driver_peak_rss_mb": round(watcher.driver_peak / 2**20, 1),
        "driver_peak_private_mb": round(watcher.driver_private_peak / 2**20, 1),
        "worker_peak_rss_mb": round(max(watcher.worker_peaks.values(), default=0) / 2**20, 1),
        "workers_seen": len(watcher.worker_peaks),
        "driver_cpu_seconds": round(watcher.driver_cpu, 1),
        "worker_cpu_seconds": round(sum(watcher.worker_cpu.values()), 1),
    }


def measure(sizes: list[int], cpu_counts: list[int], cpu_rows: int, workdir: Path) -> dict[str, Any]:
    """Every size at the first CPU count, and `cpu_rows` rows at every further CPU count; with ratios."""
    runs = []
    for rows in sorted({*sizes, cpu_rows} if len(cpu_counts) > 1 else set(sizes)):
        source = write_input(workdir / f"input-{rows}", rows)
        counts = cpu_counts[:1] if rows in sizes else []
        counts += cpu_counts[1:] if rows == cpu_rows else []
        for num_cpus in counts:
            output = workdir / f"output-{rows}-{num_cpus}"
            runs.append(run_annotate(source, output, num_cpus))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(output)
        shutil.rmtree(source)
    first = [run for run in runs if run["num_cpus"] == cpu_counts[0]]
    base = first[0]
    result: dict[str, Any] = {"runs": runs, "vs_smallest": {}}
    for run in first:
        result["vs_smallest"][f"{run['rows']}_rows"] = {
            name: round(run[name] / base[name], 3)
            for name in ("driver_peak_rss_mb", "driver_peak_private_mb", "rows_per_second", "steady_rows_per_second")
            if run[name] and base[name]
        }
    reference = next((run for run in first if run["rows"] == cpu_rows - cpu_rows // DUPLICATE_EVERY), None)
    for run in runs:
        if run["num_cpus"] != cpu_counts[0] and reference is not None:
            key = f"rows_per_second_cpus_{reference['num_cpus']}_over_{run['num_cpus']}"
            result[key] = round(reference["rows_per_second"] / run["rows_per_second"], 3)
    return result


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=_int_list, default=[10_000, 100_000], help="input sizes, comma-separated")
    parser.add_argument(
        "--num-cpus", type=_int_list, default=[2], help="CPU counts, comma-separated; all sizes run at the first"
    )
    parser.add_argument("--cpu-rows", type=int, default=100_000, help="the size run at the further CPU counts")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        print(json.dumps(measure(sorted(args.rows), args.num_cpus, args.cpu_rows, Path(workdir)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
