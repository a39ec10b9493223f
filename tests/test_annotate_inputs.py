"""The annotate command line on every input format, and what it does with unreadable shards, changed settings,
broken images through the real ``hf`` engine, refusals and ``--qps``.

Each test builds its input by hand, so the rows, keys and counts it expects are known without the package; the
output is read back with pyarrow or `datasets`, never through the job's own readers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from awkward_images import PHOTOS, skimage_photo_bytes, write_awkward_images
from faulty_server import FaultyServer, completion
from openai_server import TINY_QWEN_LIMITS, TINY_QWEN_MAX_NEW_TOKENS
from test_annotate import _rows
from test_ingest import _write_img2dataset

import pipelines.annotate.job as annotate_job
from pipelines.annotate import main
from pipelines.answers import failure_reason


@pytest.fixture(scope="module")
def qwen_dir(tiny_models_dir: Path) -> str:
    return str(tiny_models_dir / "qwen2_5_vl")


def _sha1(text: str | bytes) -> str:
    return hashlib.sha1(text.encode() if isinstance(text, str) else text).hexdigest()


def _tiny_qwen_config(path: Path, **settings: Any) -> Path:
    """A ``--config`` YAML with the graph bounds under which the tiny random Qwen finishes its answers quickly."""
    engine = {"max_new_tokens": TINY_QWEN_MAX_NEW_TOKENS, **settings.pop("engine_options", {})}
    values = {"limits": asdict(TINY_QWEN_LIMITS), "engine_options": engine, **settings}
    path.write_text(yaml.safe_dump(values))
    return path


def _summary(output: Path) -> dict[str, Any]:
    return json.loads((output / "summary.json").read_text())


def _files(output: Path) -> dict[str, bytes]:
    """Every file under `output` with its bytes."""
    return {str(p.relative_to(output)): p.read_bytes() for p in sorted(output.rglob("*")) if p.is_file()}


def _stems(output: Path, folder: str) -> list[str]:
    return sorted(p.stem for p in (output / folder).iterdir() if not p.name.startswith("."))


def _openai_argv(base_url: str, source: Path, output: Path, task: str) -> list[str]:
    return [
        "--input", str(source), "--output", str(output), "--task", task, "--engine", "openai",
        "--model", "test-model", "--engine-options.base-url", base_url,
        "--engine-options.api-key-env", "", "--engine-options.num-actors", "1",
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- formats

# img2dataset's output as `test_ingest._write_img2dataset` writes it: two shards holding the same three samples
# (two downloaded photographs and one 404), so the second shard's downloads are duplicates of the first's.
I2D_URLS = ("http://127.0.0.1:8000/astronaut.jpg", "http://127.0.0.1:8000/chelsea.jpg")
I2D_COUNTS = {"rows_in": 6, "rows_filtered": {"duplicate": 2, "not downloaded": 2}, "rows_annotated": 2}
LAION_URLS = tuple(f"https://img.example/{i}.jpg" for i in range(4))
LAION_CAPTIONS = ("a dog on a sofa", "a red car", "two cats on a bed", "a boat on a lake")
I2D_FORMATS = {"webdataset": "webdataset", "img2dataset": "img2dataset_parquet"}
GOOD_GRAPH_TEXT = "brown dog on sofa"  # faulty_server.GOOD_GRAPH, written out


def test_cli_annotates_tars_img2dataset_parquet_and_laion_metadata(ray_local, tmp_path: Path, capsys) -> None:
    """`main()` on webdataset tars, img2dataset's Parquet and LAION metadata (a text task: no image bytes): exit 0,
    each kept input row once with its key, filtered rows counted by reason, `summary.json` agreeing.

    The rows go through the real ``openai`` engine to a local server answering one fixed graph: what is under test
    is the input side, and a run of the ``hf`` engine costs a ~15 s model start on this machine
    (`test_broken_images_through_the_real_hf_engine` has one).
    """
    import datasets

    _write_img2dataset(tmp_path / "webdataset", "webdataset")
    _write_img2dataset(tmp_path / "img2dataset", "parquet")
    laion = tmp_path / "laion"
    laion.mkdir()
    table = pa.table(
        {
            "URL": [*LAION_URLS, LAION_URLS[1], None],
            "TEXT": [*LAION_CAPTIONS, "a red car, again", "a row without a URL"],
            "AESTHETIC_SCORE": [6.6, 6.7, 6.8, 6.9, 7.0, 7.1],
        }
    )
    pq.write_table(table, laion / "meta.parquet")

    outputs, requests = {}, {}
    with FaultyServer(force="goodrow") as server:  # forced: a base64 image may spell a fault case's name
        for name, task, extra in (
            ("webdataset", "scene_graph", []),
            ("img2dataset", "scene_graph", []),
            ("laion", "text_to_graph", ["--rows-per-shard", "2"]),
        ):
            outputs[name] = tmp_path / f"out-{name}"
            before = server.attempts["goodrow"]
            argv = _openai_argv(server.base_url, tmp_path / name, outputs[name], task)
            assert main([*argv, "--engine-options.batch-size", "2", *extra]) == 0, name
            assert f"summary: {outputs[name] / 'summary.json'}" in capsys.readouterr().out
            requests[name] = server.attempts["goodrow"] - before
    # Every kept row went to the model exactly once: 2 photographs, 2 photographs, 4 captions.
    assert requests == {"webdataset": 2, "img2dataset": 2, "laion": 4}

    for name in ("webdataset", "img2dataset"):
        output = outputs[name]
        summary = _summary(output)
        assert summary["input_format"] == I2D_FORMATS[name]
        assert {k: summary[k] for k in I2D_COUNTS} == I2D_COUNTS, (name, summary)
        assert (summary["shards_total"], summary["shards_done"], summary["shards_failed"]) == (2, 2, {})
        assert summary["output"]["rows_annotated"] == summary["ok"] == 2
        # The second shard's rows were all filtered out: a completion record, no 0-row data file.
        assert _stems(output, "shards") == ["00000", "00001"] and _stems(output, "data") == ["00000"]
        dataset = datasets.load_dataset(
            "parquet", data_files=str(output / "data" / "*.parquet"), split="train"
        )
        assert Counter(dataset["key"]) == Counter({_sha1(url): 1 for url in I2D_URLS}), name
        rows = {row["url"]: row for row in dataset}
        assert set(rows) == set(I2D_URLS)
        astronaut = rows[I2D_URLS[0]]
        assert astronaut["caption"] == "photo of astronaut" and astronaut["source_key"] == "000000000"
        assert (astronaut["width"], astronaut["original_width"]) == (512, 512)
        assert astronaut["image"].size == (512, 512)  # the stored image, in the row
        assert [(row["annotation"]["engine"], row["annotation"]["status"]) for row in dataset] == [
            ("openai", "ok")
        ] * 2

    output = outputs["laion"]
    summary = _summary(output)
    assert summary["input_format"] == "laion_parquet" and summary["images"] is False
    assert (summary["rows_in"], summary["rows_annotated"]) == (6, 4)
    assert summary["rows_filtered"] == {"duplicate": 1, "no url or image": 1}
    # Row-range shards of 2 rows; the last one holds only the duplicate and the row without a URL.
    assert summary["shards_total"] == summary["shards_done"] == 3 and summary["shards_failed"] == {}
    assert _stems(output, "data") == ["meta-00000", "meta-00001"]
    rows = pq.read_table(output / "data").to_pylist()
    assert Counter(row["key"] for row in rows) == Counter({_sha1(url): 1 for url in LAION_URLS})
    assert {row["url"]: row["caption"] for row in rows} == dict(zip(LAION_URLS, LAION_CAPTIONS, strict=True))
    assert all(row["annotation"]["status"] == "ok" and row["sg_text"] == GOOD_GRAPH_TEXT for row in rows)
    assert all(row["image"] is None for row in rows)  # metadata only: no image bytes to keep


# ---------------------------------------------------------------------------------------------------- bad shards


def _img2dataset_shard(path: Path, shard: int) -> list[str]:
    """An img2dataset ``parquet`` shard of two PNG photographs with their own URLs; returns the URLs."""
    urls = [f"https://img.example/{shard}/{i}.png" for i in range(2)]
    table = pa.table(
        {
            "url": urls,
            "caption": [f"photo {shard}.{i}" for i in range(2)],
            "png": [skimage_photo_bytes(PHOTOS[(2 * shard + i) % len(PHOTOS)]) for i in range(2)],
            "status": ["success", "success"],
        }
    )
    pq.write_table(table, path)
    return urls


def _corrupt_image_column(path: Path) -> bytes:
    """Overwrite the first page header of the image column with 0xFF bytes (same size, footer intact: the file
    opens and its URL column reads, its images do not); returns the original bytes."""
    original = path.read_bytes()
    metadata = pq.ParquetFile(path).metadata
    column = metadata.row_group(0).column(metadata.schema.to_arrow_schema().get_field_index("png"))
    offset = column.dictionary_page_offset or column.data_page_offset
    broken = bytearray(original)
    broken[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(broken))
    return original


def test_an_unreadable_shard_fails_alone_and_is_retried_once_repaired(
    ray_local, tmp_path: Path, capsys
) -> None:
    """A shard whose images cannot be read: `shards_failed` names it and its file, exit 1, the other shards are
    written; once the file is repaired the same command does that shard only, exit 0, no row twice."""
    source = tmp_path / "img2dataset"
    source.mkdir()
    urls = {f"{s:05d}": _img2dataset_shard(source / f"{s:05d}.parquet", s) for s in range(3)}
    bad = source / "00001.parquet"
    original = _corrupt_image_column(bad)
    output = tmp_path / "out"

    with FaultyServer(force="goodrow") as server:
        argv = [*_openai_argv(server.base_url, source, output, "scene_graph"), "--engine-options.batch-size", "4"]
        assert main(argv) == 1
        printed = capsys.readouterr().out
        summary = _summary(output)
        assert list(summary["shards_failed"]) == ["00001"], summary["shards_failed"]
        reason = summary["shards_failed"]["00001"]
        assert "could not be read" in reason and str(bad) in reason, reason
        assert "1 failed" in printed and f"shard failed: 00001: {reason}" in printed
        assert (summary["shards_total"], summary["shards_done"], summary["rows_annotated"]) == (3, 2, 4)
        assert _stems(output, "data") == _stems(output, "shards") == ["00000", "00002"]
        assert Counter(r["key"] for r in _rows(output)) == Counter(
            {_sha1(url): 1 for shard in ("00000", "00002") for url in urls[shard]}
        )
        assert server.attempts["goodrow"] == 4  # no row of the unreadable shard reached the model
        written = {p.name: p.stat().st_mtime_ns for p in (output / "data").iterdir()}

        bad.write_bytes(original)
        assert main(argv) == 0
    summary = _summary(output)
    assert (summary["shards_skipped"], summary["shards_done"], summary["shards_failed"]) == (2, 1, {})
    assert summary["rows_annotated"] == 2 and summary["output"]["rows_annotated"] == 6
    assert server.attempts["goodrow"] == 6  # only the repaired shard's two rows this time
    assert {p.name: p.stat().st_mtime_ns for p in (output / "data").iterdir() if p.name in written} == written
    assert Counter(r["key"] for r in _rows(output)) == Counter(
        {_sha1(url): 1 for shard_urls in urls.values() for url in shard_urls}
    )


def _refuse_model_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the job loaded a model before refusing its input")


def test_a_tar_unreadable_at_planning_is_refused_with_its_path(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated tar beside a good one: the shard plan reads every shard (as Ray tasks), so the run stops before
    a model loads with exit 2 and one line naming the file (docs/reliability.md, known gaps), never a traceback."""
    source = tmp_path / "webdataset"
    _write_img2dataset(source, "webdataset")
    bad = source / "00001.tar"
    bad.write_bytes(bad.read_bytes()[:2000])  # cut inside its first image
    output = tmp_path / "out"
    argv = [
        "--input", str(source), "--output", str(output), "--model", str(tmp_path), "--task", "text_to_graph",
    ]  # fmt: skip
    monkeypatch.setattr(annotate_job, "build_engine", _refuse_model_load)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not (output / "run.json").exists() and not list(output.rglob("*.parquet"))


# ---------------------------------------------------------------------------------------------------- changes


def _captions(path: Path, urls: list[str]) -> None:
    pq.write_table(pa.table({"URL": urls, "TEXT": [f"a photo of {u.rsplit('/', 1)[1]}" for u in urls]}), path)


def test_changed_input_or_settings_are_refused_and_nothing_is_deleted(
    ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """An input file rewritten mid-run fails its shard with ``(input changed?)`` (exit 1); a re-run into that
    output with another --input or other settings is refused with exit 2 naming what differs, before a model
    loads, and every file of the output is left as it was."""
    source = tmp_path / "meta"
    source.mkdir()
    _captions(source / "a.parquet", ["https://e.com/a0.jpg", "https://e.com/a1.jpg"])
    _captions(source / "b.parquet", ["https://e.com/b0.jpg", "https://e.com/b1.jpg"])
    write_shard_task = annotate_job.write_shard_task

    changed = pa.table({"URL": ["https://e.com/c0.jpg", "https://e.com/c1.jpg"], "TEXT": ["c0", "c1"]})

    def rewrite_b_first(shard, *args, **kwargs):  # runs in the Ray task that writes the shard, on a worker
        if shard.name == "b":  # its rows are annotated; now the file changes under the job
            pq.write_table(changed, source / "b.parquet")  # (this test module cannot be imported there)
        return write_shard_task(shard, *args, **kwargs)

    monkeypatch.setattr(annotate_job, "write_shard_task", rewrite_b_first)
    output = tmp_path / "out"
    with FaultyServer() as server:
        argv = _openai_argv(server.base_url, source, output, "text_to_graph")
        assert main(argv) == 1
    summary = _summary(output)
    assert summary["shards_failed"] == {
        "b": "shard b: the rows read differ from the rows annotated (input changed?)"
    }
    assert _stems(output, "data") == _stems(output, "shards") == ["a"]
    assert sorted(r["url"] for r in _rows(output)) == ["https://e.com/a0.jpg", "https://e.com/a1.jpg"]
    assert json.loads((output / "run.json").read_text())["input"] == str(source.resolve())
    before = _files(output)
    capsys.readouterr()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused re-run started Ray or built an engine")

    monkeypatch.setattr(annotate_job, "init_ray", refuse)
    monkeypatch.setattr(annotate_job, "build_engine", refuse)
    moved = tmp_path / "moved"
    shutil.copytree(source, moved)
    for flags, named in (
        (["--input", str(moved)], "(input)"),
        (["--limits.max-objects", "3", "--model", "another-model"], "(limits, model)"),
        (["--rows-per-shard", "1"], "(rows_per_shard)"),
    ):
        assert main([*argv, *flags]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert f"{output} holds a run with different settings {named}" in err, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert _files(output) == before, flags  # nothing deleted, moved or rewritten (summary.json included)


# ---------------------------------------------------------------------------------------------------- images


# The reason category (`failure_reason`) of each undecodable file of the corpus.
DECODE_FAILURES = {
    "empty.jpg": "empty file (0 bytes)",
    "truncated.jpg": "truncated image",
    "truncated.png": "truncated image",
    "html_page.jpg": "cannot identify image file (looks like HTML/XML text)",
    "random_bytes.png": "cannot identify image file",
    "bomb_50000x50000.png": "decompression bomb",
    "bomb_20000x5000.bmp": "decompression bomb",
}
# The one readable image of the corpus that the tiny Qwen2.5-VL itself refuses: its processor rejects aspect ratios
# over 200 ("absolute aspect ratio must be smaller than 200"), so the row fails with that engine error.
MODEL_REJECTS = {"thin_line_6000x2.png": "aspect ratio must be smaller than 200"}


@pytest.mark.slow  # the hf actor's start alone (torch and transformers imported in a new process) is ~15 s here
def test_broken_images_through_the_real_hf_engine(ray_local, qwen_dir: str, tmp_path: Path) -> None:
    """The broken-image corpus through `main()` with the ``hf`` engine and the tiny random Qwen: every file is one
    row; undecodable ones fail with their decode reason without reaching the model; the others reach it.

    Answers are cut at 32 tokens to keep the run short: a graph may end truncated, which is then the row's
    failure, parsed from the model's own text."""
    expected = write_awkward_images(tmp_path / "awkward")
    output = tmp_path / "out"
    config = _tiny_qwen_config(
        tmp_path / "tiny.yaml", files_per_shard=10, engine_options={"batch_size": 8, "max_new_tokens": 32}
    )
    argv = ["--config", str(config), "--input", str(tmp_path / "awkward"), "--output", str(output)]
    assert main([*argv, "--engine", "hf", "--model", qwen_dir, "--engine-options.num-actors", "1"]) == 0

    assert set(DECODE_FAILURES) == {name for name, outcome in expected.items() if outcome == "failed"}
    rows = _rows(output)
    assert Counter(row["image"]["path"] for row in rows) == Counter(dict.fromkeys(expected, 1))
    for row in rows:
        name, annotation = row["image"]["path"], row["annotation"]
        assert (annotation["engine"], annotation["model"]) == ("hf", qwen_dir)
        if name in DECODE_FAILURES:  # never sent: no answer, no model time, the decode reason
            assert annotation["status"] == "failed" and row["scene_graph"] is None, name
            assert annotation["raw_output"] is None and annotation["seconds"] is None, name
            assert failure_reason(annotation["error"]) == DECODE_FAILURES[name], annotation["error"]
        elif name in MODEL_REJECTS:
            assert annotation["status"] == "failed" and annotation["error"].startswith("engine error: "), name
            assert MODEL_REJECTS[name] in annotation["error"], annotation["error"]
        else:  # the model answered: its text and time are recorded, and the status is the parse of that text
            assert annotation["raw_output"] and annotation["seconds"] > 0, (name, annotation)
            if annotation["status"] == "failed":
                assert annotation["error"].startswith("truncated output: "), (name, annotation)
            else:
                assert annotation["status"] in ("ok", "repaired") and row["scene_graph"], (name, annotation)
    summary = _summary(output)
    failed = [row["annotation"]["error"] for row in rows if row["annotation"]["status"] == "failed"]
    assert summary["rows_in"] == summary["rows_annotated"] == len(expected) and summary["shards_failed"] == {}
    assert summary["failed"] == len(failed)
    assert summary["failed_by_reason"] == dict(Counter(failure_reason(error) for error in failed))


# ---------------------------------------------------------------------------------------------------- openai engine

REFUSAL = "I cannot describe this image."


class RefusingServer(FaultyServer):
    """`FaultyServer` whose answer to a request mentioning ``refuseme`` is a refusal: ``message.content`` null and
    ``message.refusal`` set, as OpenAI's structured outputs answer."""

    def answer(self, raw: bytes, authorization: str | None) -> tuple[int, dict[str, str], Any]:
        status, headers, body = super().answer(raw, authorization)  # logs the arrival time
        if "refuseme" in json.dumps(json.loads(raw)["messages"][-1]["content"]):
            body = completion(None)
            body["choices"][0]["message"]["refusal"] = REFUSAL
        return status, headers, body


def test_refusals_are_failed_rows_and_qps_bounds_each_worker(ray_local, tmp_path: Path) -> None:
    """A refusal is its row's failure (``the model refused: …``); with ``--qps 2`` the server never sees requests
    faster than 2 per second from the one HTTP worker, although it runs several batches at once."""
    captions = [f"a picture number {i}" for i in range(6)] + ["a picture to refuseme"]
    source = tmp_path / "meta"
    source.mkdir()
    pq.write_table(
        pa.table({"URL": [f"https://e.com/{i}.jpg" for i in range(7)], "TEXT": captions}),
        source / "p.parquet",
    )
    output = tmp_path / "out"
    qps = 2
    with RefusingServer() as server:
        argv = _openai_argv(server.base_url, source, output, "text_to_graph")
        assert main([*argv, "--engine-options.qps", str(qps), "--engine-options.batch-size", "3"]) == 0

    rows = {row["caption"]: row["annotation"] for row in _rows(output)}
    assert set(rows) == set(captions)
    refused = rows.pop(captions[-1])
    assert refused["status"] == "failed" and refused["error"] == f"engine error: the model refused: {REFUSAL}"
    assert all(annotation["status"] == "ok" for annotation in rows.values())
    summary = _summary(output)
    assert summary["failed"] == 1 and summary["failed_by_reason"] == {"engine error": 1}

    arrivals = sorted(when for _, when, _ in server.log)
    assert len(arrivals) == len(captions)  # one request per row
    # The bound with a generous margin for a loaded 2-core machine: the 7 requests spread over at least 60% of
    # the 3 s that 2 per second need, and no 1-second window holds more than qps + 1 of them. (Bounded per batch
    # instead, three batches of 3 rows arrive 3 at a time, all within about 1 s.)
    assert arrivals[-1] - arrivals[0] >= 0.6 * (len(arrivals) - 1) / qps, arrivals
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= qps + 1, arrivals
