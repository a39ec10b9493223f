"""Hostile inputs to the annotate job: every fault is one row's status or one clear up-front error, nothing lost.

The engine cases run the real ``openai`` engine (``ray.data.llm``'s HTTP processor) against `FaultyServer` on
127.0.0.1; the expected statuses and reasons are written out by hand per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from awkward_images import PHOTOS, skimage_photo_bytes
from faulty_server import FaultyServer

import pipelines.annotate.job as annotate_job
from pipelines.annotate import AnnotateSettings, ConfigError, main, run
from pipelines.engines import EngineOptions
from pipelines.engines.fixed import FixedAnswerEngine
from pipelines.engines.http_session import mask_secrets, retry_after_seconds
from pipelines.postprocess import MAX_ERROR_CHARS, MAX_RAW_OUTPUT_CHARS
from pipelines.tasks import get_task
from schemas import SceneGraph, scene_graph_from_arrow

CANARY = "sk-canary-7f3a9c-never-in-any-output"
RETRIES = 2

# case (the row's caption) -> (status, substrings its error must contain, attempts the server saw)
EXPECTED: dict[str, tuple[str, tuple[str, ...], int]] = {
    "goodrow": ("ok", (), 1),
    "htmlerror": ("failed", ("HTTP 500", "Internal Server Error", "3 tries"), 1 + RETRIES),
    "notjson": ("failed", ("HTTP 200 with a non-JSON body", "text/plain"), 1),
    "emptybody": ("failed", ("HTTP 200 with an empty body",), 1),
    "foo": ("failed", ("not a chat completion", "'choices' is JSON null", "['foo']"), 1),
    "emptyobject": ("failed", ("the body is an empty JSON object",), 1),
    "jsonlist": ("failed", ("a JSON array",), 1),
    "emptychoices": ("failed", ("'choices' is an empty list",), 1),
    "nullchoices": ("failed", ("'choices' is JSON null",), 1),
    "objectcontent": ("failed", ("message.content is a JSON object, expected a string",), 1),
    "nullcontent": ("failed", ("message.content is null",), 1),
    "reservedkey": ("failed", ("'choices' is an empty list",), 1),
    "ratelimited": ("failed", ("HTTP 429", "rate limit exceeded", "3 tries"), 1 + RETRIES),
    "throttledonce": ("ok", (), 2),  # 429 with Retry-After, then an answer
    "echokey": ("failed", ("HTTP 401", "invalid credentials: ***"), 1),
    "slowanswer": ("failed", ("timed out after 2 s", "3 tries"), 1 + RETRIES),
    "hugeanswer": ("ok", (f"raw_output stored cut to {MAX_RAW_OUTPUT_CHARS} of 10000",), 1),
    "manyobjects": ("repaired", ("9936", "raw_output stored cut"), 1),
    "markupgraph": ("repaired", ("characters not allowed",), 1),
}


def _laion_captions(path: Path, captions: list[str]) -> Path:
    """A LAION-style metadata Parquet: one row per caption, URL and TEXT columns only."""
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"URL": [f"https://example.com/{i}.jpg" for i in range(len(captions))], "TEXT": captions}
    )
    pq.write_table(table, path / "part-00000.parquet")
    return path


def _rows(output: Path) -> list[dict]:
    return [r for p in sorted((output / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]



def _engine_argv(server: FaultyServer, source: Path, output: Path, task: str = "text_to_graph") -> list[str]:
    return [
        "--input", str(source), "--output", str(output), "--task", task, "--engine", "openai",
        "--model", "hostile-test", "--engine-options.base-url", server.base_url,
        "--engine-options.api-key-env", "HOSTILE_TEST_KEY", "--engine-options.max-retries", str(RETRIES),
        "--engine-options.retry-wait", "0.01", "--engine-options.request-timeout", "2",
        "--engine-options.batch-size", "8", "--engine-options.num-actors", "1",
    ]  # fmt: skip


def test_every_server_answer_is_a_row_result(ray_local, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HOSTILE_TEST_KEY", CANARY)
    cases = list(EXPECTED)
    source = _laion_captions(tmp_path / "meta", [f"case {case}" for case in cases])
    output = tmp_path / "out"
    with FaultyServer(slow_seconds=5) as server:
        assert main(_engine_argv(server, source, output)) == 0
    printed = capsys.readouterr().out
    rows = _rows(output)
    assert Counter(r["caption"] for r in rows) == Counter(f"case {c}" for c in cases)  # each row exactly once
    for row in rows:
        case = row["caption"].removeprefix("case ")
        status, fragments, attempts = EXPECTED[case]
        annotation = row["annotation"]
        assert annotation["status"] == status, (case, annotation)
        for fragment in fragments:
            assert fragment in (annotation["error"] or ""), (case, annotation["error"])
        # The server sees every try, except one that a loaded machine timed out before it connected.
        assert 1 <= server.attempts[case] <= attempts, (case, annotation["error"], server.log)
        assert len(annotation["error"] or "") <= MAX_ERROR_CHARS + 200, case
        assert len(annotation["raw_output"] or "") <= MAX_RAW_OUTPUT_CHARS, case
        if status != "failed":
            graph = scene_graph_from_arrow(row["scene_graph"])
            assert graph.is_valid() and row["sg_text"] == graph.to_text()
            assert not set("<>\"'=:") & set(row["sg_text"]), row["sg_text"]
    markup = next(r for r in rows if r["caption"] == "case markupgraph")
    assert markup["sg_text"] == "dog"  # the markup object, attribute and predicate dropped, nothing invented
    many = next(r for r in rows if r["caption"] == "case manyobjects")
    assert len(scene_graph_from_arrow(many["scene_graph"]).objects) == 64

    summary = json.loads((output / "summary.json").read_text())
    failed = sum(1 for s, _, _ in EXPECTED.values() if s == "failed")
    assert summary["failed"] == failed and summary["rows_annotated"] == len(cases)
    assert summary["output"]["failed"] == failed and "engine error" in summary["failed_by_reason"]
    assert "this run: annotated: 19" in printed and "whole output: annotated: 19" in printed
    assert set(server.authorizations) == {f"Bearer {CANARY}"}
    session_logs = Path(ray_local._private.worker._global_node.get_session_dir_path()) / "logs"
    assert not _files_containing(output, CANARY.encode()) and not _files_containing(session_logs, CANARY.encode())
    assert CANARY not in printed

    # A re-run with nothing left to do reports the whole output, not zeros.
    assert main(_engine_argv(server, source, output)) == 0
    again = json.loads((output / "summary.json").read_text())
    assert again["rows_annotated"] == 0 and again["shards_skipped"] == 1
    assert again["output"] == summary["output"]


@pytest.mark.parametrize("case", ["echorequest", "ratelimited"])
def test_request_bodies_and_images_never_reach_error_texts(
    ray_local, tmp_path: Path, monkeypatch, case: str
) -> None:
    monkeypatch.setenv("HOSTILE_TEST_KEY", CANARY)
    source = tmp_path / "photos"
    source.mkdir()
    for name in PHOTOS[:2]:
        (source / name).write_bytes(skimage_photo_bytes(name))
    output = tmp_path / "out"
    with FaultyServer(force=case) as server:
        assert main(_engine_argv(server, source, output, task="scene_graph")) == 0
    rows = _rows(output)
    assert len(rows) == 2
    for row in rows:
        error = row["annotation"]["error"]
        assert row["annotation"]["status"] == "failed" and error.startswith("engine error: HTTP")
        assert "base64," not in error and "/9j/" not in error and len(error) < 1000, error[:300]
        assert '"messages"' not in error and "objective image annotator" not in error
    assert not _files_containing(output, CANARY.encode())


def test_retry_after_and_masking() -> None:
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    text = 'key sk-abc in {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}'
    assert mask_secrets(text, ("sk-abc",)) == 'key *** in {"url": "data:…"}'


# ---------------------------------------------------------------------------------------------------- CLI checks


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the job gets as far as starting Ray or building an engine."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the job started Ray or loaded a model before refusing its settings")

    monkeypatch.setattr(annotate_job, "init_ray", refuse)
    monkeypatch.setattr(annotate_job, "build_engine", refuse)


def _photos(tmp_path: Path) -> Path:
    source = tmp_path / "photos"
    source.mkdir(exist_ok=True)
    (source / "a.png").write_bytes(skimage_photo_bytes(PHOTOS[0]))
    return source


def _exit_code(argv: list[str]) -> int:
    """`main`'s status, whether it returns it (settings that do not fit the input or output) or exits (flags)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--engine-options.batch-size", "0"], "--engine-options.batch-size: Input should be greater than or "
                                                 "equal to 1 (got '0')"),
        (["--engine-options.batch-size", "-3"], "--engine-options.batch-size: Input should be greater than or "
                                                  "equal to 1 (got '-3')"),
        (["--engine-options.num-actors", "0"], "--engine-options.num-actors: Input should be greater than or"),
        (["--engine-options.num-actors", "-1"], "--engine-options.num-actors: Input should be greater than or"),
        (["--files-per-shard", "0"], "--files-per-shard: Input should be greater than or equal to 1"),
        (["--rows-per-shard", "0"], "--rows-per-shard: Input should be greater than or equal to 1"),
        (["--limit", "-1"], "--limit: Input should be greater than or equal to 1 (got '-1')"),
        (["--limit", "0"], "--limit: Input should be greater than or equal to 1"),
        (["--engine-options.max-new-tokens", "0"], "--engine-options.max-new-tokens: Input should be greater"),
        (["--engine-options.request-timeout", "0"], "--engine-options.request-timeout: Input should be greater "
                                                      "than 0 (got '0')"),
        (["--limits.max-objects", "0"], "--limits.max-objects: Input should be greater than or equal to 1"),
        (["--filters.max-punsafe", "1.5"], "--filters.max-punsafe: Input should be less than or equal to 1"),
        (["--task", "colour"], "--task: Value error, unknown task; choose one of "),
        (["--model", "/no/such/model/dir"], "--model /no/such/model/dir: no such directory"),
        (["--model", "./missing-model"], "--model ./missing-model: no such directory"),
    ],
)
def test_bad_flags_are_refused_before_ray_starts(
    tmp_path: Path, no_ray: None, capsys, flags: list[str], needle: str
) -> None:
    argv = ["--input", str(_photos(tmp_path)), "--output", str(tmp_path / "out"), "--model", str(tmp_path)]
    assert _exit_code([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err.splitlines()[-1] and "Traceback" not in err, err
    assert not (tmp_path / "out" / "run.json").exists()


def test_bad_paths_and_inputs_are_refused_before_ray_starts(
    tmp_path: Path, no_ray: None, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = _photos(tmp_path)
    model = str(tmp_path)

    def refused(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert "--output" in refused(["--input", str(photos), "--output", str(a_file), "--model", model])
    assert "is a file, not a directory" in refused(
        ["--input", str(photos), "--output", str(a_file), "--model", model]
    )
    assert "not writable" in refused(["--input", str(photos), "--output", str(a_file / "sub"), "--model", model])

    monkeypatch.delenv("NO_SUCH_KEY_VARIABLE", raising=False)
    err = refused(
        ["--input", str(photos), "--output", str(tmp_path / "o1"), "--model", "gpt-4o", "--engine", "openai",
         "--engine-options.api-key-env", "NO_SUCH_KEY_VARIABLE"]
    )  # fmt: skip
    assert "--engine-options.api-key-env NO_SUCH_KEY_VARIABLE" in err and "not set" in err

    meta = _laion_captions(tmp_path / "meta", ["a dog"])
    err = refused(["--input", str(meta), "--output", str(tmp_path / "o2"), "--model", model])
    assert "task scene_graph needs images" in err and "laion_parquet" in err and "jpg" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pa.table({"URL": ["https://e.com/1.jpg"], "TEXT": ["a cat"]}), broken / "a.parquet")
    (broken / "b.parquet").write_bytes(b"")
    err = refused(
        ["--input", str(broken), "--output", str(tmp_path / "o3"), "--model", model, "--task", "text_to_graph"]
    )
    assert str(broken / "b.parquet") in err and "0 bytes" in err


def test_a_run_that_fails_before_any_shard_does_not_pin_its_settings(ray_local, tmp_path: Path) -> None:
    """A model directory that does not load fails the run; the corrected re-run is not refused."""
    source = _photos(tmp_path)
    output = tmp_path / "out"
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    settings = {"input": str(source), "output": str(output), "engine_options": {"batch_size": 1}}
    with pytest.raises(Exception):  # noqa: B017 - whatever the model loader raises
        run(AnnotateSettings.model_validate({**settings, "model": str(empty_model)}))
    assert not (output / "run.json").exists() and not list(output.rglob("*.parquet"))
    fixed = FixedAnswerEngine(get_task("scene_graph"), ['{"objects":[{"id":0,"name":"cat","attributes":[]}],'
                                                        '"relations":[]}'], EngineOptions())  # fmt: skip
    summary = run(AnnotateSettings.model_validate({**settings, "model": "another-model"}), engine=fixed)
    assert summary.rows_annotated == 1 and json.loads((output / "run.json").read_text())["model"] == "another-model"


# ---------------------------------------------------------------------------------------------------- resume


def _graph_answer() -> str:
    return SceneGraph.from_json({"objects": [{"id": 0, "name": "cat", "attributes": []}], "relations": []}).to_json()


def test_grown_and_changed_shards_are_annotated_and_nothing_is_duplicated(ray_local, tmp_path: Path) -> None:
    """img2dataset ``--incremental_mode extend`` adds shard folders; a re-run annotates exactly what is new."""
    import datasets

    source = tmp_path / "files"
    (source / "00000").mkdir(parents=True)
    images = [skimage_photo_bytes(name) for name in PHOTOS]
    for i, data in enumerate(images[:4]):
        (source / "00000" / f"0000{i}.png").write_bytes(data)
    output = tmp_path / "out"
    settings = {"input": str(source), "output": str(output), "model": "m", "files_per_shard": 2}
    engine = FixedAnswerEngine(get_task("scene_graph"), [_graph_answer()], EngineOptions())
    first = run(AnnotateSettings.model_validate(settings), engine=engine)
    assert first.rows_annotated == 4

    (source / "00001").mkdir()
    for i, data in enumerate(images[4:]):
        (source / "00001" / f"0001{i}.png").write_bytes(data)
    # img2dataset's metadata beside the sub-folder: its one failed download is an input row, counted.
    metadata = {"url": ["https://e.com/ok.png", "https://e.com/404.png"], "status": ["success", "failed_to_download"]}
    pq.write_table(pa.table(metadata), source / "00001.parquet")
    second = run(AnnotateSettings.model_validate(settings), engine=engine)
    assert second.output.rows_filtered == {"not downloaded": 1} and second.output.rows_in == len(images) + 1
    expected = {hashlib.sha1(data).hexdigest() for data in images}
    keys = Counter(row["key"] for row in _rows(output))
    assert keys == Counter(dict.fromkeys(expected, 1)), (second.text(), keys)
    assert second.output.rows_annotated == len(images)

    # A file removed from the folder: its chunk is re-annotated, and the chunk that no longer exists is set aside.
    # Files removed: the chunks that changed are re-annotated, and the chunk that no longer exists is set aside.
    removed = sorted(source.rglob("*.png"))[:2]
    removed_keys = {hashlib.sha1(path.read_bytes()).hexdigest() for path in removed}
    for path in removed:
        path.unlink()
    third = run(AnnotateSettings.model_validate(settings), engine=engine)
    keys = Counter(row["key"] for row in _rows(output))
    assert keys == Counter(dict.fromkeys(expected - removed_keys, 1))
    assert third.shards_superseded == ["folder-00002"] and (output / "superseded").is_dir()
    assert third.output.rows_annotated == len(images) - 2

    dataset = datasets.load_dataset(str(output), split="train")
    assert len(dataset) == len(images) - 2 and isinstance(dataset.features["image"], datasets.Image)


def test_all_filtered_shard_writes_no_empty_file_and_the_output_loads(ray_local, tmp_path: Path) -> None:
    import datasets

    source = tmp_path / "img2dataset"
    source.mkdir()
    for shard, scores in (("00000", [7.0, 8.0]), ("00001", [1.0, 2.0])):
        table = pa.table(
            {
                "url": [f"https://e.com/{shard}/{i}.png" for i in range(2)],
                "caption": ["a", "b"],
                "png": [skimage_photo_bytes(PHOTOS[i]) for i in range(2)],
                "status": ["success", "success"],
                "AESTHETIC_SCORE": scores,
            }
        )
        pq.write_table(table, source / f"{shard}.parquet")
    output = tmp_path / "out"
    config = AnnotateSettings.model_validate(
        {"input": str(source), "output": str(output), "model": "m", "filters": {"min_aesthetic_score": 5.0}}
    )
    summary = run(config, engine=FixedAnswerEngine(get_task("scene_graph"), [_graph_answer()], EngineOptions()))
    assert summary.shards_done == 2 and summary.rows_annotated == 2
    assert summary.rows_filtered == {"aesthetic_score<5": 2}
    assert sorted(p.name for p in (output / "data").iterdir()) == ["00000.parquet"]
    assert sorted(p.name for p in (output / "shards").iterdir()) == ["00000.json", "00001.json"]
    rows = _rows(output)
    # `width`/`height` are the stored image's size; the original size has its own columns.
    assert [(r["width"], r["height"]) for r in rows] == [(512, 512), (451, 300)]
    assert [(r["original_width"], r["original_height"]) for r in rows] == [(None, None)] * 2  # not in the input
    assert len(datasets.load_dataset(str(output), split="train")) == 2
    assert len(datasets.load_dataset("parquet", data_files=str(output / "data" / "*.parquet"), split="train")) == 2
    again = run(config, engine=FixedAnswerEngine(get_task("scene_graph"), [_graph_answer()], EngineOptions()))
    assert again.shards_skipped == 2 and again.output.rows_filtered == {"aesthetic_score<5": 2}


def test_a_shard_left_without_its_record_is_rewritten_not_duplicated(ray_local, tmp_path: Path) -> None:
    """A kill between the data file's rename and the record's: the re-run rewrites that file in place."""
    source = _photos(tmp_path)
    shutil.copy(source / "a.png", source / "b.png")
    (source / "b.png").write_bytes(skimage_photo_bytes(PHOTOS[1]))
    output = tmp_path / "out"
    settings = {"input": str(source), "output": str(output), "model": "m", "files_per_shard": 1}
    engine = FixedAnswerEngine(get_task("scene_graph"), [_graph_answer()], EngineOptions())
    run(AnnotateSettings.model_validate(settings), engine=engine)
    (output / "shards" / "folder-00001.json").unlink()
    (output / "shards" / ".folder-00000.json.tmp-deadbeef").write_text("{")  # a write killed half-way
    again = run(AnnotateSettings.model_validate(settings), engine=engine)
    assert (again.shards_done, again.shards_skipped) == (1, 1)
    assert len(_rows(output)) == 2 and not [p for p in output.rglob(".*tmp*")]
    assert os.path.exists(output / "shards" / "folder-00001.json")


# ---------------------------------------------------------------------------------------------------- inputs


def test_url_lists_and_caption_parquets_feed_text_tasks(ray_local, tmp_path: Path) -> None:
    """img2dataset's CSV/TSV/TXT URL lists and a Parquet of bare prompts run text tasks; image tasks are refused."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "a.csv").write_text(
        'URL,TEXT,similarity,key\nhttps://e.com/1.jpg,"a dog, on a sofa",0.31,000000001\n'
        'https://e.com/2.jpg,"a cat\nin a box",0.29,000000002\n'
    )
    (lists / "b.tsv").write_text("url\tcaption\nhttps://e.com/3.jpg\ta red car\nhttps://e.com/1.jpg\tdup\n")
    (lists / "c.txt").write_text("https://e.com/4.jpg\n\nhttps://e.com/5.jpg\n")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    pq.write_table(pa.table({"prompt": ["x"], "caption": ["a man riding a horse"]}), prompts / "p.parquet")

    answer = FixedAnswerEngine(get_task("text_to_graph"), [_graph_answer()], EngineOptions())
    summary = run(AnnotateSettings.model_validate({"input": str(lists), "output": str(tmp_path / "o1"), "model": "m",
                                       "task": "text_to_graph"}), engine=answer)  # fmt: skip
    assert summary.input_format == "url_list"
    assert summary.rows_in == 6 and summary.rows_filtered == {"duplicate": 1}
    rows = {r["url"]: r for r in _rows(tmp_path / "o1")}
    assert set(rows) == {f"https://e.com/{i}.jpg" for i in range(1, 6)}
    assert rows["https://e.com/1.jpg"]["caption"] == "a dog, on a sofa"
    assert rows["https://e.com/2.jpg"]["caption"] == "a cat\nin a box"
    assert rows["https://e.com/1.jpg"]["source_key"] == "000000001"  # a string, leading zeros kept
    assert rows["https://e.com/1.jpg"]["similarity"] == pytest.approx(0.31)
    assert rows["https://e.com/3.jpg"]["annotation"]["status"] == "ok"
    assert rows["https://e.com/4.jpg"]["annotation"]["status"] == "failed"  # no caption to turn into a graph
    assert "no caption" in rows["https://e.com/4.jpg"]["annotation"]["error"]

    summary = run(AnnotateSettings.model_validate({"input": str(prompts), "output": str(tmp_path / "o2"), "model": "m",
                                       "task": "text_to_graph"}), engine=answer)  # fmt: skip
    [row] = _rows(tmp_path / "o2")
    assert row["key"] == hashlib.sha1(b"a man riding a horse").hexdigest() and row["annotation"]["status"] == "ok"

    with pytest.raises(ConfigError, match="needs images.*url_list"):
        run(AnnotateSettings.model_validate({"input": str(lists), "output": str(tmp_path / "o3"), "model": "m"}))
