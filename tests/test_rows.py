"""The Arrow row schema is read by `datasets` with a decoded image and a nested graph; result records round-trip."""

from __future__ import annotations

import hashlib
import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError
from skimage import data as skdata

from schemas import (
    BenchmarkInfo,
    BenchmarkResult,
    GenerationSettings,
    ModelInfo,
    Provenance,
    SceneGraph,
    SGObject,
    SGRelation,
    annotation_record,
    hf_features,
    row_key,
    row_schema,
    scene_graph_from_arrow,
    scene_graph_to_arrow,
)


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hf_features_match_datasets_own_conversion():
    schema = row_schema(extra_columns={"spatial_caption": pa.string()})
    ours = datasets.Features.from_dict(hf_features(schema))
    assert ours.arrow_schema.remove_metadata().equals(schema.remove_metadata())
    assert isinstance(ours["image"], datasets.Image)
    assert ours == datasets.Features.from_dict(ours.to_dict())


def test_hf_features_of_every_column_type_equal_datasets_own() -> None:
    """`datasets.Features.from_arrow_schema` is the oracle for every type; only a column named ``image`` holding
    the image struct becomes an `Image` (the same struct under another name, or a string named image, does not)."""
    schema = pa.schema(
        [
            ("f16", pa.float16()), ("f32", pa.float32()), ("f64", pa.float64()), ("i8", pa.int8()),
            ("s", pa.string()), ("ls", pa.large_string()), ("b", pa.binary()), ("ok", pa.bool_()),
            ("nested", pa.list_(pa.struct([("image", pa.string()), ("xs", pa.large_list(pa.int32()))]))),
            ("photo", row_schema().field("image").type),
            ("image", row_schema().field("image").type),
            ("pair", pa.struct([("image", row_schema().field("image").type), ("caption", pa.string())])),
        ]
    )  # fmt: skip
    expected = datasets.Features.from_arrow_schema(schema).to_dict()
    expected["image"] = {"_type": "Image"}
    expected["pair"] = datasets.Features(  # a struct's field named image is an image too
        {"pair": {"image": datasets.Image(), "caption": datasets.Value("string")}}
    ).to_dict()["pair"]
    assert hf_features(schema) == expected
    assert expected["photo"] != {"_type": "Image"}


def test_row_schema_without_images_and_with_extra_columns() -> None:
    full = row_schema()
    lean = row_schema(with_image=False, extra_columns={"spatial_caption": pa.string(), "n": pa.int64()})
    assert "image" in full.names and "image" not in lean.names
    assert lean.names == [n for n in full.names if n != "image"] + ["spatial_caption", "n"]
    assert lean.field("n").type == pa.int64()
    assert json.loads(lean.metadata[b"huggingface"])["info"]["features"] == hf_features(lean)


def test_row_key_of_each_source() -> None:
    """sha1 of the UTF-8 URL, else of the bytes, else of the UTF-8 caption; never of a blank caption."""
    assert row_key(url="http://ä/1") == hashlib.sha1("http://ä/1".encode()).hexdigest()
    assert row_key(caption="ein Bär", image_bytes=None) == hashlib.sha1("ein Bär".encode()).hexdigest()
    assert row_key(image_bytes=b"", caption="x") == hashlib.sha1(b"").hexdigest()  # empty bytes still count
    assert row_key(url="", caption="c") == row_key(caption="c")
    for blank in ({}, {"caption": "  "}, {"url": "", "caption": ""}):
        with pytest.raises(ValueError, match="^a row key needs a URL, the image bytes or a caption$"):
            row_key(**blank)


def test_parquet_with_row_schema_loads_in_datasets(tmp_path):
    graph = SceneGraph([SGObject(0, "cat", ["orange"]), SGObject(1, "sofa", [])], [SGRelation(0, "lying on", 1)])
    image = _png(skdata.chelsea()[::4, ::4])
    rows = [
        {
            "key": row_key(image_bytes=image),
            "url": None,
            "caption": "a cat",
            "aesthetic_score": 6.5,
            "width": 113,
            "height": 75,
            "image": {"bytes": image, "path": "chelsea.png"},
            "scene_graph": scene_graph_to_arrow(graph),
            "sg_text": graph.to_text(),
            "annotation": annotation_record(model="m", engine="hf", task="scene_graph", prompt_version="1",
                                            status="ok", raw_output=graph.to_json(), seconds=0.5),
        },
        {
            "key": row_key(url="http://x/broken.jpg"),
            "url": "http://x/broken.jpg",
            "caption": None,
            "aesthetic_score": None,
            "width": None,
            "height": None,
            "image": None,
            "scene_graph": None,
            "sg_text": None,
            "annotation": annotation_record(model="m", engine="hf", task="scene_graph", prompt_version="1",
                                            status="failed", error="cannot identify image file"),
        },
    ]
    schema = row_schema()
    path = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)

    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert len(loaded) == 2
    first = loaded[0]
    assert isinstance(first["image"], Image.Image) and first["image"].size == (113, 75)
    assert first["scene_graph"]["objects"][0] == {"id": 0, "name": "cat", "attributes": ["orange"]}
    assert first["scene_graph"]["relations"] == [{"subject": 0, "predicate": "lying on", "object": 1}]
    assert scene_graph_from_arrow(first["scene_graph"]) == graph
    assert loaded[1]["annotation"]["status"] == "failed" and loaded[1]["image"] is None
    # pyarrow and Ray Data hand back the same cell shape
    assert scene_graph_from_arrow(pq.read_table(path).column("scene_graph")[0].as_py()) == graph


def test_scene_graph_from_columnar_cell():
    cell = {"objects": {"id": [0, 1], "name": ["a", "b"], "attributes": [[], ["red"]]},
            "relations": {"subject": [0], "predicate": ["on"], "object": [1]}}
    assert scene_graph_from_arrow(cell) == SceneGraph([SGObject(0, "a"), SGObject(1, "b", ["red"])], [SGRelation(0, "on", 1)])


def test_row_key_is_stable():
    assert row_key(url="http://a") == row_key(url="http://a", image_bytes=b"x")
    assert row_key(image_bytes=b"x") == "11f6ad8ec52a2984abaafd7c3b516503785c2072"
    with pytest.raises(ValueError):
        row_key()


def test_annotation_record_rejects_bad_status():
    with pytest.raises(ValueError, match="status"):
        annotation_record(model="m", engine="e", task="t", prompt_version="1", status="great")
    with pytest.raises(ValueError, match="^a failed annotation needs an error reason$"):
        annotation_record(model="m", engine="e", task="t", prompt_version="1", status="failed")


def _result(**metrics: float) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=BenchmarkInfo(version="1", content_hash="ab" * 32, n_samples=3),
        model=ModelInfo(adapter="sdxl-sg", model_id="/models/x", conditioning="scene_graph"),
        generation=GenerationSettings(seed=42, images_per_sample=1, num_inference_steps=2, guidance_scale=5.0,
                                      height=64, width=64),
        metrics=metrics,
        provenance=Provenance(package_version="0.1.0", packages={"torch": "2.14.1"}, hardware={"cpu": "x"},
                              wall_time_s=1.0, created_at="2026-11-23T00:00:00Z"),
    )


def test_result_record_round_trip_and_validation():
    record = _result(fid=12.5, sg_iou=0.3)
    again = BenchmarkResult.from_json(record.to_json())
    assert again == record and again.run_id == record.run_id
    with pytest.raises(ValidationError, match="not finite: fid"):
        _result(fid=float("nan"))
    with pytest.raises(ValidationError):
        BenchmarkResult.model_validate({**record.model_dump(), "unexpected": 1})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (True, "true (a boolean)"),
        ("27.5", '"27.5" (a string)'),
        (None, "null (null)"),
        ([1], "[1] (an array)"),
        ({"a": 1}, '{"a": 1} (an object)'),
        ("x" * 38, '"' + "x" * 38 + '" (a string)'),  # 40 characters as JSON: shown whole
        ("x" * 39, '"' + "x" * 36 + "... (a string)"),  # 41: cut to 37 and marked
        (b"\x00", "b'\\x00' (bytes)"),  # not JSON: its repr, and its Python type
    ],
)
def test_bad_metric_values_are_shown_as_json_with_their_kind(value, shown) -> None:
    record = _result(fid=1.0).model_dump()
    with pytest.raises(ValidationError) as info:
        BenchmarkResult.model_validate({**record, "metrics": {"fid": 1.0, "clip_t": value}})
    message = next(line for line in str(info.value).splitlines() if "not a number" in line)
    assert message.split(" [type=")[0].endswith(f"not a number: clip_t = {shown}")  # only the bad value is named


def test_result_record_field_bounds_and_run_identity() -> None:
    record = _result(fid=12, sg_iou=0.3)
    assert record.metrics == {"fid": 12.0, "sg_iou": 0.3} and isinstance(record.metrics["fid"], float)
    assert record.schema_version == 1 and record.benchmark.name == "CompSG-Bench"
    data = record.model_dump()
    for path, value in [
        (("benchmark", "n_samples"), 0),
        (("generation", "images_per_sample"), 0),
        (("generation", "num_inference_steps"), 0),
        (("generation", "height"), 7),
        (("generation", "width"), 7),
        (("provenance", "wall_time_s"), -0.1),
        (("model", "conditioning"), "prompt"),
    ]:
        bad = {**data, path[0]: {**data[path[0]], path[1]: value}}
        with pytest.raises(ValidationError, match=path[1]):
            BenchmarkResult.model_validate(bad)
    edge = {**data, "generation": {**data["generation"], "height": 8, "width": 8, "images_per_sample": 1}}
    assert BenchmarkResult.model_validate(edge).generation.height == 8
    with pytest.raises(ValidationError, match="frozen"):
        record.metrics = {}
    with pytest.raises(ValidationError, match="not finite: fid, clip_t"):
        _result(fid=float("inf"), sg_iou=0.1, clip_t=float("-inf"))
    # run_id: sha256 over benchmark, model and generation only (sorted-key JSON), first 16 hex digits
    identity = {k: data[k] for k in ("benchmark", "model", "generation")}
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    assert record.run_id == expected
    later = record.model_copy(update={"metrics": {"fid": 1.0}, "provenance": record.provenance.model_copy(update={"wall_time_s": 9.0})})
    assert later.run_id == record.run_id
    reseeded = record.model_copy(update={"generation": record.generation.model_copy(update={"seed": 43})})
    assert reseeded.run_id != record.run_id
    assert json.loads(record.to_json()) == json.loads(record.model_dump_json())
    assert record.to_json().startswith('{\n  "schema_version": 1')


def test_scene_graph_from_arrow_refuses_columns_of_unequal_length() -> None:
    """`datasets`' dict-of-lists layout: a column shorter than the others is a broken cell, not fewer objects."""
    columns = {"id": [0, 1], "name": ["dog", "cat"], "attributes": [[], ["small"]]}
    graph = scene_graph_from_arrow({"objects": columns, "relations": {"subject": [0], "predicate": ["near"], "object": [1]}})
    assert graph.to_text() == "dog near small cat"
    with pytest.raises(ValueError):
        scene_graph_from_arrow({"objects": {**columns, "name": ["dog"]}, "relations": []})
