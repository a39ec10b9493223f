"""Hostile training data: rows with a corrupt, truncated or missing image, or a null or empty scene graph, are
skipped and named (never a crash without a key); too many of them fail the run with counts and keys; none usable
fails before Ray Train starts. The precompute cache handles the same rows the same way.

CPU only, the tiny random SDXL at 64x64; one test goes through Ray Train (1 worker).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_training import RESOLUTION
from test_training import tiny_config as training_config

from laion_sg.offline.fixtures import write_fixture_dataset
from training.bad_rows import BadDataError, NoUsableRowsError
from training.batches import RowCollator
from training.cache import CacheCollator, read_cache_meta
from training.image_transforms import ImageConfig
from training.rows import ANNOTATION_FAILED, find_splits, read_rows, row_problem
from training.settings import TrainSettings
from training.step import load_tokenizers
from training.train import main, parse_config, preflight, train_local

TRAIN_FILE = Path("data") / "train-00000-of-00001.parquet"
VAL_FILE = Path("data") / "validation-00000-of-00001.parquet"


# ---------------------------------------------------------------------------------------------- faults


def garbage_bytes(row: dict) -> None:
    row["image"] = {"bytes": b"this is not an image at all", "path": None}


def truncated_png(row: dict) -> None:
    row["image"] = {"bytes": row["image"]["bytes"][: len(row["image"]["bytes"]) // 2], "path": None}


def null_image(row: dict) -> None:
    row["image"] = None


def missing_file(row: dict) -> None:
    row["image"] = {"bytes": None, "path": "/nonexistent/laion-sg/missing.png"}


def null_graph(row: dict) -> None:  # the annotation still says "ok"
    row["scene_graph"] = None


def empty_graph(row: dict) -> None:
    row["scene_graph"] = {"objects": [], "relations": []}


FAULTS: dict[str, tuple[Callable[[dict], None], str]] = {
    "corrupt image bytes": (garbage_bytes, "undecodable image (UnidentifiedImageError"),
    "truncated image": (truncated_png, "undecodable image (OSError: image file is truncated"),
    "null image": (null_image, "no image"),
    "image path missing": (missing_file, "undecodable image (FileNotFoundError"),
    "null scene graph": (null_graph, "no scene graph"),
    "empty scene graph": (empty_graph, "empty scene graph"),
}


def rewrite(path: Path, edits: dict[int, Callable[[dict], None]]) -> list[str]:
    """Apply `edits` (row index -> fault) to a Parquet file in place; return the keys of the edited rows."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    for index, edit in edits.items():
        edit(rows[index])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return [rows[i]["key"] for i in edits]


def dataset(tmp_path: Path, edits: dict[int, Callable[[dict], None]], val_edits=None) -> tuple[Path, list[str]]:
    """The fixture dataset (train: 8 usable rows at 0-7, a failed annotation at 8; validation: 2 rows) with
    `edits` applied to the train split."""
    data = write_fixture_dataset(tmp_path / "data", max_side=64)
    keys = rewrite(data / TRAIN_FILE, edits)
    if val_edits:
        rewrite(data / VAL_FILE, val_edits)
    return data, keys


@pytest.fixture(scope="module")
def sdxl(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "sdxl"


def tiny_config(data: Path, model: Path, output: Path, **overrides) -> TrainSettings:
    """`test_training`'s tiny run, without intermediate checkpoints."""
    return training_config(data, model, output, **{"checkpoint_every": 100, **overrides})


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("fault", list(FAULTS))
def test_collator_skips_and_names_an_unusable_row(fault: str, sdxl: Path, tmp_path: Path) -> None:
    """A bad row between two good ones: the batch holds the good two; the bad one is named with its reason."""
    edit, reason = FAULTS[fault]
    data, (bad_key,) = dataset(tmp_path, {1: edit})
    rows = read_rows(find_splits(data)["train"])[:3]
    batch = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION))(rows)
    assert batch.keys == [rows[0]["key"], rows[2]["key"]] and batch.pixel_values.shape[0] == 2
    assert [key for key, _ in batch.skipped] == [bad_key]
    assert batch.skipped[0][1].startswith(reason), batch.skipped[0][1]


def test_row_problem_reasons(tmp_path: Path) -> None:
    data, _ = dataset(tmp_path, {0: null_graph, 1: empty_graph, 2: null_image})
    rows = read_rows(find_splits(data)["train"])
    problems = [row_problem(r) for r in rows]
    assert problems[:3] == ["no scene graph", "empty scene graph (no objects)", "no image (bytes and path are both empty)"]
    assert problems[3:8] == [None] * 5 and problems[8] == ANNOTATION_FAILED


# ---------------------------------------------------------------------------------------------- the local loop


def test_local_run_skips_corrupt_rows_and_reports_them(sdxl: Path, tmp_path: Path, caplog) -> None:
    """2 corrupt train rows of 9 (and a corrupt validation row) under --max-bad-fraction 0.5: the run trains on
    full batches of the good rows, and the metrics and the log name the bad rows."""
    data, bad_keys = dataset(tmp_path, {1: garbage_bytes, 5: truncated_png}, val_edits={0: garbage_bytes})
    config = tiny_config(data, sdxl, tmp_path / "out", max_steps=4, max_bad_fraction=0.5, val_every=4)
    with caplog.at_level(logging.WARNING, logger="training"):
        ctx, state = train_local(config)
    assert state.step == 4 and (tmp_path / "out" / "final" / "model_index.json").exists()
    last = ctx.history[-1]
    # 6 good rows, batch 2: epoch 0 is 3 full batches, step 4 is in epoch 1, so all of epoch 0 was decoded.
    assert last["epoch"] == 1 and last["bad_rows"] >= 2 and last["failed_annotation_rows"] >= 1
    assert {e.split(":")[0] for e in last["bad_row_examples"]} == set(bad_keys)
    assert 0 < last["bad_fraction"] < 0.5
    assert torch.isfinite(torch.tensor(last["val_loss"]))  # the corrupt validation row is skipped, not fatal
    logged = caplog.text
    assert all(f"skipping unusable row {key}: undecodable image" in logged for key in bad_keys)


def test_bad_fraction_over_the_limit_fails_with_counts_and_keys(sdxl: Path, tmp_path: Path) -> None:
    """The same 2 corrupt rows of 9 (22%) under the default --max-bad-fraction (1%): the run stops with a
    message naming the count, the fraction, the limit and a corrupt key."""
    data, bad_keys = dataset(tmp_path, {1: garbage_bytes, 5: truncated_png})
    config = tiny_config(data, sdxl, tmp_path / "out", max_steps=8)
    assert config.max_bad_fraction == 0.01
    with pytest.raises(BadDataError) as error:
        train_local(config)
    message = str(error.value)
    assert re.search(r"too many unusable training rows in .*: [12] of the \d+ rows read so far \(\d+\.\d+%", message)
    assert "--max-bad-fraction 0.01" in message and str(data) in message
    assert any(f"{key} (undecodable image" in message for key in bad_keys)
    assert not (tmp_path / "out" / "final").exists()


def test_flag_max_bad_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--input", "d", "--model", "m", "--output", "o"]
    assert parse_config(base).max_bad_fraction == 0.01
    assert parse_config([*base, "--max-bad-fraction", "0.2"]).max_bad_fraction == 0.2
    for bad, bound in [("1.5", "less than or equal to 1"), ("-0.1", "greater than or equal to 0")]:
        with pytest.raises(SystemExit) as exited:
            parse_config([*base, "--max-bad-fraction", bad])
        assert exited.value.code == 2
        assert f"--max-bad-fraction: Input should be {bound} (got '{bad}')" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- nothing usable


@pytest.mark.parametrize("fault", ["corrupt image bytes", "null scene graph"])
def test_no_usable_row_exits_2_before_ray_starts(
    fault: str, sdxl: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray must not start when no row is usable")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    data, keys = dataset(tmp_path, dict.fromkeys(range(8), FAULTS[fault][0]))
    code = main(["--input", str(data), "--model", str(sdxl), "--output", str(tmp_path / "out"), "--resolution", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: no usable training row in {data}: 8 of 9 rows unusable (88.89%)"), err
    assert "1 skipped with a failed annotation" in err and keys[0] in err


def test_train_local_refuses_data_without_a_usable_row(sdxl: Path, tmp_path: Path) -> None:
    data, _ = dataset(tmp_path, dict.fromkeys(range(8), truncated_png))
    with pytest.raises(NoUsableRowsError, match=f"no usable training row in {re.escape(str(data))}"):
        train_local(tiny_config(data, sdxl, tmp_path / "out", max_steps=1))


# ---------------------------------------------------------------------------------------------- the cache


def test_cache_skips_rows_that_failed_or_broke_like_raw_rows(sdxl: Path, tmp_path: Path) -> None:
    """precompute keeps a row it cannot encode as a ``problem`` row with the raw collator's reason; training from
    the cache skips it, and a cache row with broken bytes, the same way; a row of --input missing from the cache
    counts as unusable before training starts; too many of them fail like raw rows."""
    import json

    from schemas import row_schema
    from training.precompute import CacheEncoder, cache_meta

    data, (bad_key,) = dataset(tmp_path, {2: garbage_bytes})
    rows = [r for r in read_rows(find_splits(data)["train"]) if r["annotation"]["status"] != "failed"]
    actor = CacheEncoder(str(sdxl), RESOLUTION, "center", "float32", use_gpu=False)
    raw = pa.Table.from_pylist(rows, schema=row_schema())
    raw = raw.append_column("split", pa.array(["train"] * raw.num_rows))
    cache = tmp_path / "cache"
    (cache / "split=train").mkdir(parents=True)
    encoded = actor(raw).to_pylist()
    assert len(encoded) == 8 and {r["split"] for r in encoded} == {"train"}
    problem_rows = [r for r in encoded if r["problem"]]
    assert [r["key"] for r in problem_rows] == [bad_key] and problem_rows[0]["latents"] is None
    assert problem_rows[0]["problem"].startswith("undecodable image (UnidentifiedImageError")
    assert actor(raw.slice(2, 1)).to_pylist()[0]["problem"] == problem_rows[0]["problem"]  # an all-bad batch

    broken_key = encoded[5]["key"]
    encoded[5]["latents"] = encoded[5]["latents"][:10]  # truncated bytes
    missing_key = encoded.pop(6)["key"]  # a good row (the problem row is last)
    table = pa.Table.from_pylist(encoded).drop_columns(["split"])
    pq.write_table(table, cache / "split=train" / "part-0.parquet")
    (cache / "cache.json").write_text(json.dumps(cache_meta(str(sdxl), RESOLUTION, "center", "float32")))

    collate = CacheCollator(read_cache_meta(cache))
    batch = collate(read_rows(find_splits(cache)["train"]))
    assert batch.size == 5 and bad_key not in batch.keys and broken_key not in batch.keys
    reasons = dict(batch.skipped)
    assert reasons[bad_key] == problem_rows[0]["problem"]
    assert reasons[broken_key].startswith("corrupt cache row (")

    config = tiny_config(data, sdxl, tmp_path / "out", max_steps=4, cache=str(cache), max_bad_fraction=0.5)
    checks = preflight(config)
    assert checks["missing_from_cache"]["bad_rows"] == 1
    assert checks["missing_from_cache"]["bad_row_examples"] == [f"{missing_key}: missing from the cache"]
    ctx, state = train_local(config)
    assert state.step == 4
    assert {e.split(":")[0] for e in ctx.history[-1]["bad_row_examples"]} == {bad_key, broken_key}
    # 1 of 9 data rows missing (11%) passes a 12% limit up front; 2 of the 7 cache rows then fail it in the loop.
    with pytest.raises(BadDataError, match=r"too many unusable training rows .*--max-bad-fraction 0.12"):
        train_local(tiny_config(data, sdxl, tmp_path / "out2", max_steps=4, cache=str(cache), max_bad_fraction=0.12))
    with pytest.raises(BadDataError, match=f"missing from the cache.*{missing_key}.*over --max-bad-fraction 0.01"):
        train_local(tiny_config(data, sdxl, tmp_path / "out3", max_steps=4, cache=str(cache)))


# ---------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_ray_train_fails_over_the_limit_with_one_line(ray_local, sdxl: Path, tmp_path: Path, capsys) -> None:
    """Through Ray Train (1 worker): the worker's BadDataError reaches `main` as exit code 2 and one line with
    the count, the fraction and a corrupt key."""
    data, bad_keys = dataset(tmp_path, {0: garbage_bytes, 3: truncated_png})
    code = main([
        "--input", str(data), "--model", str(sdxl), "--output", str(tmp_path / "out"), "--resolution", "64",
        "--batch-size", "2", "--max-steps", "6", "--warmup-steps", "1", "--val-batches", "0",
        "--config", _encoder_yaml(tmp_path),
    ])  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, lines
    assert re.match(r"error: too many unusable training rows in .*: [12] of the \d+ rows read so far", lines[0])
    assert "--max-bad-fraction 0.01" in lines[0] and any(key in lines[0] for key in bad_keys)


def _encoder_yaml(tmp_path: Path) -> str:
    path = tmp_path / "encoder.yaml"
    path.write_text("encoder: {hidden_dim: 16, mlp_hidden_dim: 32}\n")
    return str(path)


@pytest.mark.parametrize("module", ["training.train", "training.lora", "training.pretrain_sg"])
def test_each_training_job_exits_2_for_bad_data_a_ray_worker_found(
    module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Train hands `main` a worker's `BadDataError` wrapped in its own `WorkerGroupError`: each training job
    exits 2 with the error's first line; any other error is raised as it is. (The fit is replaced here; the slow
    test above goes through a real Ray Train fit of `training.train`.)"""
    import dataclasses
    import importlib

    from ray.train import WorkerGroupError

    from training import jobs

    job = importlib.import_module(module)
    found = BadDataError("too many unusable training rows in d: 2 of the 9 rows read so far (22.2%)\nkeys: a, b")

    def failing_fit(*args: object, **kwargs: object) -> None:
        raise WorkerGroupError("Training failed due to worker errors", {1: found})

    monkeypatch.setattr(job, "JOB", dataclasses.replace(job.JOB, preflight=lambda config: {}))
    monkeypatch.setattr(jobs, "init_ray", lambda: None)
    monkeypatch.setattr(jobs.TrainingJob, "fit", failing_fit)
    argv = ["--input", str(tmp_path), "--model", str(tmp_path), "--output", str(tmp_path / "out")]
    assert job.main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {str(found).splitlines()[0]}"

    def other_failure(*args: object, **kwargs: object) -> None:
        raise WorkerGroupError("Training failed due to worker errors", {0: RuntimeError("CUDA out of memory")})

    monkeypatch.setattr(jobs.TrainingJob, "fit", other_failure)
    with pytest.raises(WorkerGroupError, match="worker errors"):
        job.main(argv)
