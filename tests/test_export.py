"""Export: deterministic splits, Parquet + dataset card readable by `datasets`, statistics on a hand-made case."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from pipelines.export import (
    DEFAULT_PROPORTIONS,
    SPLITS,
    ExportStats,
    assign_splits,
    balanced_splits,
    export,
    main,
)
from pipelines.export.card import size_category
from pipelines.export.plots import figures
from pipelines.export.splits import fill_empty_splits
from schemas import (
    SCENE_GRAPH_TYPE,
    SceneGraph,
    SGObject,
    SGRelation,
    annotation_record,
    row_key,
    row_schema,
    scene_graph_from_arrow,
    scene_graph_to_arrow,
)

PHOTOS = (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee, skimage.data.rocket)


@functools.cache
def _jpeg(index: int) -> bytes:
    image = Image.fromarray(PHOTOS[index % len(PHOTOS)]()).resize((48, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _graph(index: int) -> SceneGraph:
    objects = [
        SGObject(0, "person", ["young"]),
        SGObject(1, "horse", ["brown", "tall"]),
        SGObject(2, "tree", []),
    ][: 1 + index % 3]
    relations = [SGRelation(0, "riding", 1)] if len(objects) > 1 else []
    return SceneGraph(objects, relations)


def _row(
    index: int, graph: SceneGraph | None, status: str, error: str | None = None, with_image: bool = True
) -> dict[str, Any]:
    url = f"https://example.com/images/{index}.jpg"
    row = {
        "key": row_key(url),
        "url": url,
        "caption": f"caption {index}",
        "aesthetic_score": 6.5 + index / 100,
        "width": 48,
        "height": 40,
        "scene_graph": scene_graph_to_arrow(graph),
        "sg_text": graph.to_text() if graph else None,
        "annotation": annotation_record(
            model="tiny-qwen",
            engine="hf",
            task="scene_graph",
            prompt_version="v1",
            status=status,
            raw_output=graph.to_json() if graph else "{",
            error=error,
            seconds=0.1,
        ),
    }
    if with_image:
        row["image"] = {"bytes": _jpeg(index % len(PHOTOS)), "path": f"{index}.jpg"}
    return row


def _write_annotated(directory: Path, shards: list[list[dict[str, Any]]], with_image: bool = True) -> Path:
    (directory / "data").mkdir(parents=True)
    schema = row_schema(with_image=with_image)
    for i, rows in enumerate(shards):
        pq.write_table(
            pa.Table.from_pylist(rows, schema=schema), directory / "data" / f"shard-{i:05d}.parquet"
        )
    return directory


@pytest.fixture
def annotated(tmp_path: Path) -> Path:
    """45 annotated rows in 3 shards: 40 ok/repaired, 5 failed (3 'invalid json', 2 'decompression bomb')."""
    rows = [_row(i, _graph(i), "ok" if i % 4 else "repaired") for i in range(40)]
    rows += [_row(40 + i, None, "failed", "invalid json: unexpected end of input") for i in range(3)]
    rows += [
        _row(43 + i, None, "failed", "decompression bomb: 50000x50000 exceeds 89478485 pixels")
        for i in range(2)
    ]
    random.Random(0).shuffle(rows)
    return _write_annotated(tmp_path / "annotated", [rows[:20], rows[20:35], rows[35:]])


def test_assign_splits_is_a_stable_function_of_key_and_seed() -> None:
    keys = [row_key(f"https://example.com/{i}") for i in range(20_000)]
    splits = assign_splits(keys)
    fractions = np.bincount(splits, minlength=3) / len(keys)
    expected = np.array(DEFAULT_PROPORTIONS) / sum(DEFAULT_PROPORTIONS)
    assert np.allclose(fractions, expected, atol=0.01), fractions
    order = np.random.default_rng(0).permutation(len(keys))
    assert np.array_equal(assign_splits([keys[i] for i in order]), splits[order])  # independent of row order
    assert np.array_equal(assign_splits(keys[:100]), splits[:100])  # independent of the other rows
    assert not np.array_equal(assign_splits(keys, seed=1), splits)
    assert set(assign_splits(keys[:1000], (1, 0, 1)).tolist()) == {0, 2}
    with pytest.raises(ValueError, match="proportions"):
        assign_splits(keys, (1, 1))


def test_export_loads_with_datasets(annotated: Path, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "dataset"
    stats = export(annotated, out, proportions=(0.6, 0.2, 0.2), rows_per_file=7)

    assert stats["rows"]["total"] == 45 and stats["rows"]["exported"] == 40
    assert stats["rows"]["by_status"] == {"failed": 5, "ok": 30, "repaired": 10}
    assert stats["left_out"] == {"rows": 5, "by_reason": {"invalid json": 3, "decompression bomb": 2}}
    by_split = stats["rows"]["by_split"]
    assert sum(by_split.values()) == 40 and all(by_split[s] > 0 for s in SPLITS)

    files = sorted(p.name for p in (out / "data").glob("*.parquet"))
    for split in SPLITS:
        n = -(-by_split[split] // 7)
        assert [f for f in files if f.startswith(split + "-")] == [
            f"{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)
        ]
    assert all(pq.ParquetFile(out / "data" / f).metadata.num_rows <= 7 for f in files)

    originals = {r["key"]: r for r in pq.read_table(annotated / "data").to_pylist()}
    cache = tmp_path / "hf_cache"
    data_files = {split: str(out / "data" / f"{split}-*.parquet") for split in SPLITS}
    for loaded in (
        datasets.load_dataset("parquet", data_files=data_files, cache_dir=str(cache)),
        datasets.load_dataset(str(out), cache_dir=str(cache)),
    ):
        assert {split: loaded[split].num_rows for split in SPLITS} == by_split
        for split in SPLITS:
            for row in loaded[split]:
                original = originals[row["key"]]
                assert isinstance(row["image"], Image.Image) and row["image"].size == (48, 40)
                assert row["annotation"]["status"] in ("ok", "repaired")
                assert scene_graph_from_arrow(row["scene_graph"]) == scene_graph_from_arrow(
                    original["scene_graph"]
                )
                assert isinstance(row["scene_graph"]["objects"], list)
                assert isinstance(row["scene_graph"]["objects"][0], dict)
                assert row["caption"] == original["caption"]
        assert loaded["train"].features["image"] == datasets.Image()

    card = (out / "README.md").read_text()
    front_matter = card.split("---")[1]
    assert (
        "configs:" in front_matter
        and "dataset_info:" in front_matter
        and "path: data/train-*.parquet" in front_matter
    )
    assert json.loads((out / "stats.json").read_text())["rows"]["exported"] == 40
    for name in ("per_image", "graph_length", "top_names", "top_predicates", "top_attributes"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000


def test_split_of_a_row_does_not_depend_on_the_sharding(annotated: Path, tmp_path: Path) -> None:
    rows = pq.read_table(annotated / "data").to_pylist()
    resharded = _write_annotated(tmp_path / "resharded", [rows[::2], rows[1::2]])

    def split_of_keys(source: Path, out: Path) -> dict[str, str]:
        export(source, out, proportions=(0.5, 0.25, 0.25))
        return {
            key: re.match(r"[a-z]+", f.name).group(0)
            for f in (out / "data").glob("*.parquet")
            for key in pq.read_table(f, columns=["key"]).column("key").to_pylist()
        }

    assert split_of_keys(annotated, tmp_path / "a") == split_of_keys(resharded, tmp_path / "b")


def test_statistics_on_a_hand_made_case(tmp_path: Path) -> None:
    graphs = [
        SceneGraph(
            [SGObject(0, "person", ["young", "male"]), SGObject(1, "horse", ["brown"])],
            [SGRelation(0, "riding", 1)],
        ),
        SceneGraph(
            [
                SGObject(0, "tree", ["tall"]),
                SGObject(1, "house", ["small", "red"]),
                SGObject(2, "sky", ["blue"]),
            ],
            [SGRelation(1, "surrounded by", 0), SGRelation(2, "above", 1)],
        ),
        SceneGraph([SGObject(0, "tree", ["tall"])], []),
    ]
    rows = [
        _row(i, graph, "repaired" if i == 1 else "ok", with_image=False) for i, graph in enumerate(graphs)
    ]
    rows += [
        _row(3, None, "failed", "invalid json: unexpected end", with_image=False),
        _row(4, None, "failed", "image: cannot identify image file", with_image=False),
        _row(0, graphs[0], "ok", with_image=False),  # the same key again
    ]
    source = _write_annotated(tmp_path / "annotated", [rows], with_image=False)
    stats = export(source, tmp_path / "out", proportions=(1, 0, 0))

    assert stats["rows"]["by_status"] == {"failed": 2, "ok": 3, "repaired": 1}
    assert stats["rows"]["by_split"] == {"train": 3, "validation": 0, "test": 0}
    assert stats["left_out"]["by_reason"] == {"invalid json": 1, "image": 1, "duplicate key": 1}
    per_image = stats["per_image"]
    assert per_image["objects"] == {"mean": 2.0, "median": 2.0, "p95": 2.9, "max": 3.0}
    assert per_image["relations"]["mean"] == 1.0 and per_image["relations"]["max"] == 2.0
    assert per_image["attributes"]["mean"] == pytest.approx(8 / 3, abs=1e-4)
    assert per_image["graph_length"]["mean"] == 3.0 and per_image["graph_length"]["median"] == 3.0
    assert per_image["graph_length_with_attributes"]["max"] == 9.0
    assert stats["top_names"][0] == {"value": "tree", "count": 2}
    assert {p["value"] for p in stats["top_predicates"]} == {"riding", "surrounded by", "above"}
    assert stats["top_attributes"][0] == {"value": "tall", "count": 2}
    assert stats["distinct"] == {"names": 5, "predicates": 3, "attributes": 7}
    assert stats["annotation"] == {"tiny-qwen (prompt v1)": 3}
    assert "image" not in pq.read_schema(next((tmp_path / "out" / "data").glob("*.parquet"))).names

    only_failed = _write_annotated(tmp_path / "failed", [rows[3:5]], with_image=False)
    with pytest.raises(ValueError, match="nothing to export"):
        export(only_failed, tmp_path / "out_failed")


def test_main_refuses_to_mix_with_a_previous_export(annotated: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dataset"
    args = ["--input", str(annotated), "--output", str(out), "--split-proportions", "3,1,1", "--seed", "7"]
    assert main([*args, "--rows-per-file", "10"]) == 0
    assert "exported 40 of 45 rows" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        main(args)
    before = sorted(p.name for p in (out / "data").iterdir())
    assert main([*args, "--overwrite", "--rows-per-file", "100"]) == 0
    after = sorted(p.name for p in (out / "data").iterdir())
    assert len(before) > 3 and after == [f"{split}-00000-of-00001.parquet" for split in sorted(SPLITS)]
    for proportions, message in [("1,2", "item 3: Field required"), ("1,-1,1", "non-negative")]:
        with pytest.raises(SystemExit) as exited:
            main(["--input", str(annotated), "--output", str(out), "--split-proportions", proportions])
        assert exited.value.code == 2
        assert re.search(rf"--split-proportions.*({message})", capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------- --include-failed


FAILED_ERRORS = {
    **{40 + i: "invalid json: unexpected end of input" for i in range(3)},
    **{43 + i: "decompression bomb: 50000x50000 exceeds 89478485 pixels" for i in range(2)},
}  # the `annotated` fixture's failed rows, by index


def _exported_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Every exported row by key, read back from the split files with pyarrow."""
    rows = {}
    for path in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert row["key"] not in rows, f"{row['key']} exported twice"
            rows[row["key"]] = row | {"_split": path.name.split("-")[0]}
    return rows


def test_main_include_failed_keeps_failed_rows_marked_and_default_counts_them(
    annotated: Path, tmp_path: Path, capsys
) -> None:
    """`python -m pipelines.export` leaves the 5 failed rows of the fixture out and counts them by reason; with
    --include-failed it exports all 45, the failed ones with status "failed", their error and no graph."""
    import datasets

    failed_keys = {
        row_key(f"https://example.com/images/{i}.jpg"): error for i, error in FAILED_ERRORS.items()
    }
    kept_keys = {row_key(f"https://example.com/images/{i}.jpg") for i in range(40)}
    args = ["--input", str(annotated), "--split-proportions", "3,1,1", "--rows-per-file", "8"]

    assert main([*args, "--output", str(tmp_path / "default")]) == 0
    out = capsys.readouterr().out
    assert "exported 40 of 45 rows" in out
    assert "left out 5 rows: {'invalid json': 3, 'decompression bomb': 2}" in out
    default = _exported_rows(tmp_path / "default")
    assert set(default) == kept_keys and {r["annotation"]["status"] for r in default.values()} == {
        "ok",
        "repaired",
    }
    stats = json.loads((tmp_path / "default" / "stats.json").read_text())
    assert stats["left_out"] == {"rows": 5, "by_reason": {"invalid json": 3, "decompression bomb": 2}}
    card = (tmp_path / "default" / "README.md").read_text()
    assert "| invalid json | 3 |" in card and "| decompression bomb | 2 |" in card

    assert main([*args, "--output", str(tmp_path / "all"), "--include-failed"]) == 0
    out = capsys.readouterr().out
    assert "exported 45 of 45 rows" in out and "left out 0 rows: none" in out
    exported = _exported_rows(tmp_path / "all")
    assert set(exported) == kept_keys | set(failed_keys)
    for key, error in failed_keys.items():
        row = exported[key]
        assert (row["annotation"]["status"], row["annotation"]["error"]) == ("failed", error)
        assert (
            row["scene_graph"] is None and row["sg_text"] is None and row["annotation"]["raw_output"] == "{"
        )
    for key in kept_keys:  # the rows exported either way are the same rows, in the same split
        assert exported[key] == default[key]
    stats = json.loads((tmp_path / "all" / "stats.json").read_text())
    assert stats["rows"]["by_status"] == {"failed": 5, "ok": 30, "repaired": 10}
    assert stats["rows"]["exported"] == 45 and sum(stats["rows"]["by_split"].values()) == 45
    assert stats["left_out"] == {"rows": 0, "by_reason": {}}
    assert "| - | 0 |" in (tmp_path / "all" / "README.md").read_text()

    loaded = datasets.load_dataset(str(tmp_path / "all"), cache_dir=str(tmp_path / "hf_cache"))
    statuses = Counter(row["annotation"]["status"] for split in loaded for row in loaded[split])
    assert statuses == {"ok": 30, "repaired": 10, "failed": 5}
    assert {split: loaded[split].num_rows for split in loaded} == stats["rows"]["by_split"]


# ---------------------------------------------------------------------------------------------- spatial_caption


SPATIAL_CAPTIONS: list[tuple[str, str | None, str | None]] = [  # (status, caption, error)
    ("ok", "A white rocket stands left of a tall tower. The sky fills the upper half.", None),
    ("ok", "A small cat sits in front of a large red sofa.", None),
    ("repaired", "A man stands right of a horse. Trees rise behind them.", "repaired: normalised whitespace"),
    ("ok", "A cup is below a lamp, to the left of a plate.", None),
    ("failed", None, "empty spatial caption"),
    ("ok", "Two people sit behind a table; a dog lies under it.", None),
    ("failed", None, "invalid JSON: Expecting value (char 0)"),
    ("repaired", "A bird flies above a boat on the lake.", "repaired: cut to 80 words"),
    ("ok", "A red car is parked in front of a white house.", None),
    ("failed", None, "invalid spatial caption: expected a string field 'spatial_caption', got 3"),
]


def _spatial_rows() -> list[dict[str, Any]]:
    """Rows as `pipelines.annotate --task spatial_caption` writes them: no graph, a `spatial_caption` column."""
    rows = []
    for index, (status, caption, error) in enumerate(SPATIAL_CAPTIONS):
        url = f"https://example.com/spatial/{index}.jpg"
        rows.append({
            "key": row_key(url), "url": url, "caption": f"caption {index}", "aesthetic_score": 6.0, "width": 48,
            "height": 40, "image": {"bytes": _jpeg(index), "path": f"{index}.jpg"}, "scene_graph": None,
            "sg_text": None, "spatial_caption": caption,
            "annotation": annotation_record(
                model="tiny-qwen", engine="hf", task="spatial_caption", prompt_version="v1+0123abcd", status=status,
                raw_output=json.dumps({"spatial_caption": caption}), error=error, seconds=0.1,
            ),
        })  # fmt: skip
    return rows


def test_export_of_spatial_caption_rows_carries_the_caption_column(tmp_path: Path, capsys) -> None:
    """Annotate output of the spatial_caption task (schema from `pipelines.annotate.output_schema`) exports with
    its `spatial_caption` column declared as a string feature; `datasets.load_dataset("parquet", ...)` and the
    card both read it back, row by row equal to the input; the 3 failed rows are left out and counted."""
    import datasets

    from pipelines.annotate import output_schema
    from pipelines.tasks import get_task

    schema = output_schema(get_task("spatial_caption"), images=True)
    assert schema.field("spatial_caption").type == pa.string()
    rows = _spatial_rows()
    source = tmp_path / "annotated"
    (source / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:6], schema=schema), source / "data" / "shard-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:], schema=schema), source / "data" / "shard-00001.parquet")

    out = tmp_path / "dataset"
    assert main(["--input", str(source), "--output", str(out), "--split-proportions", "1,1,1"]) == 0
    printed = capsys.readouterr().out
    assert "exported 7 of 10 rows" in printed
    assert (
        "left out 3 rows: {'empty spatial caption': 1, 'invalid JSON': 1, 'invalid spatial caption': 1}"
        in printed
    )

    expected = {row["key"]: row for row in rows if row["annotation"]["status"] != "failed"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"]["by_status"] == {"failed": 3, "ok": 5, "repaired": 2}
    assert stats["per_image"]["objects"]["max"] == 0.0 and stats["distinct"]["names"] == 0
    splits = [split for split in SPLITS if stats["rows"]["by_split"][split]]
    features = json.loads(pq.read_schema(next((out / "data").glob("*.parquet"))).metadata[b"huggingface"])
    assert features["info"]["features"]["spatial_caption"] == {"dtype": "string", "_type": "Value"}

    cache = tmp_path / "hf_cache"
    data_files = {split: str(out / "data" / f"{split}-*.parquet") for split in splits}
    for loaded in (
        datasets.load_dataset("parquet", data_files=data_files, cache_dir=str(cache)),
        datasets.load_dataset(str(out), cache_dir=str(cache)),
    ):
        assert loaded[splits[0]].features["spatial_caption"] == datasets.Value("string")
        seen = set()
        for split in splits:
            assert loaded[split].num_rows == stats["rows"]["by_split"][split]
            for row in loaded[split]:
                original = expected[row["key"]]
                assert row["spatial_caption"] == original["spatial_caption"]
                assert row["caption"] == original["caption"] and row["url"] == original["url"]
                assert row["annotation"] == original["annotation"]
                assert row["scene_graph"] is None and row["sg_text"] is None
                assert isinstance(row["image"], Image.Image) and row["image"].size == (48, 40)
                seen.add(row["key"])
        assert seen == set(expected)


# ---------------------------------------------------------------------------------------------- small data: splits


def test_fill_empty_splits_on_a_hand_made_case() -> None:
    """Proportions 0.6/0.2/0.2 cut [0, 1) at 0.6 and 0.8. All three rows were hashed into train: validation
    [0.6, 0.8) takes the nearest row (0.5, at 0.1 from it; 0.95 is 0.15 away), then test [0.8, 1) the nearest
    of what train can still give (0.95, inside it)."""
    points = np.array([0.1, 0.5, 0.95])
    keyed = np.zeros(3, np.int8)
    assert fill_empty_splits(points, keyed, (0.6, 0.2, 0.2)).tolist() == [0, 1, 2]
    assert keyed.tolist() == [0, 0, 0]  # the input is left as it is
    # 2 rows, 3 splits: validation (the first of the equal proportions) gets one, train keeps one, test none
    assert fill_empty_splits(points[:2], keyed[:2], (0.6, 0.2, 0.2)).tolist() == [0, 1]
    # a split of proportion 0 stays empty; test [0.5, 1) takes 0.3, the nearest
    assert fill_empty_splits(np.array([0.1, 0.2, 0.3]), keyed, (1, 0, 1)).tolist() == [0, 0, 2]
    # the largest proportion first: test [0.6, 1) takes 0.3, then validation [0.5, 0.6) takes 0.2
    assert fill_empty_splits(np.array([0.1, 0.2, 0.3]), keyed, (0.5, 0.1, 0.4)).tolist() == [0, 1, 2]
    # nothing empty: nothing moves; one row: nothing to give
    assert fill_empty_splits(points, np.array([0, 1, 2]), (8, 1, 1)).tolist() == [0, 1, 2]
    assert fill_empty_splits(points[:1], keyed[:1], (0.6, 0.2, 0.2)).tolist() == [0]


def test_balanced_splits_leave_no_split_empty_and_stay_keyed() -> None:
    # 3 keys that LAION-SG's proportions (89% train) all hash into train: a sha256 point below 480005/540005
    keys = [row_key(f"https://example.com/{i}") for i in range(50)]
    train_bound = DEFAULT_PROPORTIONS[0] / sum(DEFAULT_PROPORTIONS)
    in_train = [
        k
        for k in keys
        if int.from_bytes(hashlib.sha256(f"0:{k}".encode()).digest()[:8], "big") / 2**64 < train_bound
    ][:3]
    assert assign_splits(in_train).tolist() == [0, 0, 0]
    splits = balanced_splits(in_train)
    assert sorted(splits.tolist()) == [0, 1, 2]
    by_key = dict(zip(in_train, splits.tolist(), strict=True))
    for order in ([2, 0, 1], [1, 2, 0]):  # the same key gets the same split whatever the order
        assert balanced_splits([in_train[i] for i in order]).tolist() == [by_key[in_train[i]] for i in order]
    many = [row_key(f"https://example.com/{i}") for i in range(20_000)]
    assert np.array_equal(balanced_splits(many), assign_splits(many))  # on real sizes the keyed rule alone


def test_export_of_three_rows_fills_every_split(tmp_path: Path, capsys) -> None:
    rows = [_row(i, _graph(i), "ok", with_image=False) for i in range(3)]
    source = _write_annotated(tmp_path / "annotated", [rows], with_image=False)
    for proportions in ("0.6,0.2,0.2", "480005,10000,50000"):
        out = tmp_path / f"out-{proportions}"
        assert main(["--input", str(source), "--output", str(out), "--split-proportions", proportions]) == 0
        assert "{'train': 1, 'validation': 1, 'test': 1}" in capsys.readouterr().out
        assert sorted(p.name for p in (out / "data").iterdir()) == [
            f"{split}-00000-of-00001.parquet" for split in sorted(SPLITS)
        ]
        stats = json.loads((out / "stats.json").read_text())
        keyed = assign_splits([r["key"] for r in rows], [float(p) for p in proportions.split(",")])
        assert stats["split"]["moved_to_fill_empty_splits"] == 3 - len(set(keyed.tolist()))


# ---------------------------------------------------------------------------------------------- dataset card


def test_dataset_card_parses_back_and_matches_the_export(tmp_path: Path) -> None:
    from datasets import Features
    from huggingface_hub import DatasetCard

    local_model = tmp_path / "checkpoints" / "qwen-local"
    rows = [_row(i, _graph(i), "ok" if i % 3 else "repaired") for i in range(12)]
    for row in rows[:4]:
        row["annotation"] = {**row["annotation"], "model": str(local_model), "prompt_version": "v2+abc123"}
    rows.append(_row(12, None, "failed", f"shard {tmp_path}/broken.tar unreadable: truncated"))
    source = _write_annotated(tmp_path / "annotated", [rows])
    out = tmp_path / "dataset"
    export(source, out, proportions=(0.5, 0.25, 0.25), rows_per_file=3, license="cc-by-4.0")

    text = (out / "README.md").read_text()
    for forbidden in ("/tmp", str(tmp_path), "TODO", "{{", "{%", "DIR"):
        assert forbidden not in text, forbidden
    card = DatasetCard.load(out / "README.md")
    data = card.data
    assert data.license == "cc-by-4.0" and data.language == ["en"] and data.size_categories == ["n<1K"]
    assert data.pretty_name and set(data.task_categories) == {"text-to-image", "image-to-text"}

    files = {split: sorted((out / "data").glob(f"{split}-*.parquet")) for split in SPLITS}
    rows_by_split = {
        split: sum(pq.ParquetFile(f).metadata.num_rows for f in fs) for split, fs in files.items()
    }
    assert sum(rows_by_split.values()) == 12 and all(rows_by_split.values())
    assert data.configs == [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in SPLITS],
        }
    ]
    info = data.dataset_info
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == rows_by_split
    parquet_schema = pq.read_schema(files["train"][0])
    features = Features._from_yaml_list(info["features"])
    assert features == Features.from_arrow_schema(parquet_schema)
    assert list(features) == parquet_schema.names
    assert [f.type for f in features.arrow_schema] == [f.type for f in parquet_schema]

    body = card.text
    assert "| qwen-local (local checkpoint) | hf | scene_graph | v2+abc123 | 4 |" in body
    assert "| tiny-qwen | hf | scene_graph | v1 | 8 |" in body
    assert "| shard broken.tar unreadable | 1 |" in body
    for split in SPLITS:
        assert (
            f"| {split} | {rows_by_split[split]} | `data/{split}-*.parquet` ({len(files[split])}) |" in body
        )
    assert "@article{li2024laion" in body and "arXiv:2412.08580" in body and "`cc-by-4.0` license" in body


@pytest.mark.parametrize(
    ("rows", "category"),
    [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (9_999, "1K<n<10K"), (540_005, "100K<n<1M"),
     (10**9, "1B<n<10B"), (10**12, "n>1T")],
)  # fmt: skip
def test_size_category(rows: int, category: str) -> None:
    assert size_category(rows) == category


# ---------------------------------------------------------------------------------------------- plots


def test_count_plots_have_integer_ticks() -> None:
    """With at most 2 of anything the default locator would tick 0.25, 0.5, ...; every count axis ticks
    integers only."""
    stats = ExportStats()
    graphs = [_graph(0), _graph(1), _graph(2), _graph(1)]
    stats.add_graphs(pa.array([scene_graph_to_arrow(g) for g in graphs], type=SCENE_GRAPH_TYPE))
    built = figures(stats)
    assert set(built) == {"per_image.png", "graph_length.png", "top_names.png", "top_predicates.png",
                          "top_attributes.png"}  # fmt: skip
    checked = 0
    for name, figure in built.items():
        for axis in figure.axes:
            for ticks in (axis.get_xticks(), axis.get_yticks()):
                assert len(ticks) and all(float(t).is_integer() for t in ticks), (name, ticks)
                checked += 1
        assert len(figure.axes[0].get_xticks()) >= 3, name  # a count axis with several ticks
    assert checked == 2 * 7  # per_image has 3 axes, the others 1
    relations = built["per_image.png"].axes[1]
    assert [p.get_height() for p in relations.patches] == [1, 3]  # images with 0 and with 1 relation


# ---------------------------------------------------------------------------------------------- bounded memory


def test_per_image_summary_from_histograms_is_numpys() -> None:
    """stats.json's per-image figures come from histograms (memory per value, not per image); they equal numpy's
    mean (rounded), median, 95th percentile and max of the values themselves, float for float."""
    from pipelines.export.stats import _summary

    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 40 if trial % 2 else 3000))
        values = rng.geometric(0.3, n) - 1 if trial % 3 == 0 else rng.integers(0, int(rng.integers(1, 30)), n)
        assert _summary(np.bincount(values)) == {
            "mean": round(float(values.mean()), 4),
            "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)),
            "max": float(values.max()),
        }, values
    assert _summary(np.zeros(0, np.int64)) == {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}


def test_duplicate_keys_first_exportable_row_wins_in_file_order(tmp_path: Path) -> None:
    """The digest-based duplicate detection decides as a row-by-row pass with a set of exported keys would: a row
    whose key was exported before is a duplicate (whatever its status); else a failed row is left out for its
    reason and does not claim the key, so a later ok row of that key is exported."""
    from pipelines.export.job import _first_kept
    from pipelines.export.splits import key_digests

    rng = np.random.default_rng(1)
    for size in (0, 1, 2, 50, 2_000):
        keys = [f"k{k}" for k in rng.integers(0, max(1, size // 3), size)]
        eligible = rng.random(size) < 0.6
        seen, kept, duplicate = set(), [], []
        for key, ok in zip(keys, eligible.tolist(), strict=True):
            duplicate.append(key in seen)
            kept.append(ok and key not in seen)
            if kept[-1]:
                seen.add(key)
        got_kept, got_duplicate = _first_kept(key_digests(keys, seed=5), eligible)
        assert got_kept.tolist() == kept and got_duplicate.tolist() == duplicate

    failed_first = _row(0, None, "failed", "timeout: no answer", with_image=False)
    rows = [failed_first, _row(0, _graph(0), "ok", with_image=False), _row(1, _graph(1), "ok", with_image=False)]
    rows += [_row(1, None, "failed", "timeout: no answer", with_image=False)]  # after its key was exported
    source = _write_annotated(tmp_path / "annotated", [rows[:2], rows[2:]], with_image=False)
    stats = export(source, tmp_path / "out", proportions=(1, 0, 0))
    assert stats["rows"]["exported"] == 2
    assert stats["left_out"]["by_reason"] == {"timeout": 1, "duplicate key": 1}
    exported = _exported_rows(tmp_path / "out")
    assert {row["annotation"]["status"] for row in exported.values()} == {"ok"}
