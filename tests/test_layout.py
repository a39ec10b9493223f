"""`schemas.layout.find_split_files` finds the splits `datasets.load_dataset` finds, in every layout it reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.layout import find_split_files, split_file_name

LAYOUTS = {
    "export": {split_file_name("train", 0, 2): 3, split_file_name("train", 1, 2): 2, "data/x.txt": 0,
               split_file_name("validation", 0, 1): 4, split_file_name("test", 0, 1): 1},
    "directories": {"train/a.parquet": 2, "train/b.parquet": 1, "val/c.parquet": 5},
    "file names": {"train.parquet": 6, "dev.parquet": 2, "test.parquet": 3},
    "no split names": {"rows/a.parquet": 2, "rows/b.parquet": 3},
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_splits_are_those_datasets_loads(layout: str, tmp_path: Path) -> None:
    import datasets

    for i, (name, rows) in enumerate(LAYOUTS[layout].items()):
        path = tmp_path / ("data/" + name if name.endswith(".parquet") and layout == "export" else name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):
            pq.write_table(pa.table({"key": [f"{i}-{r}" for r in range(rows)]}), path)
        else:
            path.write_text("not data")
    found = find_split_files(tmp_path)
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path), cache_dir=str(tmp_path / ".cache"))
    assert set(found) == set(loaded)
    for split, files in found.items():
        assert files == sorted(files) and all(f.suffix == ".parquet" for f in files)
        assert sorted(k for f in files for k in pq.read_table(f)["key"].to_pylist()) == sorted(loaded[split]["key"])


def test_no_parquet_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Parquet files under"):
        find_split_files(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no Parquet files under"):
        find_split_files(tmp_path / "missing")
