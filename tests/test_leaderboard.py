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


# ---------------------------------------------------------------------- hostile text in every cell

HOSTILE_MODEL = "evil\n<script>alert(1)</script>\r\n| x | y |\n[click](javascript:alert(1)) ![i](x.png) `code` *b* _i_ ~~s~~\\"
HOSTILE_METRIC = "<img src=x onerror=alert(1)>|\nnew"
HOSTILE_HASH = "<b>`|\n# x</b>" + "f" * 52
HOSTILE_VERSION = "1.0\n<script>v</script>"


def hostile_record() -> BenchmarkResult:
    base = record(HOSTILE_MODEL, 0.5, 20.0, version=HOSTILE_VERSION, content_hash=HOSTILE_HASH)
    return base.model_copy(
        update={
            "model": base.model.model_copy(update={"adapter": "[a](javascript:x)\n<i>"}),
            "metrics": {**base.metrics, HOSTILE_METRIC: 1.25},
        }
    )


class _Parsed:
    """Tags, attributes and table cells of an HTML text, from the standard library's parser (``<br>`` -> "\\n")."""

    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self.headings: list[str] = []
        parsed = self

        class Parser(HTMLParser):
            cell: list[str] | None = None
            heading: list[str] | None = None

            def handle_starttag(self, tag, attrs):
                parsed.tags.append((tag, dict(attrs)))
                if tag == "tr":
                    parsed.rows.append([])
                elif tag in ("td", "th"):
                    self.cell = []
                elif tag == "h2":
                    self.heading = []
                elif tag == "br":
                    self.handle_data("\n")

            def handle_endtag(self, tag):
                if tag in ("td", "th") and self.cell is not None:
                    parsed.rows[-1].append("".join(self.cell))
                    self.cell = None
                elif tag == "h2" and self.heading is not None:
                    parsed.headings.append("".join(self.heading))
                    self.heading = None

            def handle_data(self, data):
                for part in (self.cell, self.heading):
                    if part is not None:
                        part.append(data)

        Parser(convert_charrefs=True).feed(text)

    def assert_inert(self, own_scripts: int = 0) -> None:
        names = [name for name, _ in self.tags]
        assert names.count("script") == own_scripts
        assert not {"img", "a", "b", "i", "iframe"} & set(names)
        assert not [attrs for _, attrs in self.tags if "href" in attrs or "src" in attrs]
        assert not [key for _, attrs in self.tags for key in attrs if key.startswith("on")]


def test_markdown_escapes_every_cell():
    markdown_it = pytest.importorskip("markdown_it")
    records = [hostile_record(), record("model-a", 0.2, 30.0, version=HOSTILE_VERSION, content_hash=HOSTILE_HASH)]
    text = render_markdown(records)
    # one line per table row: no newline of a record broke a row, no pipe added a cell
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and all(line.endswith("|") for line in table)
    # the oracle: CommonMark + tables, raw HTML allowed, so anything left unescaped would come out as a tag
    page = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    parsed = _Parsed(page)
    parsed.assert_inert()
    header, *rows = parsed.rows
    assert header[-1] == HOSTILE_METRIC.replace("\r\n", "\n") + " ↑" and len(header) == 4 + 9
    assert [len(row) for row in rows] == [len(header)] * 2
    assert rows[0][1] == HOSTILE_MODEL.replace("\r\n", "\n")  # the text itself, nothing lost
    assert rows[0][2] == "[a](javascript:x)\n<i>"
    assert rows[0][-1] == "1.25" and rows[1][-1] == "–"
    assert parsed.headings == [f"CompSG-Bench {HOSTILE_VERSION} ({HOSTILE_HASH[:12]}, 3 samples)"]


def test_html_escapes_every_cell():
    records = [hostile_record(), record("model-a", 0.2, 30.0, version=HOSTILE_VERSION, content_hash=HOSTILE_HASH)]
    page = render_html(records)
    parsed = _Parsed(page)
    parsed.assert_inert(own_scripts=1)
    assert "<img" not in page and "<script>alert" not in page and "<b>" not in page
    header = parsed.rows[0]
    assert header[-1] == HOSTILE_METRIC + " ↑"
    entries = [row for row in parsed.rows[1:] if len(row) == len(header)]
    assert [row[1] for row in entries] == [HOSTILE_MODEL, "model-a"]
    assert entries[0][2] == "[a](javascript:x)\n<i>"
    assert parsed.headings == [f"CompSG-Bench {HOSTILE_VERSION} ({HOSTILE_HASH[:12]}, 3 samples)"]
    title = next(attrs["title"] for name, attrs in parsed.tags if name == "td" and "title" in attrs)
    assert title.startswith("run ") and "\n" not in title
