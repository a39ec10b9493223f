"""Leaderboard rendering (Markdown + self-contained HTML, opened in headless Chromium) on hand-made records."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from benchmark.leaderboard import load_records, main, render_html, render_markdown
from schemas import BenchmarkInfo, BenchmarkResult, GenerationSettings, ModelInfo, Provenance

EVIL = "<script>document.title='pwned'</script>evil|model"


def record(model_id: str, sg_iou: float, fid: float, *, version: str = "1.0", content_hash: str = "a" * 64) -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=BenchmarkInfo(version=version, content_hash=content_hash, n_samples=3),
        model=ModelInfo(adapter="diffusers-caption", model_id=model_id, weights_hash="b" * 64, conditioning="caption"),
        generation=GenerationSettings(seed=42, images_per_sample=1, num_inference_steps=2, guidance_scale=5.0, height=64, width=64),
        metrics={
            "sg_iou": sg_iou,
            "entity_iou": 0.5,
            "relation_iou": 0.25,
            "fid": fid,
            "kid_mean": -0.01,
            "clip_t": 20.0,
            "clip_i": 0.7,
            "cmmd": 1.5,
        },
        metric_details={"fid": {"extractor": "x<y>"}},
        provenance=Provenance(
            package_version="0.1.0",
            packages={"torch": "2", "git": "abc123"},
            hardware={"cpu_count": 2, "cuda_devices": []},
            wall_time_s=1.5,
            created_at="2025-01-01T00:00:00+00:00",
            config={"model": model_id},
        ),
    )


RECORDS = [record("model-a", 0.2, 30.0), record(EVIL, 0.4, 25.0), record("model-c", 0.3, 40.0)]


def test_markdown_sorted_and_escaped():
    text = render_markdown(RECORDS)
    rows = [line for line in text.splitlines() if re.match(r"^\| \d", line)]
    assert [row.split(" | ")[1] for row in rows][0].startswith("&lt;script&gt;")
    assert [row.split(" | ")[1] for row in rows][1:] == ["model-c", "model-a"]
    assert "<script>" not in text and "evil\\|model" in text
    assert "SG-IoU ↑" in text and "FID ↓" in text


def test_separate_tables_per_benchmark_set():
    text = render_markdown([*RECORDS, record("other", 0.9, 1.0, version="2.0", content_hash="c" * 64)])
    assert text.count("## CompSG-Bench") == 2


def test_html_is_escaped_and_self_contained():
    page = render_html(RECORDS)
    assert "<script>document" not in page
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only our own inline script
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # nothing fetched from anywhere
    assert page.count("<svg") == 8 + 1  # one bar chart per metric + the scatter plot
    assert "Content-Security-Policy" in page


def test_render_cli_reads_records(tmp_path, capsys):
    paths = []
    for i, r in enumerate(RECORDS):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        (run_dir / "result.json").write_text(r.to_json())
        paths.append(str(run_dir if i else run_dir / "result.json"))
    assert load_records(paths) == RECORDS
    assert main(["render", *paths, "--output", str(tmp_path / "site")]) == 0
    assert (tmp_path / "site" / "leaderboard.md").read_text() == render_markdown(RECORDS)
    assert (tmp_path / "site" / "index.html").read_text() == render_html(RECORDS)


def dump_dom(page) -> str:
    """The DOM of a local HTML file after its scripts ran, from headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "chromium is not installed (`make install` as root, or apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing browser there is a broken install, not a skip
        pytest.skip(message + "; the HTML page was not opened in a browser")
    profile = page.parent / "chromium-profile"
    done = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--dump-dom", page.resolve().as_uri(),
        ],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    return done.stdout


def check_page_in_browser(page, expected_order: list[str]) -> None:
    """The table is in the DOM after the inline script ran, sorted by SG-IoU, with no injected script run."""
    dom = dump_dom(page)
    assert 'data-ready="1"' in dom, "the inline script did not run"
    assert "<title>CompSG-Bench leaderboard</title>" in dom and "pwned" not in dom.split("</title>")[0]
    assert re.search(r'<table class="board" data-sorted-by="\d+" data-sort-dir="-1"', dom)
    models = re.findall(r'<tr class="entry"><td>(\d+)</td><td title="[^"]*">([^<]*)</td>', dom)
    assert [int(rank) for rank, _ in models] == list(range(1, len(expected_order) + 1))
    assert [name for _, name in models] == expected_order


def test_html_in_headless_chromium(tmp_path):
    html = render_html(RECORDS)
    # shuffle the rendered rows (the page is pre-sorted) to see the page's own script sort them by SG-IoU
    head, *bodies = html.split("<tbody>")
    last, tail = bodies[-1].split("</table>", 1)
    bodies[-1] = last
    page = tmp_path / "index.html"
    page.write_text("<tbody>".join([head, *bodies[::-1]]) + "</table>" + tail, encoding="utf-8")
    escaped = "&lt;script&gt;document.title='pwned'&lt;/script&gt;evil|model"
    check_page_in_browser(page, [escaped, "model-c", "model-a"])
