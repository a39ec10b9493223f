"""Smoke run of `bench/export_stream.py` at a few thousand rows: it exits 0, every figure it prints is finite and
positive, and the ratios and per-row growth it prints agree with the figures beside them (printed values are
rounded, so the checks allow the rounding)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import export_stream  # noqa: E402

from schemas import row_schema  # noqa: E402


def test_synthetic_input_is_annotated_shards(tmp_path: Path) -> None:
    source = export_stream.build_input(tmp_path / "input", 2_500, image_bytes=16)
    files = sorted((source / "data").glob("*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.num_rows == 2_500 and table.schema.equals(row_schema(), check_metadata=False)
    rows = table.to_pylist()
    assert all(len(row["key"]) == 40 and len(row["image"]["bytes"]) == 16 for row in rows)
    failed = [row for row in rows if row["annotation"]["status"] == "failed"]
    assert failed and all(row["scene_graph"] is None and row["annotation"]["error"] for row in failed)
    assert len({row["key"] for row in rows}) < len(rows)  # some keys repeat
    assert export_stream.build_input(tmp_path / "again", 2_500, image_bytes=16) and pq.read_table(
        tmp_path / "again" / "data"
    ).equals(table)  # deterministic


def test_export_stream_prints_consistent_figures(tmp_path: Path, capsys) -> None:
    assert export_stream.main(
        ["--rows", "3000", "--baseline-rows", "1000", "--image-bytes", "64", "--work", str(tmp_path)]
    ) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["machine"]["cpus"] >= 1 and printed["image_bytes"] == 64
    for name, rows in (("baseline", 1000), ("large", 3000)):
        run = printed[name]
        assert run["rows"] == rows and 0 < run["exported"] <= rows
        for figure in ("seconds", "rows_per_s", "peak_rss_mib", "after_import_rss_mib", "input_mib"):
            assert math.isfinite(run[figure]) and run[figure] > 0, (name, figure)
        assert run["rows_per_s"] == pytest.approx(rows / run["seconds"], rel=2e-3)
        assert run["peak_rss_mib"] >= run["after_import_rss_mib"]
        assert run["export_rss_mib"] == pytest.approx(run["peak_rss_mib"] - run["after_import_rss_mib"], abs=0.11)
    baseline, large, ratios = printed["baseline"], printed["large"], printed["ratios"]
    assert ratios["peak_rss"] == pytest.approx(large["peak_rss_mib"] / baseline["peak_rss_mib"], abs=2e-3)
    assert ratios["rows_per_s"] == pytest.approx(large["rows_per_s"] / baseline["rows_per_s"], abs=2e-3)
    growth = (large["peak_rss_mib"] - baseline["peak_rss_mib"]) * 2**20 / 2000
    assert printed["peak_rss_bytes_per_row"] == pytest.approx(growth, abs=0.11)
    assert not list(tmp_path.iterdir())  # the inputs and outputs are removed
