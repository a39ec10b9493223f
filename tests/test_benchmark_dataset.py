"""CompSG-Bench set: selection rule, frozen file + manifest, content hash, stable subsets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmark.dataset import build_benchmark, main
from benchmark.sample_set import BenchmarkHashError, load_benchmark, manifest_path, subset_rank
from benchmark.selection import BenchmarkSelectionError
from schemas import SceneGraph, annotation_record, row_key, row_schema

NAMES = ["man", "horse", "hat", "dog", "tree", "car", "bench", "sky"]
PREDICATES = ["riding", "wearing", "next to", "under", "behind", "holding", "near"]


def png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def graph(n_relations: int, seed: int) -> SceneGraph:
    objects = [{"id": i, "name": NAMES[(seed + i) % len(NAMES)], "attributes": ["red"] if i % 2 else []} for i in range(4)]
    relations = [
        {"subject": i % 4, "predicate": PREDICATES[(seed + i) % len(PREDICATES)], "object": (i + 1 + i // 4) % 4}
        for i in range(n_relations)
    ]
    return SceneGraph.from_json({"objects": objects, "relations": relations}).repair()[0]


def export_rows(relation_counts: list[int], start: int = 0, status: str = "ok") -> list[dict]:
    rows = []
    for offset, n_relations in enumerate(relation_counts):
        i = start + offset
        url = f"https://example.com/{i}.jpg"
        sg = graph(n_relations, i)
        assert len(sg.relations) == n_relations
        rows.append(
            {
                "key": row_key(url),
                "url": url,
                "caption": f"caption {i}",
                "aesthetic_score": 6.5,
                "width": 64,
                "height": 64,
                "image": {"bytes": png(i), "path": None},
                "scene_graph": sg.to_dict(),
                "sg_text": sg.to_text(),
                "annotation": annotation_record(
                    model="m", engine="hf", task="scene_graph", prompt_version="1", status=status,
                    error="boom" if status == "failed" else None,
                ),
            }
        )
    return rows


def write_export(root: Path, splits: dict[str, list[dict]]) -> Path:
    """An exported dataset in the Hugging Face layout: ``data/{split}-00000-of-00001.parquet``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=row_schema()), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture
def export(tmp_path):
    test_rows = export_rows([5, 4, 6, 7, 3, 5, 8])
    test_rows += export_rows([9], start=100, status="failed")
    no_image = export_rows([6], start=200)
    no_image[0]["image"] = None
    return write_export(tmp_path / "export", {"train": export_rows([6, 6], start=300), "test": test_rows + no_image})


def test_selection_rule_and_manifest(export, tmp_path):
    out = tmp_path / "bench.parquet"
    manifest = build_benchmark(export, out, split="test", min_relations=5)
    bench = load_benchmark(out)
    assert [len(s.scene_graph.relations) > 4 for s in bench.samples] == [True] * 5
    assert [s.key for s in bench.samples] == sorted(s.key for s in bench.samples)
    assert manifest["counts"] == {
        "split_rows": 9,
        "failed_annotation": 1,
        "too_few_relations": 2,
        "no_image": 1,
        "eligible": 5,
        "selected": 5,
    }
    on_disk = json.loads(manifest_path(out).read_text())
    assert on_disk == manifest
    assert manifest_path(out).name == "bench.manifest.json"
    assert on_disk["selection"]["min_relations"] == 5
    info = bench.info()
    assert (info.name, info.version, info.n_samples) == ("CompSG-Bench", "1.0", 5)
    assert info.content_hash == manifest["content_hash"]
    sample = bench.samples[0]
    assert Image.open(io.BytesIO(sample.image)).size == (64, 64)
    assert sample.sg_text == sample.scene_graph.to_text()


def test_hash_is_canonical_and_verified(export, tmp_path):
    first = build_benchmark(export, tmp_path / "a.parquet")
    second = build_benchmark(export, tmp_path / "b.parquet")
    assert first["content_hash"] == second["content_hash"]
    # re-encoding the same rows differently keeps the content hash
    table = pq.read_table(tmp_path / "a.parquet")
    pq.write_table(table.take([4, 3, 2, 1, 0]), tmp_path / "a.parquet", compression="gzip")
    assert load_benchmark(tmp_path / "a.parquet").info().content_hash == first["content_hash"]
    # changing content is detected
    captions = table.column("caption").to_pylist()
    captions[2] = "a different caption"
    tampered = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions))
    pq.write_table(tampered, tmp_path / "a.parquet")
    with pytest.raises(BenchmarkHashError, match="does not match"):
        load_benchmark(tmp_path / "a.parquet")


def test_subset_is_stable_and_nested(tmp_path):
    rows = export_rows([5] * 20)
    small = write_export(tmp_path / "small", {"test": rows})
    larger = write_export(tmp_path / "larger", {"test": rows + export_rows([5] * 10, start=50)})
    keys = {}
    for name, source, n in [("s4", small, 4), ("s8", small, 8), ("l8", larger, 8)]:
        build_benchmark(source, tmp_path / f"{name}.parquet", subset=n, seed=3)
        keys[name] = {s.key for s in load_benchmark(tmp_path / f"{name}.parquet").samples}
    assert len(keys["s4"]) == 4 and keys["s4"] < keys["s8"]
    # adding rows only lets in new rows that rank before old ones; old rows keep their relative order
    expected = sorted(keys["s8"] | {r["key"] for r in export_rows([5] * 10, start=50)}, key=lambda k: subset_rank(k, 3))[:8]
    assert keys["l8"] == set(expected)
    # another seed draws another subset
    build_benchmark(small, tmp_path / "other.parquet", subset=8, seed=4)
    assert {s.key for s in load_benchmark(tmp_path / "other.parquet").samples} != keys["s8"]


def test_cli_and_missing_split(export, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert main(["--input", str(export), "--output", str(out), "--split", "test", "--min-relations", "6",
                 "--subset", "2", "--benchmark-version", "0.1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["eligible"] == 3 and printed["counts"]["selected"] == 2
    assert load_benchmark(out).info().version == "0.1"
    with pytest.raises(ValueError, match="no 'validation' split"):
        build_benchmark(export, tmp_path / "x.parquet", split="validation")


def test_reads_the_exporters_layout(tmp_path):
    from pipelines.export import main as export_main

    (tmp_path / "annotated" / "data").mkdir(parents=True)
    rows = export_rows([5, 6, 3, 7])
    pq.write_table(pa.Table.from_pylist(rows, schema=row_schema()), tmp_path / "annotated" / "data" / "shard-0.parquet")
    assert export_main(["--input", str(tmp_path / "annotated"), "--output", str(tmp_path / "export"), "--split-proportions", "0,0,1"]) == 0
    manifest = build_benchmark(tmp_path / "export", tmp_path / "bench.parquet", split="test")
    assert manifest["counts"]["selected"] == 3
    assert {s.key for s in load_benchmark(tmp_path / "bench.parquet").samples} == {r["key"] for r in rows if len(r["scene_graph"]["relations"]) > 4}


def test_export_without_images_is_refused(tmp_path):
    rows = export_rows([5])
    table = pa.Table.from_pylist(rows, schema=row_schema()).drop_columns(["image"])
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="no image column"):
        build_benchmark(tmp_path, tmp_path / "bench.parquet")


def test_no_row_over_the_relation_threshold_is_a_clear_error(tmp_path, capsys):
    # 3 usable rows with 2, 4 and 3 relations and one failed annotation with 9: nothing reaches 5 usable relations
    rows = export_rows([2, 4, 3]) + export_rows([9], start=100, status="failed")
    source = write_export(tmp_path / "export", {"test": rows})
    out = tmp_path / "bench.parquet"
    with pytest.raises(BenchmarkSelectionError) as raised:
        build_benchmark(source, out, min_relations=5)
    message = str(raised.value)
    assert "at least 5 relations" in message and "read 4 rows" in message
    assert "the most relations in any row is 9" in message and "1 rows have a failed annotation" in message
    assert not out.exists() and not manifest_path(out).exists()

    assert main(["--input", str(source), "--output", str(out), "--min-relations", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("benchmark.dataset: error: no row of split 'test'")
    assert "read 4 rows" in captured.err and "is 9" in captured.err

    # without the failed row, the maximum seen is the usable rows' 4
    source = write_export(tmp_path / "export2", {"test": export_rows([2, 4, 3])})
    with pytest.raises(BenchmarkSelectionError, match="read 3 rows, the most relations in any row is 4"):
        build_benchmark(source, out, min_relations=5)
    # other unusable inputs exit with 2 as well, never a traceback
    assert main(["--input", str(source), "--output", str(out), "--split", "validation"]) == 2
    assert "no 'validation' split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # a bad flag value is a usage error, before any reading
        main(["--input", str(source), "--output", str(out), "--min-relations", "3", "--subset", "0"])
    assert exited.value.code == 2
    assert "--subset: Input should be greater than or equal to 1 (got '0')" in capsys.readouterr().err
