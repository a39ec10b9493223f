"""Ingest: format detection, shards, LAION metadata with filters, img2dataset outputs, folders, de-duplication."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from awkward_images import write_awkward_images
from PIL import Image

from pipelines.ingest import (
    INGEST_SCHEMA,
    FilterCounts,
    FilterCountsCollector,
    IngestFilters,
    detect_format,
    list_shards,
    read_dataset,
    read_shard,
)

NO_FILTERS = IngestFilters()
PHOTOS = {"astronaut": skimage.data.astronaut, "chelsea": skimage.data.chelsea, "coffee": skimage.data.coffee}


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _jpeg(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PHOTOS[name]()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _read_all(
    path: Path, filters: IngestFilters = NO_FILTERS, **kwargs: Any
) -> tuple[pa.Table, FilterCounts]:
    input_format = detect_format(path)
    tables, total = [], FilterCounts()
    for shard in list_shards(path, input_format, filters=filters, **kwargs):
        table, counts = read_shard(shard, input_format, filters)
        tables.append(table)
        total += counts
    return pa.concat_tables(tables), total


# ---------------------------------------------------------------------------------------------------- LAION metadata


def _laion_rows() -> list[dict[str, Any]]:
    rows = [
        # url, text, aesthetic, width, height, pwatermark, punsafe
        ("https://a.example/0.jpg", "a cat", 6.9, 800, 600, 0.1, 0.01),
        ("https://a.example/1.jpg", "a dog", 6.2, 800, 600, 0.1, 0.01),  # aesthetic < 6.5
        ("https://a.example/2.jpg", "a tree", None, 800, 600, 0.1, 0.01),  # aesthetic missing
        ("https://a.example/3.jpg", "a car", 7.1, 200, 600, 0.1, 0.01),  # width < 256
        ("https://a.example/4.jpg", "a sign", 6.6, 800, 600, 0.95, 0.01),  # watermark
        ("https://a.example/5.jpg", "a nude", 6.6, 800, 600, 0.1, 0.9),  # unsafe
        ("https://a.example/0.jpg", "a cat again", 7.0, 800, 600, 0.1, 0.01),  # duplicate of row 0
        (None, "no url", 7.0, 800, 600, 0.1, 0.01),
        ("https://a.example/8.jpg", "a boat", 6.5, 256, 256, 0.8, 0.5),  # exactly on every bound: kept
    ]
    names = ["URL", "TEXT", "AESTHETIC_SCORE", "WIDTH", "HEIGHT", "pwatermark", "punsafe"]
    return [dict(zip(names, row, strict=True)) | {"similarity": 0.3} for row in rows]


FILTERS = IngestFilters(
    min_aesthetic_score=6.5, min_width=256, min_height=256, max_pwatermark=0.8, max_punsafe=0.5
)


def test_laion_parquet_any_case_with_filter_counts(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(_laion_rows()), tmp_path / "upper.parquet")
    lower = pa.Table.from_pylist(_laion_rows()).rename_columns(
        ["url", "caption", "aesthetic_score", "Width", "height", "PWATERMARK", "punsafe", "similarity"]
    )
    pq.write_table(lower, tmp_path / "lower.parquet")
    for name in ("upper.parquet", "lower.parquet"):
        assert detect_format(tmp_path / name) == "laion_parquet"
        table, counts = _read_all(tmp_path / name, FILTERS)
        assert table.schema == INGEST_SCHEMA
        assert table.column("url").to_pylist() == ["https://a.example/0.jpg", "https://a.example/8.jpg"]
        assert table.column("key").to_pylist() == [
            _sha1("https://a.example/0.jpg"),
            _sha1("https://a.example/8.jpg"),
        ]
        assert table.column("caption").to_pylist() == ["a cat", "a boat"]
        assert table.column("width").to_pylist() == [800, 256] and table.column("height").to_pylist() == [
            600,
            256,
        ]
        assert table.column("aesthetic_score").to_pylist() == pytest.approx([6.9, 6.5])
        assert table.column("image_bytes").null_count == 2
        assert table.column("source").to_pylist() == [f"{tmp_path / name}#0", f"{tmp_path / name}#8"]
        assert counts.rows_in == 9 and counts.rows_out == 2
        assert counts.removed == {
            "aesthetic_score<6.5": 1,
            "aesthetic_score missing": 1,
            "width<256": 1,
            "pwatermark>0.8": 1,
            "punsafe>0.5": 1,
            "duplicate": 1,
            "no url or image": 1,
        }
        assert counts.summary().startswith("rows in: 9, kept: 2, filtered: aesthetic_score missing: 1, ")


def test_no_filters_keep_everything_but_keyless_rows(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(_laion_rows()), tmp_path / "meta.parquet")
    table, counts = _read_all(tmp_path, IngestFilters(dedupe_urls=False))
    assert table.num_rows == 8 and counts.removed == {"no url or image": 1}


def test_dedupe_across_shards_first_passing_row_wins(tmp_path: Path) -> None:
    def write(name: str, urls: list[str], scores: list[float]) -> None:
        pq.write_table(
            pa.table({"URL": urls, "TEXT": [f"{name}:{u}" for u in urls], "AESTHETIC_SCORE": scores}),
            tmp_path / name,
        )

    write("part-0.parquet", ["u1", "u2", "u3", "u1"], [7.0, 5.0, 7.0, 7.0])
    write("part-1.parquet", ["u2", "u3", "u4"], [7.0, 7.0, 7.0])
    write("part-2.parquet", ["u4", "u5", "u2"], [7.0, 7.0, 7.0])
    filters = IngestFilters(min_aesthetic_score=6.5)
    table, counts = _read_all(tmp_path, filters)
    # u2's first row fails the score filter, so its first passing row (in part-1) is kept.
    assert table.column("caption").to_pylist() == [
        "part-0.parquet:u1",
        "part-0.parquet:u3",
        "part-1.parquet:u2",
        "part-1.parquet:u4",
        "part-2.parquet:u5",
    ]
    assert counts.removed == {"aesthetic_score<6.5": 1, "duplicate": 4}
    assert counts.rows_in == 10 and counts.rows_out == 5

    with pytest.raises(ValueError, match="same filters"):
        read_shard(list_shards(tmp_path, filters=filters)[0], "laion_parquet", IngestFilters())
    without = IngestFilters(min_aesthetic_score=6.5, dedupe_urls=False)
    assert _read_all(tmp_path, without)[0].num_rows == 9


def test_parquet_row_range_shards(tmp_path: Path) -> None:
    urls = [f"https://b.example/{i}.jpg" for i in range(25)]
    pq.write_table(
        pa.table({"URL": urls, "TEXT": urls}), tmp_path / "laion aes 6.5+.parquet", row_group_size=4
    )
    shards = list_shards(tmp_path, rows_per_shard=10)
    assert [s.name for s in shards] == ["laion_aes_6.5-00000", "laion_aes_6.5-00001", "laion_aes_6.5-00002"]
    assert [(s.row_start, s.row_stop) for s in shards] == [(0, 10), (10, 20), (20, 25)]
    assert list_shards(tmp_path, rows_per_shard=10) == shards  # deterministic
    table, _ = _read_all(tmp_path, rows_per_shard=10)
    assert table.column("url").to_pylist() == urls


# ---------------------------------------------------------------------------------------------------- img2dataset

# img2dataset 1.47.0's output, as observed from a real run (`--url_col URL --caption_col TEXT
# --save_additional_columns '["AESTHETIC_SCORE","pwatermark","punsafe"]'`): the additional columns, then
# caption, url, key, status, error_message, width, height, original_width, original_height, exif, sha256,
# and (parquet output only) the image column named after --encode_format.
I2D_META_SCHEMA = pa.schema(
    [
        ("AESTHETIC_SCORE", pa.float64()),
        ("pwatermark", pa.float64()),
        ("punsafe", pa.float64()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def _i2d_samples(shard_id: int) -> list[tuple[dict[str, Any], bytes | None]]:
    """(metadata, jpg) per sample of one img2dataset shard: two downloads and one 404."""
    samples = []
    for i, name in enumerate(["astronaut", "chelsea", "missing"]):
        key = f"{shard_id:05d}{i:04d}"
        url = f"http://127.0.0.1:8000/{name}.jpg"
        ok = name in PHOTOS
        data = _jpeg(name) if ok else None
        size = Image.open(io.BytesIO(data)).size if data else (None, None)
        meta = {
            "AESTHETIC_SCORE": 6.5 + i / 10,
            "pwatermark": 0.1,
            "punsafe": 0.01,
            "caption": f"photo of {name}",
            "url": url,
            "key": key,
            "status": "success" if ok else "failed_to_download",
            "error_message": None if ok else "HTTP Error 404: File not found",
            # resized by img2dataset (e.g. --resize_mode keep_ratio): width/height differ from the original
            "width": size[0] // 2 if ok else None,
            "height": size[1] // 2 if ok else None,
            "original_width": size[0],
            "original_height": size[1],
            "exif": "{}" if ok else None,
            "sha256": hashlib.sha256(data).hexdigest() if ok else None,
        }
        samples.append((meta, data))
    return samples


def _write_img2dataset(directory: Path, output_format: str, shards: int = 2) -> None:
    directory.mkdir(parents=True)
    (directory / "_tmp").mkdir()  # img2dataset's scratch folder
    for shard_id in range(shards):
        samples = _i2d_samples(shard_id)
        metas = [meta for meta, _ in samples]
        (directory / f"{shard_id:05d}_stats.json").write_text(json.dumps({"count": len(samples)}))
        if output_format == "parquet":
            schema = I2D_META_SCHEMA.append(pa.field("jpg", pa.binary()))
            rows = [meta | {"jpg": data} for meta, data in samples]
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), directory / f"{shard_id:05d}.parquet")
            continue
        pq.write_table(
            pa.Table.from_pylist(metas, schema=I2D_META_SCHEMA), directory / f"{shard_id:05d}.parquet"
        )
        with tarfile.open(directory / f"{shard_id:05d}.tar", "w") as tar:
            for meta, data in samples:
                if data is None:
                    continue  # failed downloads are only in the metadata parquet
                for extension, payload in (
                    ("jpg", data),
                    ("json", json.dumps(meta, indent=4).encode()),
                    ("txt", meta["caption"].encode()),
                ):
                    info = tarfile.TarInfo(f"{meta['key']}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("output_format", ["parquet", "webdataset"])
def test_img2dataset_output(tmp_path: Path, output_format: str) -> None:
    directory = tmp_path / output_format
    _write_img2dataset(directory, output_format)
    expected_format = {"parquet": "img2dataset_parquet", "webdataset": "webdataset"}[output_format]
    assert detect_format(directory) == expected_format
    assert [s.name for s in list_shards(directory)] == ["00000", "00001"]

    table, counts = _read_all(directory)
    # Both shards hold the same URLs: the second shard's rows are duplicates.
    assert table.column("url").to_pylist() == [
        "http://127.0.0.1:8000/astronaut.jpg",
        "http://127.0.0.1:8000/chelsea.jpg",
    ]
    assert table.column("key").to_pylist() == [_sha1(u) for u in table.column("url").to_pylist()]
    assert table.column("caption").to_pylist() == ["photo of astronaut", "photo of chelsea"]
    assert table.column("width").to_pylist() == [512, 451]  # original_width, not img2dataset's resized width
    assert table.column("height").to_pylist() == [512, 300]
    assert table.column("aesthetic_score").to_pylist() == pytest.approx([6.5, 6.6])
    assert table.column("image_bytes").to_pylist() == [_jpeg("astronaut"), _jpeg("chelsea")]
    # The 404s count the same in every format (a webdataset has them only in the metadata Parquet beside the tar).
    assert counts.removed == {"duplicate": 2, "not downloaded": 2} and counts.rows_in == 6
    # Upstream metadata kept for curation; `original_*` as img2dataset recorded it.
    assert table.column("original_width").to_pylist() == [512, 451]
    assert table.column("source_key").to_pylist() == ["000000000", "000000001"]
    sha256 = [hashlib.sha256(_jpeg(name)).hexdigest() for name in ("astronaut", "chelsea")]
    assert table.column("sha256").to_pylist() == sha256
    assert table.column("punsafe").to_pylist() == pytest.approx([0.01, 0.01])


def test_same_image_has_the_same_key_in_every_format(tmp_path: Path) -> None:
    _write_img2dataset(tmp_path / "parquet", "parquet", shards=1)
    _write_img2dataset(tmp_path / "webdataset", "webdataset", shards=1)
    files = tmp_path / "files"  # img2dataset's --output_format files: {key}.jpg/.txt/.json in shard folders
    (files / "00000").mkdir(parents=True)
    for meta, data in _i2d_samples(0):
        if data is not None:
            (files / "00000" / f"{meta['key']}.jpg").write_bytes(data)
            (files / "00000" / f"{meta['key']}.txt").write_text(meta["caption"])
            (files / "00000" / f"{meta['key']}.json").write_text(json.dumps(meta))
    pq.write_table(
        pa.Table.from_pylist([m for m, _ in _i2d_samples(0)], schema=I2D_META_SCHEMA), files / "00000.parquet"
    )
    assert detect_format(files) == "folder"
    columns = ["key", "url", "caption", "width", "height", "image_bytes"]
    tables = [_read_all(tmp_path / name)[0].select(columns) for name in ("parquet", "webdataset", "files")]
    assert tables[0].num_rows == 2 and tables[0].equals(tables[1]) and tables[0].equals(tables[2])


# ---------------------------------------------------------------------------------------------------- folders


def test_folder_of_awkward_images(tmp_path: Path) -> None:
    expected = write_awkward_images(tmp_path / "images" / "awkward")
    (tmp_path / "images" / "awkward" / "photo_coffee.txt").write_text("a cup of coffee")
    (tmp_path / "images" / "copy").mkdir()
    (tmp_path / "images" / "copy" / "coffee.png").write_bytes(
        (tmp_path / "images/awkward/photo_coffee.png").read_bytes()
    )
    (tmp_path / "images" / "_tmp").mkdir()
    (tmp_path / "images" / "_tmp" / "partial.jpg").write_bytes(b"...")
    (tmp_path / "images" / ".cache.png").write_bytes(b"...")
    (tmp_path / "images" / "notes.md").write_text("not an image")

    root = tmp_path / "images"
    assert detect_format(root) == "folder"
    shards = list_shards(root, files_per_shard=10)
    assert [s.name for s in shards] == [f"folder-{i:05d}" for i in range(3)]
    assert sum(len(s.files) for s in shards) == len(expected) + 1
    table, counts = _read_all(root, files_per_shard=10)
    # Broken images are rows too (annotation marks them failed); only the byte-identical copy is dropped.
    assert counts.removed == {"duplicate": 1} and table.num_rows == len(expected)
    rows = {Path(r["source"]).name: r for r in table.to_pylist()}
    assert set(rows) == set(expected)
    coffee = rows["photo_coffee.png"]
    assert coffee["caption"] == "a cup of coffee" and (coffee["width"], coffee["height"]) == (600, 400)
    assert coffee["url"] is None and coffee["key"] == hashlib.sha1(coffee["image_bytes"]).hexdigest()
    assert rows["exif_rotated.jpg"]["width"] == 24  # display orientation
    assert rows["html_page.jpg"]["width"] is None and rows["empty.jpg"]["image_bytes"] == b""
    assert rows["empty.jpg"]["key"] == hashlib.sha1(b"").hexdigest()


# ---------------------------------------------------------------------------------------------------- detection, names


@pytest.mark.parametrize(("sidecar", "message"), [(b"{not json", "not valid JSON metadata"), (b"[1, 2]", "JSON metadata must be an object, got list"), (b"\xff\xfe", "not valid JSON metadata")])
def test_a_broken_json_sidecar_is_named(tmp_path: Path, sidecar: bytes, message: str) -> None:
    """A sample's metadata that is not a JSON object is refused naming the file, in a folder and in a tar."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg("coffee"))
    (folder / "a.json").write_bytes(sidecar)
    with pytest.raises(ValueError, match=f"^{folder / 'a.json'}: {message}"):
        _read_all(folder)
    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "00000.tar", "w") as tar:
        for name, data in (("a.jpg", _jpeg("coffee")), ("a.json", sidecar)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=f"^{tars / '00000.tar'}#a.json: {message}"):
        _read_all(tars)


def test_detect_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tar shards, .parquet files or images"):
        detect_format(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("https://a.example/0.jpg\n")
    assert detect_format(tmp_path / "list.txt") == "url_list"  # img2dataset's txt input
    (tmp_path / "notes.md").write_text("# x\n")
    with pytest.raises(ValueError, match="expected a directory, a .parquet, .tar, .csv, .tsv or .txt file"):
        detect_format(tmp_path / "notes.md")
    pq.write_table(pa.table({"id": [1], "name": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="without an image column"):
        detect_format(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="unknown input format"):
        list_shards(tmp_path, "tfrecord")


def test_shard_names_are_safe_and_unique(tmp_path: Path) -> None:
    for relative in ("a-b.tar", "a/b.tar", "x y/ü.tar"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp_path / relative, "w"):
            pass
    names = [s.name for s in list_shards(tmp_path, "webdataset", filters=IngestFilters(dedupe_urls=False))]
    assert len(set(names)) == 3 and all(
        n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names
    )
    assert names[0].startswith("a-b-") and names[1].startswith("a-b-") and names[2] == "x_y"


def test_package_modules_import_only_earlier_ones() -> None:
    """The layering the package docstring states: no import loop inside `pipelines.ingest`."""
    import ast

    import pipelines.ingest

    layers = ["columns", "formats", "filters", "shards", "readers", "planning", "dataset"]
    package = Path(pipelines.ingest.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") == sorted(layers)
    for index, name in enumerate(layers):
        tree = ast.parse((package / f"{name}.py").read_text())
        imported = {
            node.module.removeprefix("pipelines.ingest.")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines.ingest.")
        }
        assert imported <= set(layers[:index]), (name, imported - set(layers[:index]))
    assert all(hasattr(pipelines.ingest, public) for public in pipelines.ingest.__all__)


# ---------------------------------------------------------------------------------------------------- Ray Data



def test_read_dataset_matches_per_shard_reading(tmp_path: Path, ray_local: None) -> None:
    _write_img2dataset(tmp_path / "wds", "webdataset", shards=3)
    collector = FilterCountsCollector()
    dataset = read_dataset(tmp_path / "wds", collector=collector)
    rows = sorted(dataset.take_all(), key=lambda r: r["key"])
    expected, counts = _read_all(tmp_path / "wds")
    assert [r["key"] for r in rows] == sorted(expected.column("key").to_pylist())
    assert {r["image_bytes"] for r in rows} == {_jpeg("astronaut"), _jpeg("chelsea")}
    assert collector.counts() == counts and counts.removed == {"duplicate": 4, "not downloaded": 3}


@pytest.mark.parametrize("with_ray", [False, True], ids=["in-process", "ray-tasks"])
def test_dedupe_plan_matches_a_brute_force_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, with_ray: bool
) -> None:
    """The map-reduce plan (several buckets, in-process or as Ray tasks) gives each shard exactly the keys whose
    first passing row is in an earlier shard, as a plain first-owner dictionary over all rows says."""
    import random

    from pipelines.ingest import planning

    if with_ray:
        request.getfixturevalue("ray_local")
    monkeypatch.setattr(planning, "_KEYS_PER_BUCKET", 1_000)  # 7 shards of 10,000 planned rows: 70 buckets
    rng = random.Random(7)
    files = []
    for part in range(7):
        urls = [f"https://d.example/{rng.randrange(300)}.jpg" for _ in range(rng.randrange(40, 90))]
        scores = [rng.choice([5.0, 7.0, 7.0]) for _ in urls]
        pq.write_table(pa.table({"URL": urls, "AESTHETIC_SCORE": scores}), tmp_path / f"part-{part}.parquet")
        files.append((urls, scores))
    owner: dict[str, int] = {}
    expected: list[set[str]] = [set() for _ in files]
    for index, (urls, scores) in enumerate(files):
        for url, score in zip(urls, scores, strict=True):
            if score >= 6.5 and owner.setdefault(_sha1(url), index) != index:
                expected[index].add(_sha1(url))
    assert sum(map(len, expected)) > 50  # the input has many cross-shard duplicates
    shards = list_shards(tmp_path, filters=IngestFilters(min_aesthetic_score=6.5))
    assert [set(shard.drop_keys) for shard in shards] == expected
