"""`python -m training.precompute` and `python -m training.train` through their `main(argv)`, as steps 3 and 4 of the
README's cluster recipe run them:

- training from ``--cache`` needs no raw image, and a cache that does not fit the run (built from other data, for
  other image settings, from another model) is refused before Ray starts, with one line;
- re-submitting the same train command after an interruption resumes from the latest checkpoint in ``--output``
  and ends where an uninterrupted run ends.

`training.train.main` always trains with Ray Train (here one CPU worker on the session's in-process Ray), so the
tests that reach it are `slow`. CPU only: the tiny random SDXL at 64x64, a 16-wide SG encoder (`test_training`'s
tiny run).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.train
import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from laion_sg.offline.fixtures import write_fixture_dataset
from laion_sg.offline.tiny_sdxl import build_tiny_sdxl
from training import precompute
from training.bad_rows import BadRows, rebatch
from training.batches import TrainBatch
from training.contexts import LocalContext
from training.loop import run_worker
from training.rows import find_splits
from training.train import main, parse_config

RUN_NAME = "sdxl_sg"  # TrainSettings.name's default: Ray Train checkpoints land in OUTPUT/sdxl_sg/checkpoint_<step>
SNAPSHOT = "checkpoint_manager_snapshot.json"  # where Ray Train records the checkpoints it registered
TRAIN_FILE = Path("data") / "train-00000-of-00001.parquet"

pytestmark = pytest.mark.slow  # every test needs the precompute cache (Ray Data); most run Ray Train


@pytest.fixture(scope="module")
def sdxl(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "sdxl"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 8 usable rows and 1 failed annotation; validation: 2 rows (64 px images)."""
    return write_fixture_dataset(tmp_path_factory.mktemp("cli_data"), max_side=64)


@pytest.fixture(scope="module")
def run_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_config") / "run.yaml"
    path.write_text("encoder: {hidden_dim: 16, mlp_hidden_dim: 32}\n")
    return path


@pytest.fixture(scope="module")
def cache(ray_local, sdxl: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README step 3: `python -m training.precompute` over the fixture data at 64 px."""
    out = tmp_path_factory.mktemp("cli_cache") / "cache"
    argv = ["--input", str(data_dir), "--model", str(sdxl), "--output", str(out), "--resolution", "64",
            "--dtype", "float32", "--batch-size", "16"]  # fmt: skip
    assert precompute.main(argv) == 0
    return out


def train_argv(data: Path, model: Path, output: Path, config: Path, *extra: str) -> list[str]:
    """The tiny run: batch 2 over 8 rows (4 batches an epoch), 4 steps, a checkpoint every 2 steps."""
    return [
        "--input", str(data), "--model", str(model), "--output", str(output), "--config", str(config),
        "--resolution", "64", "--batch-size", "2", "--max-steps", "4", "--checkpoint-every", "2",
        "--warmup-steps", "1", "--val-batches", "0", *extra,
    ]  # fmt: skip


def without_train_images(data_dir: Path, out: Path) -> Path:
    """A copy of the data whose train rows have no image (keys, graphs and annotations unchanged)."""
    (out / "data").mkdir(parents=True)
    for source in (data_dir / "data").iterdir():
        table = pq.read_table(source)
        if source.name.startswith("train-"):
            table = table.set_column(
                table.schema.get_field_index("image"), "image", pa.nulls(table.num_rows, table.schema.field("image").type)
            )
        pq.write_table(table, out / "data" / source.name)
    return out


def summary_of(out: str) -> dict[str, Any]:
    """The JSON summary `main` prints last (Ray may print log lines around it)."""
    start = out.rindex('{\n  "final"')
    return json.JSONDecoder().raw_decode(out[start:])[0]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "sg_encoder" / SAFETENSORS_WEIGHTS_NAME))


def assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], what: str) -> None:
    assert ours.keys() == theirs.keys(), what
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{what}, {n}: {m}")


# ---------------------------------------------------------------------------------------------- the cache


def test_precompute_cli_caches_every_usable_row_once(cache: Path, sdxl: Path, data_dir: Path) -> None:
    """README step 3: one cache row per usable row of each split (8 train, 2 validation; the failed annotation
    left out), keyed like the data, and cache.json with the settings and shapes it was built for."""
    rows = {split: pq.read_table(files, columns=["key", "problem"]).to_pylist() for split, files in find_splits(cache).items()}
    assert [r for split_rows in rows.values() for r in split_rows if r["problem"] is not None] == []
    cached = {split: [r["key"] for r in split_rows] for split, split_rows in rows.items()}
    usable = {
        split: [r["key"] for r in pq.read_table(files).to_pylist() if r["annotation"]["status"] == "ok"]
        for split, files in find_splits(data_dir).items()
    }
    assert {split: len(keys) for split, keys in usable.items()} == {"train": 8, "val": 2}
    assert {split: sorted(keys) for split, keys in cached.items()} == {split: sorted(keys) for split, keys in usable.items()}
    meta = json.loads((cache / "cache.json").read_text())
    assert (meta["resolution"], meta["crop"], meta["dtype"], meta["model"]) == (64, "center", "float32", str(sdxl))
    assert meta["latent_shape"] == [4, 8, 8]  # the tiny VAE downsamples 8x: 64 px -> 8x8 latents
    assert {split: u["rows_seen"] - u["bad_rows"] for split, u in meta["unusable_rows"].items()} == {"train": 8, "val": 2}


def test_cache_of_other_data_is_refused_before_ray_starts(
    cache: Path, sdxl: Path, run_yaml: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--input at 128 px has other image bytes, hence other keys: none of its 8 usable train rows is in the
    cache (built from the 64 px data), which is over --max-bad-fraction: exit 2 and one line, before Ray."""
    import ray

    other = write_fixture_dataset(tmp_path / "other", max_side=128)
    keys = [r["key"] for r in pq.read_table(other / TRAIN_FILE).to_pylist() if r["annotation"]["status"] == "ok"]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    code = main(train_argv(other, sdxl, tmp_path / "out", run_yaml, "--cache", str(cache)))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(
        f"error: too many rows of {other} missing from the cache {cache}: 8 of 9 rows unusable (88.89%), "
        f"1 skipped with a failed annotation; first: {keys[0]} (missing from the cache); "
    ), err
    assert err.rstrip().endswith("(over --max-bad-fraction 0.01)")


@pytest.mark.parametrize("other", ["resolution", "model"])
def test_a_cache_for_other_settings_or_another_model_is_refused_before_ray_starts(
    other: str, cache: Path, sdxl: Path, data_dir: Path, run_yaml: Path, tmp_path: Path, capsys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 64 px cache read by a run at 32 px, or by a run on another tiny SDXL (other random weights, the same
    shapes): its latents and text features would silently train the wrong thing. Exit 2 with one line naming
    what the cache was written for and what the run wants, before Ray starts."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start"))
    model, extra = sdxl, ()
    if other == "model":
        model = build_tiny_sdxl(tmp_path / "other_sdxl", seed=1)
        capsys.readouterr()  # the builder's progress bars
    else:
        extra = ("--resolution", "32")
    code = main(train_argv(data_dir, model, tmp_path / "out", run_yaml, "--cache", str(cache), *extra))
    err = capsys.readouterr().err
    wrong = {"resolution": ({"resolution": 64}, {"resolution": 32}), "model": ({"model": str(sdxl)}, {"model": str(model)})}
    written, wanted = wrong[other]
    assert code == 2 and err == f"error: cache {cache} was written for {written}, the run wants {wanted}\n", err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- resume


class InFileOrder(LocalContext):
    """`LocalContext` with the train rows in file order: what Ray Data hands the only worker from the only train
    file when the shuffle buffer is off (``--shuffle-buffer 0``)."""

    def batches(self, split: str, collate: Any, epoch: int, skip: int, tally: BadRows | None = None) -> Iterator[TrainBatch]:
        rows, size = self.splits.get(split, []), self.config.batch_size
        chunks = (collate.decode(rows[start : start + size]) for start in range(0, len(rows), size))
        for index, batch in enumerate(rebatch(chunks, size, collate.assemble, drop_last=split == "train", tally=tally)):
            if index >= skip:
                yield batch


def _train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes of this test process's own Ray (its descendants), never anyone else's."""
    found = []
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


class Interrupter(threading.Thread):
    """Kills the run's Ray Train worker (SIGKILL, as a lost node or a stopped job would) as soon as Ray Train has
    registered the checkpoint of `step`. A report waits until the controller took the previous one (a queue of
    one, polled every 2 s), so the next checkpoint is not registered by then; the worker may have written it to
    storage already."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(daemon=True)
        self.snapshot = run_dir / SNAPSHOT
        self.wanted = f"checkpoint_{step:08d}"
        self.killed: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            if self.snapshot.exists() and self.wanted in self.snapshot.read_text():
                for process in _train_workers():
                    os.kill(process.pid, signal.SIGKILL)
                    self.killed.append(process.pid)
                if self.killed:
                    return
            time.sleep(0.02)


def test_resubmitting_the_same_command_resumes_and_ends_like_an_uninterrupted_run(
    cache: Path, sdxl: Path, data_dir: Path, run_yaml: Path, tmp_path: Path, capsys
) -> None:
    """README step 4 (train with --input and --cache; "checkpoints every 500 steps; re-submitting the same command
    resumes"). The train images are removed from --input, so only the cache can train (without it the command
    exits 2). The command is killed after its step-2 checkpoint; the same command again finds that checkpoint in
    --output, trains steps 3 and 4 only (the step-2 checkpoint stays as it was, the reported step goes on from
    2) and ends where an uninterrupted run of 4 steps on the same cache rows in the same order ends: the same
    weights at steps 2 and 4 and in the exported pipeline, the same loss, gradient norm, learning rate, alpha
    and row counts at step 4."""
    no_images = without_train_images(data_dir, tmp_path / "no_images")
    assert main(train_argv(no_images, sdxl, tmp_path / "raw", run_yaml)) == 2
    assert capsys.readouterr().err.startswith(f"error: no usable training row in {no_images}: 8 of 9 rows unusable")

    output = tmp_path / "runs"
    argv = train_argv(no_images, sdxl, output, run_yaml, "--cache", str(cache), "--shuffle-buffer", "0")
    run_dir = output / RUN_NAME

    reference_config = parse_config([*argv[:4], "--output", str(tmp_path / "reference"), *argv[6:]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker (OMP_NUM_THREADS=1): the same float reductions
    try:
        reference = InFileOrder(reference_config)
        run_worker(reference_config, reference)
    finally:
        torch.set_num_threads(threads)
    assert [m["step"] for m in reference.history] == [1, 2, 3, 4]
    expected = reference.history[-1]

    interrupter = Interrupter(run_dir, step=2)
    interrupter.start()
    try:
        with pytest.raises(ray.train.WorkerGroupError):
            main(argv)
    finally:
        interrupter.done.set()
        interrupter.join()
    capsys.readouterr()
    assert interrupter.killed, "the first run was never interrupted"
    assert not (output / "final").exists() and "checkpoint_00000004" not in (run_dir / SNAPSHOT).read_text()
    kept = run_dir / "checkpoint_00000002" / "sg_encoder" / SAFETENSORS_WEIGHTS_NAME
    before = kept.stat()

    assert main(argv) == 0  # the same command again
    summary = summary_of(capsys.readouterr().out)
    assert summary["missing_from_cache"] == {
        "rows_seen": 9, "bad_rows": 0, "bad_fraction": 0.0, "failed_annotation_rows": 1, "bad_row_examples": [],
    }  # fmt: skip
    metrics = summary["metrics"]
    assert (metrics["step"], metrics["resumed_from_step"], metrics["epoch"]) == (4, 2, 0)
    assert (metrics["rows_seen"], metrics["bad_rows"]) == (expected["rows_seen"], expected["bad_rows"]) == (8, 0)
    assert (kept.stat().st_mtime_ns, kept.stat().st_ino) == (before.st_mtime_ns, before.st_ino)  # not redone
    for name in ("loss", "grad_norm", "lr", "alpha"):
        torch.testing.assert_close(metrics[name], expected[name], rtol=1e-5, atol=1e-8, msg=name)
    for step in (2, 4):
        directory = run_dir / f"checkpoint_{step:08d}"
        assert json.loads((directory / "state.json").read_text()) == {"step": step, "epoch": 0, "batch_in_epoch": step}
        assert_same_weights(weights(directory), weights(reference.checkpoints / f"step_{step:08d}"), f"step {step}")
    assert summary["final"] == str(output / "final")
    assert_same_weights(weights(output / "final"), weights(reference.checkpoints / "step_00000004"), "final")
    moved = weights(run_dir / "checkpoint_00000002")["alpha"] != weights(output / "final")["alpha"]
    assert moved.all(), "steps 3 and 4 changed nothing"
