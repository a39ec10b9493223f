"""The annotation job end to end: real Ray Data pipelines, the tiny Qwen, Parquet shards, resume and summary."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from awkward_images import PHOTOS, skimage_photo_bytes, write_awkward_images
from local_ray_cluster import repo_env
from openai_server import TINY_QWEN_LIMITS, TINY_QWEN_MAX_NEW_TOKENS, OpenAIServer
from pydantic import ValidationError
from test_tasks import MALFORMED

from pipelines.annotate import (
    AnnotateSettings,
    ConfigError,
    load_config,
    main,
    run,
)
from pipelines.answers import failure_reason
from pipelines.engines import EngineOptions
from pipelines.engines.fixed import FixedAnswerEngine
from pipelines.ingest import IngestFilters
from pipelines.tasks import get_task
from schemas import DEFAULT_LIMITS, Limits, SceneGraph, scene_graph_from_arrow

REPO = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-0123456789-do-not-leak"


@pytest.fixture(scope="module")
def qwen_dir(tiny_models_dir: Path) -> str:
    return str(tiny_models_dir / "qwen2_5_vl")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the real photographs shipped with scikit-image."""
    directory = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        (directory / name).write_bytes(skimage_photo_bytes(name))
    return directory


def _tiny_settings(
    batch_size: int = 3, engine_options: dict[str, object] | None = None, **overrides: object
) -> dict[str, object]:
    """Config keys that make the tiny random Qwen finish its graphs quickly."""
    engine = {"max_new_tokens": TINY_QWEN_MAX_NEW_TOKENS, "batch_size": batch_size, **(engine_options or {})}
    return {"limits": asdict(TINY_QWEN_LIMITS), "engine_options": engine, **overrides}


def _config(input_dir: Path, output: Path, model: str, **settings: object) -> AnnotateSettings:
    return AnnotateSettings.model_validate(
        {"input": str(input_dir), "output": str(output), "model": model, **_tiny_settings(**settings)}
    )


def _rows(output: Path) -> list[dict]:
    return [
        row for path in sorted((output / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()
    ]


def test_hf_folder_to_dataset(ray_local, qwen_dir: str, photos: Path, tmp_path: Path) -> None:
    import datasets

    output = tmp_path / "out"
    config = _config(photos, output, qwen_dir, files_per_shard=4)
    summary = run(config)
    assert (summary.shards_total, summary.shards_done, summary.shards_skipped) == (2, 2, 0)
    assert summary.rows_in == summary.rows_annotated == len(PHOTOS) and summary.failed == 0
    assert summary.ok + summary.repaired == len(PHOTOS) and summary.rows_per_second > 0
    assert json.loads((output / "summary.json").read_text()) == summary.to_dict()

    dataset = datasets.load_dataset("parquet", data_files=str(output / "data" / "*.parquet"), split="train")
    assert len(dataset) == len(PHOTOS)
    assert isinstance(dataset.features["image"], datasets.Image)
    expected_keys = {hashlib.sha1(skimage_photo_bytes(name)).hexdigest() for name in PHOTOS}
    assert set(dataset["key"]) == expected_keys
    for row in dataset:
        assert row["image"].size == (row["width"], row["height"])  # the original image, not the resized one
        graph = scene_graph_from_arrow(row["scene_graph"])
        assert graph.is_valid(TINY_QWEN_LIMITS) and graph.objects and row["sg_text"] == graph.to_text()
        annotation = row["annotation"]
        assert annotation["status"] in ("ok", "repaired") and annotation["engine"] == "hf"
        assert annotation["model"] == qwen_dir and annotation["task"] == "scene_graph"
        assert annotation["prompt_version"] == get_task("scene_graph").prompt_version
        assert SceneGraph.from_json(annotation["raw_output"]).objects

    files = {p: p.stat().st_mtime_ns for p in (output / "data").glob("*.parquet")}
    again = run(config)
    assert (again.shards_done, again.shards_skipped, again.rows_annotated) == (0, 2, 0)
    assert {p: p.stat().st_mtime_ns for p in (output / "data").glob("*.parquet")} == files

    with pytest.raises(ConfigError, match="different settings"):
        run(_config(photos, output, qwen_dir, files_per_shard=4, task="text_to_graph"))


def test_awkward_images_and_malformed_answers(ray_local, tmp_path: Path) -> None:
    """Every input row comes out exactly once, with a status and a reason, through a fixed-answer engine."""
    expected_decode = write_awkward_images(tmp_path / "awkward")
    answers = [raw for _, raw, _, _ in MALFORMED]
    config = _config(tmp_path / "awkward", tmp_path / "out", "unused", files_per_shard=5)
    engine = FixedAnswerEngine(get_task("scene_graph"), answers, EngineOptions(batch_size=4))
    summary = run(config, engine=engine)

    assert summary.shards_failed == {} and summary.rows_annotated == len(expected_decode)
    seen: Counter[str] = Counter()
    for path in sorted((tmp_path / "out" / "data").glob("*.parquet")):
        for index, row in enumerate(pq.read_table(path).to_pylist()):
            name = row["image"]["path"]
            seen[name] += 1
            annotation = row["annotation"]
            assert annotation["model"] == "fixed-answers" and annotation["engine"] == "fixed"
            if expected_decode[name] == "failed":
                assert annotation["status"] == "failed" and annotation["raw_output"] is None
                assert annotation["error"] and not annotation["error"].startswith(
                    ("invalid", "truncated JSON")
                )
                assert row["scene_graph"] is None
                continue
            _, raw, status, reason = MALFORMED[index % len(MALFORMED)]
            assert annotation["raw_output"] == raw
            assert annotation["status"] == status and reason in annotation["error"], (name, annotation)
            assert (row["scene_graph"] is None) == (status == "failed")
    assert seen == Counter(dict.fromkeys(expected_decode, 1))
    failed = [r["annotation"] for r in _rows(tmp_path / "out") if r["annotation"]["status"] == "failed"]
    assert summary.failed_by_reason == dict(Counter(failure_reason(a["error"]) for a in failed))
    assert summary.ok + summary.repaired + summary.failed == summary.rows_annotated


def test_other_tasks_write_their_own_columns(ray_local, tmp_path: Path) -> None:
    source = tmp_path / "captioned"
    source.mkdir()
    (source / "dog.jpg").write_bytes(skimage_photo_bytes("rocket.jpg"))
    (source / "dog.txt").write_text("a rocket on a launch pad under a blue sky")
    (source / "broken.png").write_bytes(b"<html>not an image</html>")
    (source / "broken.txt").write_text("two dogs chasing a red ball")
    (source / "plain.png").write_bytes(skimage_photo_bytes("coffee.png"))

    graph = json.dumps({"objects": [{"id": 0, "name": "rocket", "attributes": ["white"]}], "relations": []})
    text = run(
        _config(source, tmp_path / "t2g", "unused"), FixedAnswerEngine(get_task("text_to_graph"), [graph])
    )
    rows = {row["image"]["path"]: row for row in _rows(tmp_path / "t2g")}
    assert text.rows_annotated == 3 and "spatial_caption" not in rows["dog.jpg"]
    assert rows["broken.png"]["annotation"]["status"] == "ok"  # text only: the broken image does not matter
    assert rows["dog.jpg"]["sg_text"] == "white rocket"
    assert rows["plain.png"]["annotation"]["error"].startswith("no caption")

    caption = json.dumps(
        {"spatial_caption": "A white rocket stands left of a tower. The sky fills the top half."}
    )
    spatial = run(
        _config(source, tmp_path / "sc", "unused"), FixedAnswerEngine(get_task("spatial_caption"), [caption])
    )
    rows = {row["image"]["path"]: row for row in _rows(tmp_path / "sc")}
    assert spatial.ok == 2 and spatial.failed_by_reason == {
        "cannot identify image file (looks like HTML/XML text)": 1
    }
    assert (
        rows["dog.jpg"]["spatial_caption"].startswith("A white rocket")
        and rows["dog.jpg"]["scene_graph"] is None
    )
    assert pq.read_schema(next((tmp_path / "sc" / "data").glob("*.parquet"))).field("spatial_caption")


def _post(url: str, body: dict, key: str) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_openai_engine_against_a_local_server(
    ray_local, qwen_dir: str, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ANNOTATE_KEY", API_KEY)
    names = PHOTOS[:3]
    source = tmp_path / "photos"
    source.mkdir()
    for name in names:
        shutil.copy(photos / name, source / name)
    output = tmp_path / "out"
    with OpenAIServer(qwen_dir, api_key=API_KEY) as server:
        config = _config(
            source,
            output,
            "tiny-qwen",
            engine="openai",
            engine_options={"base_url": server.base_url, "api_key_env": "TEST_ANNOTATE_KEY", "num_actors": 1},
            files_per_shard=2,
        )
        summary = run(config)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert _post(f"{server.base_url}/chat/completions", body, API_KEY) == 400  # no json_schema
        assert _post(f"{server.base_url}/chat/completions", body, "sk-wrong") == 401
    assert summary.rows_annotated == len(names) and summary.ok + summary.repaired == len(names)
    assert len(server.requests) == len(names)
    schema = get_task("scene_graph", TINY_QWEN_LIMITS).schema
    for request in server.requests:
        assert request["authorized"] and request["strict"] and request["schema"] == schema
        assert request["model"] == "tiny-qwen" and request["images"] == 1
        assert request["max_tokens"] == TINY_QWEN_MAX_NEW_TOKENS
    for row in _rows(output):
        assert row["annotation"]["engine"] == "openai" and row["scene_graph"]["objects"]
    secret = API_KEY.encode()
    leaked = [p for p in output.rglob("*") if p.is_file() and secret in p.read_bytes()]
    session_logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked += [p for p in session_logs.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaked
    assert summary.to_dict().get("api_key_env") is None and API_KEY not in json.dumps(summary.to_dict())


def test_cli_with_yaml_config(ray_local, qwen_dir: str, photos: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "two"
    source.mkdir()
    for name in PHOTOS[:2]:
        shutil.copy(photos / name, source / name)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"input": str(source), "model": qwen_dir, "task": "scene_graph", **_tiny_settings(batch_size=2)}
        )
    )
    output = tmp_path / "out"
    argv = ["--config", str(config), "--output", str(output), "--files-per-shard", "1"]
    merged = load_config([*argv, "--limits.max-objects", "1"])
    assert merged.limits.max_objects == 1 and merged.limits.text_pattern == TINY_QWEN_LIMITS.text_pattern
    assert main([*argv, "--no-images", "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 written" in printed and "images/s" in printed
    rows = _rows(output)
    assert len(rows) == 1 and "image" not in rows[0] and rows[0]["annotation"]["status"] in ("ok", "repaired")
    assert main(argv) == 2  # the first run left the images out
    for bad_argv in (["--input", str(source)], ["--config", str(bad := tmp_path / "bad.yaml")]):
        bad.write_text("input: x\noutput: y\nmodel: z\nengine_options:\n  batch_sise: 3\n")
        with pytest.raises(SystemExit) as exited:
            main(bad_argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--output is required" in err and "unknown setting 'engine_options.batch_sise'" in err


def _cli_config(tmp_path: Path, source: Path, output: Path, qwen_dir: str, **settings: object) -> Path:
    config = tmp_path / "job.yaml"
    values = {
        "input": str(source),
        "output": str(output),
        "model": qwen_dir,
        "files_per_shard": 2,
        **_tiny_settings(batch_size=2, **settings),
    }
    config.write_text(yaml.safe_dump(values))
    return config


def _keys(output: Path) -> Counter[str]:
    return Counter(row["key"] for row in _rows(output))


# Runs the annotate job with the driver's bookkeeping of finished shard writes wrapped so that the moment it learns
# that a shard file is in place, the job SIGKILLs every process it started (the Ray processes, found by parentage
# because Ray puts some of them in sessions of their own) and then its own process group. The kill point is then
# fixed, not a race against how fast a machine annotates: with at most WRITES_IN_FLIGHT (2) write tasks at once, at
# most two of the three shards are written. The pids go to the file named by KILLED_PIDS, so that the test can wait
# until none of them runs before it looks at the output (a write task caught mid-rename must not land later).
_KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
import psutil
import pipelines.annotate.job as job
record = job._record_finished_writes
def record_then_die(*args, **kwargs):
    names = record(*args, **kwargs)
    if names:
        descendants = psutil.Process().children(recursive=True)
        for process in descendants:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        with open(os.environ["KILLED_PIDS"], "w") as pids:
            pids.write(" ".join(str(process.pid) for process in descendants))
        os.killpg(0, signal.SIGKILL)
    return names
job._record_finished_writes = record_then_die
sys.exit(job.main(sys.argv[1:]))
"""


def _wait_until_gone(pids: list[int], timeout: float = 60.0) -> None:
    """Wait until none of `pids` runs any more (gone, or a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"process {pid} of the killed job still runs after {timeout:.0f} s")


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(
    ray_local, qwen_dir: str, photos: Path, tmp_path: Path
) -> None:
    """SIGKILL the job (driver and its Ray) once the first shard file exists; a re-run completes the rest."""
    output = tmp_path / "out"
    config = _cli_config(tmp_path, photos, output, qwen_dir)
    command = [sys.executable, "-c", _KILL_AFTER_FIRST_SHARD, "--config", str(config), "--num-cpus", "2"]
    killed = tmp_path / "killed_pids"
    with open(tmp_path / "first.log", "wb") as log:
        first = subprocess.Popen(
            command,
            cwd=REPO,
            env={**repo_env(), "KILLED_PIDS": str(killed)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            first.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)  # whatever is left if it never got that far
            first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    _wait_until_gone([int(pid) for pid in killed.read_text().split()])
    written = sorted(p.name for p in (output / "data").glob("*.parquet"))
    shards = -(-len(PHOTOS) // 2)
    assert 0 < len(written) < shards, (tmp_path / "first.log").read_text()[-3000:]

    summary = run(load_config(["--config", str(config)]))  # the re-run, here in-process
    assert summary.shards_skipped == len(written) and summary.shards_done == shards - len(written)
    expected = {hashlib.sha1(skimage_photo_bytes(name)).hexdigest() for name in PHOTOS}
    assert _keys(output) == Counter(dict.fromkeys(expected, 1))
    assert not [p for p in (output / "data").iterdir() if not p.name.endswith(".parquet")]


# ---------------------------------------------------------------------------------------------- settings


def test_help_names_the_key_variable_never_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    """Every flag's help and default is checked for every job in test_settings.py; here, the secret's one."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "(default: OPENAI_API_KEY)" in " ".join(capsys.readouterr().out.split())


def test_yaml_config_with_nested_groups_equals_the_same_flags(tmp_path: Path) -> None:
    nested = {
        "input": "in",
        "output": "out",
        "model": "org/model",
        "engine": "openai",
        "images": False,
        "limit": 2,
        "filters": {"min_aesthetic_score": 6.5, "max_punsafe": 0.1, "min_width": 256, "dedupe_urls": False},
        "limits": {"max_objects": 5, "max_relations": 0, "text_pattern": "^[a-z]+$"},
        "engine_options": {
            "base_url": "http://h:8000/v1", "api_key_env": "MY_KEY", "max_retries": 0, "retry_wait": 0.5,
            "request_timeout": 3.0, "qps": 2, "num_actors": 4, "batch_size": 16, "cpus_per_actor": 0.5,
            "trust_remote_code": True, "engine_kwargs": {"seed": "1"},
        },
    }  # fmt: skip
    config = tmp_path / "nested.yaml"
    config.write_text(yaml.safe_dump(nested))
    flags = [
        "--input", "in", "--output", "out", "--model", "org/model", "--engine", "openai", "--no-images",
        "--limit", "2", "--filters.min-aesthetic-score", "6.5", "--filters.max-punsafe", "0.1",
        "--filters.min-width", "256", "--no-filters.dedupe-urls", "--limits.max-objects", "5",
        "--limits.max-relations", "0", "--limits.text-pattern", "^[a-z]+$",
        "--engine-options.base-url", "http://h:8000/v1", "--engine-options.api-key-env", "MY_KEY",
        "--engine-options.max-retries", "0", "--engine-options.retry-wait", "0.5",
        "--engine-options.request-timeout", "3", "--engine-options.qps", "2", "--engine-options.num-actors", "4",
        "--engine-options.batch-size", "16", "--engine-options.cpus-per-actor", "0.5",
        "--engine-options.trust-remote-code", "--engine-options.engine-kwargs", "seed=1",
    ]  # fmt: skip
    from_file, from_flags = load_config(["--config", str(config)]), load_config(flags)
    assert from_file == from_flags == AnnotateSettings.model_validate(nested)
    assert from_file.filters == IngestFilters(
        min_aesthetic_score=6.5, min_width=256, max_punsafe=0.1, dedupe_urls=False
    )
    assert from_file.limits == Limits(max_objects=5, max_relations=0, text_pattern="^[a-z]+$")
    # flags win over the file, one nested key at a time
    merged = load_config(["--config", str(config), "--limits.max-objects", "9", "--engine-options.qps", "5"])
    assert (merged.limits.max_objects, merged.limits.text_pattern) == (9, "^[a-z]+$")
    assert (merged.engine_options.qps, merged.engine_options.base_url) == (5, "http://h:8000/v1")


@pytest.mark.parametrize(
    ("yaml_text", "flags", "message"),
    [
        ("engine_options:\n  batch_size: 0\n", [], "--engine-options.batch-size: Input should be greater than or"),
        ("filters:\n  max_pwatermark: 2\n", [], "--filters.max-pwatermark: Input should be less than or equal"),
        ("limits:\n  max_relations: -1\n", [], "--limits.max-relations: Input should be greater than or equal"),
        ("", ["--engine-options.qps", "0"], "--engine-options.qps: Input should be greater than 0"),
        ("", ["--progress-seconds", "-1"], "--progress-seconds: Input should be greater than or equal to 0"),
        ("filters:\n  min_score: 1\n", [], "unknown setting 'filters.min_score'"),
    ],
)
def test_out_of_range_settings_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, flags: list[str], message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("input: in\noutput: out\nmodel: m\n" + yaml_text)
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resume_manifest_keeps_its_content() -> None:
    """``run.json`` of outputs written before the settings model: the same keys and values, so they resume."""
    settings = AnnotateSettings(input="/data/in", output="out", model="m", filters={"max_punsafe": 0.5})
    task = get_task("scene_graph")
    assert settings.manifest(task, "folder") == {
        "input": "/data/in",
        "input_format": "folder",
        "files_per_shard": 256,
        "rows_per_shard": 10_000,
        "filters": {
            "min_aesthetic_score": None, "min_width": None, "min_height": None, "max_pwatermark": None,
            "max_punsafe": 0.5, "dedupe_urls": True,
        },
        "task": "scene_graph",
        "prompt_version": task.prompt_version,
        "limits": {
            "max_objects": 64, "max_relations": 128, "max_attributes": 8, "max_text_length": 64,
            "text_pattern": r"^[a-z][a-z -]{0,23}$",
        },
        "model": "m",
        "images": True,
        "max_side": 1024,
        "max_pixels": 802_816,
    }  # fmt: skip
    assert AnnotateSettings(input="i", output="o", model="m").limits == DEFAULT_LIMITS


def test_programmatic_settings_are_checked_too() -> None:
    """`run(AnnotateSettings(...))` from a script gets the same range checks as the command line."""
    with pytest.raises(ValidationError, match="batch_size"):
        AnnotateSettings(input="i", output="o", model="m", engine_options=EngineOptions(batch_size=0))
    with pytest.raises(ValidationError, match="max_objects"):
        AnnotateSettings(input="i", output="o", model="m", limits=Limits(max_objects=0))
    with pytest.raises(ValidationError, match="max_punsafe"):
        AnnotateSettings(input="i", output="o", model="m", filters={"max_punsafe": 1.5})
    settings = AnnotateSettings(input="i", output="o", model="m")
    with pytest.raises(dataclasses.FrozenInstanceError):  # the groups are frozen: a check cannot be bypassed
        settings.limits.max_objects = 0


# ---------------------------------------------------------------------------------------------- progress


def test_progress_line_on_a_hand_made_case() -> None:
    """Shards a and b plan 2 files each, c (a tar) has no planned size. After 2 rows of a (one failed) at 4 s:
    2 rows / 4 s = 0.5 rows/s; expected 2 (a, known) + 2 (b, planned) + 2 (c, the mean of the seen shards) = 6;
    ETA (6 - 2) / 0.5 = 8 s; a is complete."""
    import pyarrow as pa

    from pipelines.annotate import Progress
    from pipelines.ingest import Shard

    now = [10.0]
    shards = [Shard("dir", "a", files=("1.jpg", "2.jpg")), Shard("dir", "b", files=("3.jpg", "4.jpg")),
              Shard("c.tar", "c")]  # fmt: skip
    progress = Progress(shards, "rows", interval=0, clock=lambda: now[0])
    assert progress.line() == (
        "progress: 0 rows, 0.00 rows/s, ETA ?, 0 failed so far, 0 of 3 shards complete, 0s elapsed"
    )
    batch = pa.table({
        "_shard": ["a", "a"], "_shard_rows": pa.array([2, 2], pa.int64()),
        "annotation": pa.array([{"status": "ok"}, {"status": "failed"}], pa.struct([("status", pa.string())])),
    })  # fmt: skip
    assert progress.add(batch.slice(0, 1)) == []  # 1 of a's 2 rows
    assert progress.add(batch.slice(1, 1)) == ["a"]  # its last row: the job writes shard a now
    now[0] = 14.0
    assert progress.line() == (
        "progress: 2 of ~6 rows (33%), 0.50 rows/s, ETA 8s, 1 failed so far, 1 of 3 shards complete, 4s elapsed"
    )
    capped = Progress([Shard("dir", "d", files=("1.jpg", "2.jpg", "3.jpg"), row_limit=2)], "rows", interval=0)
    assert capped.expected_rows() == 2  # the shard where an annotate --limit 2 falls


def test_run_logs_progress_and_text_tasks_report_rows_per_second(
    ray_local, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A text_to_graph run over 10 files in 5 shards, 3 of them without a caption (failed rows), with a progress
    line every 10 ms: the lines count up to all 10 rows and the 3 failures, and the rate is in rows/s."""
    import logging

    source = tmp_path / "captioned"
    source.mkdir()
    for i in range(10):
        (source / f"{i:02d}.jpg").write_bytes(f"not an image, never decoded {i}".encode())
        if i % 4:
            (source / f"{i:02d}.txt").write_text(f"a red ball number {i} on a table")
    graph = json.dumps({"objects": [{"id": 0, "name": "ball", "attributes": ["red"]}], "relations": []})
    config = _config(source, tmp_path / "out", "unused", files_per_shard=2, progress_seconds=0.01)
    caplog.set_level(logging.INFO, logger="pipelines.annotate")  # the package's loggers
    summary = run(config, FixedAnswerEngine(get_task("text_to_graph"), [graph]))

    assert summary.rows_annotated == 10 and summary.failed == 3
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "pipelines.annotate.summary" and "progress" in r.getMessage()
    ]
    assert len(lines) >= 3, lines
    pattern = re.compile(
        r"progress(?: \(done\))?: (\d+) of ~10 rows \(\d+%\), [\d.]+ rows/s, ETA \S+, (\d+) failed so far, "
        r"(\d) of 5 shards complete, \S+ elapsed"
    )
    counts = [tuple(int(g) for g in pattern.fullmatch(line).groups()) for line in lines]
    for column in range(3):
        values = [c[column] for c in counts]
        assert values == sorted(values), (column, lines)  # never going back
    assert lines[-1].startswith("progress (done): ") and counts[-1] == (10, 3, 5)
    assert sum(line.startswith("progress (done)") for line in lines) == 1
    text = summary.text()
    assert " rows/s, " in text and "images/s" not in text
    assert all("images/s" not in line for line in lines)


# ------------------------------------------------------------------------------------------------- --limit

_BALL = json.dumps({"objects": [{"id": 0, "name": "ball", "attributes": ["red"]}], "relations": []})


def _limit_tars(directory: Path, sizes: tuple[int, ...]) -> list[str]:
    """Tars ``a.tar``, ``b.tar``, ... holding `sizes` samples (caption, JSON with a URL, bytes that are never
    decoded); the keys of all samples in input order: sha1 of each URL."""
    directory.mkdir()
    urls = []
    for index, size in enumerate(sizes):
        with tarfile.open(directory / f"{'abcdefg'[index]}.tar", "w") as tar:
            for _ in range(size):
                n = len(urls)
                urls.append(f"https://img.example/{n}.jpg")
                for extension, payload in (
                    ("jpg", f"never decoded {n}".encode()),
                    ("json", json.dumps({"url": urls[-1]}).encode()),
                    ("txt", f"a red ball number {n}".encode()),
                ):
                    info = tarfile.TarInfo(f"s{n:03d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return [hashlib.sha1(url.encode()).hexdigest() for url in urls]


def _data_files(output: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((output / "data").glob("*.parquet"))}


def test_limit_counts_input_rows_and_a_run_without_it_completes_the_rest(ray_local, tmp_path: Path) -> None:
    """``--limit N`` annotates the first N input rows, also where a shard's row count is only known once read
    (tars of 3, 2 and 2 samples): within one shard, across shards, and a run without it does only the rest."""
    keys = _limit_tars(tmp_path / "tars", (3, 2, 2))
    engine = FixedAnswerEngine(get_task("text_to_graph"), [_BALL])

    def limited(output: Path, *limit: str) -> AnnotateSettings:
        argv = ["--input", str(tmp_path / "tars"), "--output", str(output), "--model", "unused"]
        return load_config([*argv, "--task", "text_to_graph", "--progress-seconds", "0", *limit])

    within = run(limited(tmp_path / "within", "--limit", "2"), engine)  # smaller than the first tar
    assert [r["key"] for r in _rows(tmp_path / "within")] == keys[:2]
    assert (within.shards_total, within.rows_in, within.rows_annotated) == (1, 2, 2)
    assert json.loads((tmp_path / "within" / "shards" / "a.json").read_text())["filters"]["rows_in"] == 2

    output = tmp_path / "across"
    first = run(limited(output, "--limit", "6"), engine)  # a and b whole, 1 of c's 2 samples
    assert [r["key"] for r in _rows(output)] == keys[:6]
    assert (first.shards_total, first.shards_done, first.rows_in, first.rows_annotated) == (3, 3, 6, 6)
    files = _data_files(output)
    again = run(limited(output, "--limit", "6"), engine)
    assert (again.shards_done, again.shards_skipped, again.rows_in) == (0, 3, 0)
    assert again.output.rows_annotated == 6
    assert _data_files(output) == files

    rest = run(limited(output), engine)  # c again, whole this time; a and b kept
    assert (rest.shards_done, rest.shards_skipped, rest.rows_in, rest.rows_annotated) == (1, 2, 2, 2)
    assert sorted(r["key"] for r in _rows(output)) == sorted(keys) and len(set(keys)) == 7
    assert rest.output.rows_in == rest.output.rows_annotated == 7
    assert {name: files[name] for name in ("a.parquet", "b.parquet")} == {
        name: mtime for name, mtime in _data_files(output).items() if name != "c.parquet"
    }
    files = _data_files(output)
    after = run(limited(output, "--limit", "6"), engine)  # the whole of c holds its capped rows too
    assert (after.shards_done, after.shards_skipped) == (0, 3) and _data_files(output) == files


def test_limit_counts_rows_before_the_filters(ray_local, tmp_path: Path) -> None:
    """Parquet row ranges of 2 rows: ``--limit 3`` reads rows 0-2, of which the filter drops row 1; the run
    without the limit then reads rows 2-4 (the capped range again) and the output holds rows 0, 2, 3, 4 once."""
    source = tmp_path / "laion"
    source.mkdir()
    urls = [f"https://img.example/{i}.jpg" for i in range(5)]
    table = {"URL": urls, "TEXT": [f"a red ball number {i}" for i in range(5)]}
    table["AESTHETIC_SCORE"] = [6.0, 4.0, 6.0, 6.0, 6.0]
    pq.write_table(pa.table(table), source / "part.parquet")
    argv = ["--input", str(source), "--output", str(tmp_path / "out"), "--model", "unused", "--task"]
    argv += ["text_to_graph", "--rows-per-shard", "2", "--filters.min-aesthetic-score", "5"]
    engine = FixedAnswerEngine(get_task("text_to_graph"), [_BALL])

    limited = run(load_config([*argv, "--limit", "3"]), engine)
    key = [hashlib.sha1(url.encode()).hexdigest() for url in urls]
    assert [r["key"] for r in _rows(tmp_path / "out")] == [key[0], key[2]]
    assert (limited.shards_total, limited.rows_in, limited.rows_annotated) == (2, 3, 2)
    assert limited.rows_filtered == {"aesthetic_score<5": 1}
    rest = run(load_config(argv), engine)
    assert (rest.shards_done, rest.shards_skipped, rest.rows_in, rest.rows_annotated) == (2, 1, 3, 3)
    assert sorted(r["key"] for r in _rows(tmp_path / "out")) == sorted([key[0], key[2], key[3], key[4]])
    assert (rest.output.rows_in, rest.output.rows_annotated) == (5, 4)


# ------------------------------------------------------------------------------------------------- --engine fixed


def test_cli_dry_run_with_the_fixed_engine(
    ray_local, photos: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--engine fixed` on the CLI: `--model builtin` answers every photo with the task's example graph; an answer
    file (JSON Lines: a graph object, then a JSON string holding broken JSON) answers rows in turn, so rows 0, 2,
    ... are ok and 1, 3, ... failed; the rows name the answers they came from. A bad answer file exits 2 before
    anything runs, naming the file and line. The shards are written by Ray tasks, never in the driver (which would
    read every image again)."""
    from pipelines.annotate import writing

    def not_in_the_driver(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver wrote a shard")

    monkeypatch.setattr(writing, "write_shard", not_in_the_driver)  # the Ray workers import the real one
    base = ["--input", str(photos), "--engine", "fixed", "--no-images", "--files-per-shard", "100"]
    assert main([*base, "--output", str(tmp_path / "builtin"), "--model", "builtin"]) == 0
    rows = _rows(tmp_path / "builtin")
    assert len(rows) == len(PHOTOS)
    expected = {"objects": [{"id": 0, "name": "object", "attributes": []}], "relations": []}
    for row in rows:
        assert (row["annotation"]["engine"], row["annotation"]["model"]) == ("fixed", "fixed:builtin")
        assert row["annotation"]["status"] == "ok"
        assert json.loads(scene_graph_from_arrow(row["scene_graph"]).to_json()) == expected

    answers = tmp_path / "answers.jsonl"
    graph = {"objects": [{"id": 0, "name": "cat", "attributes": ["grey"]}], "relations": []}
    answers.write_text(json.dumps(graph) + "\n\n" + json.dumps('{"objects": [') + "\n")
    assert main([*base, "--output", str(tmp_path / "file"), "--model", str(answers)]) == 0
    label = f"fixed:answers.jsonl@sha256:{hashlib.sha256(answers.read_bytes()).hexdigest()[:16]}"
    by_index = {}
    for path in sorted((tmp_path / "file" / "data").glob("*.parquet")):
        for index, row in enumerate(pq.read_table(path).to_pylist()):
            by_index[index] = row
    assert len(by_index) == len(PHOTOS)
    for index, row in by_index.items():
        assert row["annotation"]["model"] == label
        if index % 2 == 0:
            assert row["annotation"]["status"] == "ok"
            assert json.loads(scene_graph_from_arrow(row["scene_graph"]).to_json()) == graph
        else:
            assert row["annotation"]["status"] == "failed" and row["annotation"]["raw_output"] == '{"objects": ['
    capsys.readouterr()

    answers.write_text(json.dumps(graph) + "\n{not json\n")
    assert main([*base, "--output", str(tmp_path / "bad"), "--model", str(answers)]) == 2
    assert f"--model {answers}, line 2: not JSON" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "bad"), "--model", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such answer file" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "data").exists()
