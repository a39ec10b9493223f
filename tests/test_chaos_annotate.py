"""Chaos: a 20,000-row fixed-engine run, then the first 5,000 rows of the same input annotated while Ray worker
processes (planning tasks, read tasks, postprocess tasks, the model pool's actor) are SIGKILLed at random moments,
and the whole job once. Ray's retries and the job's resume must give every key exactly once, in files
byte-identical to the undisturbed run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from local_ray_cluster import REPO, repo_env

sys.path.insert(0, str(REPO / "bench"))

from scale_annotate import DUPLICATE_EVERY, write_input  # noqa: E402

ROWS = 20_000
ROWS_PER_SHARD = 250
CHAOS_ROWS = 5_000  # a whole number of shards: the chaos run's shards are the first shards of the full run
# Ray worker titles of the job's own work; Ray's agents and Ray Data's bookkeeping actors are left alone.
_WORK = ("ray::ReadAnnotationShards", "ray::MapBatches(", "ray::MapWorker(", "ray::shard_key_buckets")


def _annotate(source: Path, output: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "pipelines.annotate", "--input", str(source), "--output", str(output),
        "--engine", "fixed", "--model", "builtin", "--num-cpus", "2",
        "--rows-per-shard", str(ROWS_PER_SHARD), "--progress-seconds", "5", *extra,
    ]  # fmt: skip
    log = open(output.parent / f"{output.name}.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        command, cwd=REPO, env=repo_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _work_processes(root: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if child.cmdline()[:1] and child.cmdline()[0].startswith(_WORK):
                found.append(child)
        except psutil.Error:
            continue
    return found


class _Chaos(threading.Thread):
    """SIGKILLs a random busy worker of the job every 0.5 to 2 s (the model pool's actor first), up to `kills`
    times; with `kill_job_in`, the job itself (its process group: the driver and the Ray it started) once that
    output directory holds its first finished shard, so that the next attempt must resume."""

    def __init__(self, job: subprocess.Popen[bytes], seed: int, kills: int, kill_job_in: Path | None):
        super().__init__(daemon=True)
        self.job, self.rng, self.kills, self.kill_job_in = job, random.Random(seed), kills, kill_job_in
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.2, 1.5)):
            if self.kill_job_in is not None and list((self.kill_job_in / "shards").glob("*.json")):
                os.killpg(self.job.pid, signal.SIGKILL)
                self.killed.append("the job")
                return
            workers = _work_processes(self.job.pid) if len(self.killed) < self.kills else []
            if sum("shard_key_buckets" in title for title in self.killed) >= 2:  # planning: twice is enough
                workers = [p for p in workers if "shard_key_buckets" not in p.cmdline()[0]]
            actors = [p for p in workers if p.cmdline()[0].startswith("ray::MapWorker(")]
            targets = actors if actors and not any("MapWorker" in k for k in self.killed) else workers
            if targets:
                victim = self.rng.choice(targets)
                try:
                    title = victim.cmdline()[0]
                    victim.send_signal(signal.SIGKILL)
                except psutil.Error:
                    continue
                self.killed.append(title)


def _data_files(output: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((output / "data").glob("*.parquet"))}


@pytest.mark.slow
def test_killed_workers_give_every_key_exactly_once_and_identical_files(tmp_path: Path) -> None:
    source = write_input(tmp_path / "input", ROWS)
    reference = tmp_path / "reference"
    undisturbed = _annotate(source, reference)
    assert undisturbed.wait(timeout=600) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = _data_files(reference)
    assert len(expected) == ROWS // ROWS_PER_SHARD
    keys = Counter(key for name in expected for key in pq.read_table(reference / "data" / name)["key"].to_pylist())
    assert len(keys) == ROWS - ROWS // DUPLICATE_EVERY and set(keys.values()) == {1}  # duplicate URLs dropped

    chaos_out = tmp_path / "chaos"
    codes, killed = [], []
    while len(codes) < 4 and 0 not in codes:
        # attempt 1: workers, then the job after its first shard; attempt 2 (a resume): workers; later ones in peace
        job = _annotate(source, chaos_out, "--limit", str(CHAOS_ROWS))
        chaos = _Chaos(job, seed=len(codes), kills=6 if len(codes) < 2 else 0, kill_job_in=None if codes else chaos_out)
        chaos.start()
        try:
            codes.append(job.wait(timeout=600))
        finally:
            chaos.stop.set()
            chaos.join()
            killed += chaos.killed
    log = (tmp_path / "chaos.log").read_text()
    assert codes[0] == -signal.SIGKILL and codes[-1] == 0, (codes, log[-3000:])
    assert "the job" in killed and any("MapWorker" in title for title in killed) and len(killed) >= 6, killed
    written = _data_files(chaos_out)
    assert len(written) == CHAOS_ROWS // ROWS_PER_SHARD
    assert written == {name: expected[name] for name in written}, "a shard differs from the undisturbed run's"
    print(f"exit codes {codes}; killed {Counter(title.split('(')[0] for title in killed)}")
    assert not [p for p in chaos_out.rglob("*") if p.name.startswith(".") and p.is_file()]  # no stray temp files
