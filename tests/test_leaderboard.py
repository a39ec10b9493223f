"""Leaderboard rendering (Markdown + self-contained HTML, opened in headless Chromium) on hand-made records."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmark.leaderboard import load_entries, load_records, main, render_html, render_markdown
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
    site = tmp_path / "site"
    assert main(["render", *paths, "--output", str(site)]) == 0
    # the files hold what the render functions give for these records, each with a link to the file it came from
    entries = load_entries(paths)
    assert [e.record for e in entries] == RECORDS and [e.result_file for e in entries] == [
        tmp_path / "run0" / "result.json", tmp_path / "run1" / "result.json", tmp_path / "run2" / "result.json"
    ]  # fmt: skip
    assert (site / "leaderboard.md").read_text() == render_markdown(entries, base=site)
    assert (site / "index.html").read_text() == render_html(entries, base=site)
    for text in ((site / "leaderboard.md").read_text(), (site / "index.html").read_text()):
        for i in range(3):
            assert f"../run{i}/result.json" in text
    assert not (site / "samples").exists()  # no run directory holds images: no grids


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


def check_page_in_browser(
    page, expected_order: list[str], ranks: list[int] | None = None, track: str = "compsg", sorted_by: str = "SG-IoU"
) -> None:
    """The table of `track` is in the DOM after the inline script ran, sorted by the column `sorted_by` (higher
    first), with no injected script run; the ranks are `ranks` (default 1, 2, 3...: no ties)."""
    dom = dump_dom(page)
    assert 'data-ready="1"' in dom, "the inline script did not run"
    assert "<title>CompSG-Bench leaderboard</title>" in dom and "pwned" not in dom.split("</title>")[0]
    section = "".join(re.findall(rf'<section class="track" data-track="{track}">(.*?)</section>', dom, re.DOTALL))
    sorted_col = re.search(r'<table class="board" data-sorted-by="(\d+)" data-sort-dir="-1"', section)
    headers = re.findall(r"<th>(.*?)</th>", section.split("</thead>")[0])
    assert sorted_col and sorted_by in headers[int(sorted_col.group(1))], (sorted_col, headers)
    models = re.findall(r'<tr class="entry"><td>(\d+)</td><td title="[^"]*">([^<]*)</td>', section)
    assert [int(rank) for rank, _ in models] == (ranks or list(range(1, len(expected_order) + 1)))
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


# ---------------------------------------------------------------------- tracks


def with_questions(base: BenchmarkResult, overall: float, relation: float | None) -> BenchmarkResult:
    scores = {"question_score": overall, "question_entity": 0.9, "question_attribute": 0.5}
    scores |= {} if relation is None else {"question_relation": relation}
    return base.model_copy(update={"metrics": base.metrics | scores})


# SG-IoU order: c, b, a; question-score order: a, c, b (and b has no relation questions)
TRACK_RECORDS = [
    with_questions(record("model-a", 0.2, 30.0), 0.8, 0.7),
    with_questions(record("model-b", 0.3, 25.0), 0.1, None),
    with_questions(record("model-c", 0.4, 40.0), 0.5, 0.2),
]


def test_markdown_has_a_table_per_track_each_ranked_by_its_own_score():
    text = render_markdown([*TRACK_RECORDS, record("model-d", 0.9, 1.0)])
    main_part, question_part = text.split("### Question track")
    assert "### Scene-graph IoUs and image metrics" in main_part and "Q-Score" not in main_part
    order = [row.split(" | ")[1] for row in main_part.splitlines() if re.match(r"^\| \d", row)]
    assert order == ["model-d", "model-c", "model-b", "model-a"]
    rows = [row.split(" | ") for row in question_part.splitlines() if re.match(r"^\| \d", row)]
    header = next(line for line in question_part.splitlines() if line.startswith("| # "))
    assert header.split(" | ")[4:] == ["Q-Score ↑", "Q-Entity ↑", "Q-Attribute ↑", "Q-Relation ↑ |"]
    # model-d has no question scores: not in that table; model-b has no relation score: a dash
    assert [row[1] for row in rows] == ["model-a", "model-c", "model-b"]
    assert [row[0] for row in rows] == ["| 1", "| 2", "| 3"]
    assert rows[0][4] == "**0.8**" and rows[2][7] == "– |"
    # a record with question scores only is in the question table only
    only = record("model-q", 0.0, 0.0).model_copy(update={"metrics": {"question_score": 0.9}})
    main_part, question_part = render_markdown([*TRACK_RECORDS, only]).split("### Question track")
    assert "model-q" not in main_part and "| 1 | model-q |" in question_part


def test_html_question_track_in_headless_chromium(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(render_html(TRACK_RECORDS), encoding="utf-8")
    assert page.read_text().count("<svg") == 8 + 1 + 4  # compsg bars + scatter, then one bar per question column
    check_page_in_browser(page, ["model-c", "model-b", "model-a"])
    check_page_in_browser(page, ["model-a", "model-c", "model-b"], track="questions", sorted_by="Q-Score")


def spatial_record(model_id: str, visor: float) -> BenchmarkResult:
    """A spatial-track record: its own benchmark set (the prompt set) and VISOR's keys only."""
    base = record(model_id, 0.0, 0.0, content_hash="d" * 64)
    keys = ("oa", "visor_uncond", "visor_cond", "visor_1", "visor_2", "visor_3", "visor_4")
    return base.model_copy(
        update={
            "benchmark": base.benchmark.model_copy(update={"name": "VISOR-SR2D-spatial", "n_samples": 4}),
            "metrics": {key: visor if key == "visor_uncond" else 0.5 for key in keys},
        }
    )


def test_html_sections_per_benchmark_set_and_track_in_headless_chromium(tmp_path):
    """CompSG-Bench (two tracks), a long-prompt set and the spatial track: a section each, every table sorted by
    its own first column in the browser."""
    long_prompt = with_questions(record("model-long", 0.1, 50.0, content_hash="e" * 64), 0.6, 0.4)
    long_prompt = long_prompt.model_copy(
        update={"benchmark": long_prompt.benchmark.model_copy(update={"name": "CompSG-Bench-paragraph"})}
    )
    records = [*TRACK_RECORDS, long_prompt, spatial_record("spatial-a", 0.2), spatial_record("spatial-b", 0.7)]
    page = tmp_path / "index.html"
    page.write_text(render_html(records), encoding="utf-8")
    text = page.read_text()
    assert [h for h in re.findall(r"<h2>([^<]*?) ", text)] == ["CompSG-Bench", "CompSG-Bench-paragraph", "VISOR-SR2D-spatial"]
    assert text.count("data-track='compsg'") == 2 and text.count("data-track='questions'") == 2
    assert text.count("data-track='spatial'") == 1
    check_page_in_browser(page, ["spatial-b", "spatial-a"], track="spatial", sorted_by="VISOR")
    # the question tables of both sets, each ranked on its own
    questions = ["model-a", "model-c", "model-b", "model-long"]
    check_page_in_browser(page, questions, [1, 2, 3, 1], track="questions", sorted_by="Q-Score")


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


# ---------------------------------------------------------------------- ranks, highlights, spreads, names


def changed(base: BenchmarkResult, *, metrics: dict | None = None, details: dict | None = None, config: dict | None = None) -> BenchmarkResult:
    """A copy of `base` with some metrics, the metric details and the run configuration replaced."""
    update: dict = {"metrics": {**base.metrics, **(metrics or {})}}
    if details is not None:
        update["metric_details"] = details
    if config is not None:
        update["provenance"] = base.provenance.model_copy(update={"config": {**base.provenance.config, **config}})
    return base.model_copy(update=update)


# SG-IoU 0.40001 and 0.4 both show as "0.4" (4 significant digits): one rank, both highlighted; 0.39994 shows as
# "0.3999", a rank of its own. FID 25 and 25.00001 both show as "25", the best (lowest) FID: both highlighted.
TIED = [
    changed(record("a", 0.40001, 25.0), metrics={"clip_t": 21.0}),
    changed(record("b", 0.4, 25.00001), metrics={"clip_t": 20.0}),
    changed(record("c", 0.3, 40.0), metrics={"clip_t": 20.0}),
    changed(record("d", 0.39994, 30.0), metrics={"clip_t": 20.0}),
]


def markdown_rows(text: str) -> list[list[str]]:
    return [line.strip("|").strip().split(" | ") for line in text.splitlines() if re.match(r"^\| \d", line)]


def test_ties_share_a_rank_and_the_best_highlight_in_markdown():
    text = render_markdown(TIED[::-1])
    header = next(line for line in text.splitlines() if line.startswith("| #")).strip("|").strip().split(" | ")
    column = {name: i for i, name in enumerate(header)}
    rows = markdown_rows(text)
    assert [(row[0], row[1]) for row in rows] == [("1", "a"), ("1", "b"), ("3", "d"), ("4", "c")]
    assert [row[column["SG-IoU ↑"]] for row in rows] == ["**0.4**", "**0.4**", "0.3999", "0.3"]
    assert [row[column["FID ↓"]] for row in rows] == ["**25**", "**25**", "30", "40"]
    assert [row[column["CLIP-T ↑"]] for row in rows] == ["**21**", "20", "20", "20"]
    assert {row[column["Entity-IoU ↑"]] for row in rows} == {"0.5"}  # all equal: nothing to highlight


def html_cells(page: str) -> list[list[tuple[dict, str]]]:
    """The entry rows of the leaderboard table: (attributes, text) of each cell."""
    from html.parser import HTMLParser

    rows: list[list[tuple[dict, str]]] = []

    class Parser(HTMLParser):
        cell: list | None = None
        in_entry = False

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.in_entry = dict(attrs).get("class") == "entry"
                if self.in_entry:
                    rows.append([])
            elif tag == "td" and self.in_entry:
                self.cell = [dict(attrs), ""]
            elif tag == "br" and self.cell is not None:
                self.cell[1] += "\n"

        def handle_endtag(self, tag):
            if tag == "td" and self.cell is not None:
                rows[-1].append(tuple(self.cell))
                self.cell = None
            elif tag == "tr":
                self.in_entry = False

        def handle_data(self, data):
            if self.cell is not None:
                self.cell[1] += data

    Parser(convert_charrefs=True).feed(page)
    return rows


def test_ties_share_a_rank_and_the_best_highlight_in_html():
    rows = html_cells(render_html(TIED[::-1]))
    assert [(row[0][1], row[1][1]) for row in rows] == [("1", "a"), ("1", "b"), ("3", "d"), ("4", "c")]
    sg_iou, fid = rows[0][4], rows[0][7]
    assert sg_iou[0]["data-shown"] == "0.4" and float(sg_iou[0]["data-value"]) == 0.40001
    best = [[cell[1] for cell in row if "best" in cell[0].get("class", "").split()] for row in rows]
    assert best == [["0.4", "25", "21"], ["0.4", "25"], [], []]
    assert fid[1] == "25"


def test_ties_keep_their_rank_when_the_page_sorts_in_a_browser(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(render_html(TIED), encoding="utf-8")
    dom = dump_dom(page)
    assert 'data-ready="1"' in dom
    ranks = re.findall(r'<tr class="entry"><td>(\d+)</td><td title="[^"]*">([^<]*)</td>', dom)
    assert ranks == [("1", "a"), ("1", "b"), ("3", "d"), ("4", "c")]


def test_display_name_is_shown_escaped_with_the_model_id():
    markdown_it = pytest.importorskip("markdown_it")
    name = "SDXL-SG <b>ours</b> | *v2*"
    named = changed(record("model-x", 0.6, 20.0), config={"display_name": name})
    blank = changed(record("model-y", 0.5, 20.0), config={"display_name": "  "})
    not_text = changed(record("model-z", 0.4, 20.0), config={"display_name": 5})
    records = [named, blank, not_text]
    parsed = _Parsed(markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(render_markdown(records)))
    parsed.assert_inert()
    assert [row[1] for row in parsed.rows[1:]] == [f"{name}\nmodel-x", "model-y", "model-z"]
    page = render_html(records)
    _Parsed(page).assert_inert(own_scripts=1)
    assert [row[1][1] for row in html_cells(page)] == [f"{name}\nmodel-x", "model-y", "model-z"]
    assert "<title>SDXL-SG &lt;b&gt;ours&lt;/b&gt; | *v2*</title>" in page  # the charts name the run too


def test_spread_is_a_confidence_interval_of_a_mean_or_kids_std():
    from scipy import stats

    rng = np.random.default_rng(0)
    scores = rng.uniform(15, 30, 12)  # CLIP-T per pair
    low, high = stats.norm.interval(0.95, loc=scores.mean(), scale=stats.sem(scores))
    base = changed(record("m", 0.5, 20.0), metrics={"clip_t": float(scores.mean())})
    with_spread = changed(
        base,
        details={
            # as benchmark.run records them: CLIPScore's population std and pair count, KID's std over subsets
            "clip_t": {"clip_t_std": float(scores.std()), "n_pairs": 12},
            "kid": {"kid_std": 0.00123},
            "fid": {"n_real": 3},
        },
    )
    hostile = changed(
        base,
        details={"clip_t": {"clip_t_std": float(scores.std()), "n_pairs": 1}, "kid": {"kid_std": True}, "clip_i": {"clip_i_std": "0.1", "n_pairs": 9}},
    )
    nan = changed(base, details={"kid": {"kid_std": math.nan}, "clip_t": {"clip_t_std": 1.0, "n_pairs": "12"}})
    text = render_markdown([with_spread, hostile, nan])
    header = next(line for line in text.splitlines() if line.startswith("| #")).strip("|").strip().split(" | ")
    rows = markdown_rows(text)
    clip_t, kid, fid = (header.index(label) for label in ("CLIP-T ↑", "KID ↓", "FID ↓"))
    shown_mean = f"{scores.mean():.4g}"
    assert rows[0][clip_t] == f"{shown_mean} ± {(high - low) / 2:.4g}"
    assert rows[0][kid] == "-0.01 ± 0.00123" and rows[0][fid] == "20"
    for row in rows[1:]:  # no count, a count of 1, a boolean, a string, NaN: no ±
        assert row[clip_t] == shown_mean and row[kid] == "-0.01"
    cells = html_cells(render_html([with_spread]))[0]
    assert cells[header.index("CLIP-T ↑")][1] == rows[0][clip_t]
    assert cells[header.index("CLIP-T ↑")][0]["title"] == "± 95% confidence interval of the mean over 12 items"
    assert cells[header.index("KID ↓")][0]["title"] == "± standard deviation"


# ---------------------------------------------------------------------- chart axes


def svg_charts(page: str) -> dict[str, dict]:
    """Per chart (by its caption): the bars (x, width, value), the axis ticks and the scatter points."""
    from html.parser import HTMLParser

    charts: dict[str, dict] = {}

    class Parser(HTMLParser):
        caption: list | None = None
        current: dict | None = None
        tick: dict | None = None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "figcaption":
                self.caption = []
            elif tag == "rect":
                self.current["bars"].append((float(attrs["x"]), float(attrs["width"]), float(attrs["data-value"])))
            elif tag == "circle":
                self.current["points"].append((float(attrs["cx"]), float(attrs["cy"])))
            elif tag == "text" and attrs.get("class") == "tick":
                self.current["ticks"].append((float(attrs["x"]), float(attrs["data-value"])))
            elif tag == "line" and self.current is not None and attrs["x1"] == attrs["x2"]:
                self.current["zero"].append(float(attrs["x1"]))

        def handle_endtag(self, tag):
            if tag == "figcaption":
                self.current = charts["".join(self.caption)] = {"bars": [], "ticks": [], "points": [], "zero": []}
                self.caption = None

        def handle_data(self, data):
            if self.caption is not None:
                self.caption.append(data)

    Parser(convert_charrefs=True).feed(page)
    return charts


def test_chart_axes_start_at_zero_and_span_bounded_metrics():
    records = [
        changed(record("p", 0.50, 100.0), metrics={"kid_mean": -0.02, "clip_t": 25.0, "cmmd": 0.0}),
        changed(record("q", 0.51, 101.0), metrics={"kid_mean": 0.01, "clip_t": 25.5, "cmmd": 0.0}),
    ]
    charts = svg_charts(render_html(records))
    label_w, bar_w = 180.0, 220.0  # where the bar area starts and how wide it is

    def check(caption, axis, widths):  # widths of the bars of p and q (drawn best SG-IoU first: q, then p)
        chart = charts[caption]
        assert [value for _, value in chart["ticks"]] == list(axis)
        assert [x for x, _ in chart["ticks"]] == [label_w, label_w + bar_w]
        assert [width for _, width, _ in chart["bars"]][::-1] == pytest.approx(widths, abs=0.006)

    # bounded metrics: the whole range, so 0.50 and 0.51 are bars of 50% and 51% of the axis, not 0 and 100%
    check("SG-IoU ↑", (0.0, 1.0), [0.50 * bar_w, 0.51 * bar_w])
    check("CLIP-T ↑", (0.0, 100.0), [0.25 * bar_w, 0.255 * bar_w])
    # unbounded above: from 0 to the largest value, so FID 100 vs 101 differ by 1% of the bar
    check("FID ↓", (0.0, 101.0), [100 / 101 * bar_w, bar_w])
    # all zeros: an axis of 0-1 and empty bars, no division by zero
    check("CMMD ↓", (0.0, 1.0), [0.0, 0.0])
    # KID can be negative: the axis spans both values and 0, bars grow from the zero line either way
    kid = charts["KID ↓"]
    zero = label_w + 0.02 / 0.03 * bar_w
    assert [value for _, value in kid["ticks"]] == [-0.02, 0.01] and kid["zero"] == [pytest.approx(zero, abs=0.006)]
    (x1, w1, _), (x0, w0, _) = kid["bars"]
    assert (x0, x0 + w0) == pytest.approx((label_w, zero), abs=0.01)
    assert (x1, x1 + w1) == pytest.approx((zero, label_w + bar_w), abs=0.01)
    # the scatter plot follows the same rule on both axes (FID 0-101, SG-IoU 0-1 over the 224-pixel plot area)
    size, pad = 320, 48
    expected = [(pad + fid / 101 * (size - 2 * pad), size - pad - iou * (size - 2 * pad)) for fid, iou in ((100, 0.5), (101, 0.51))]
    assert charts["SG-IoU vs FID"]["points"][::-1] == [pytest.approx(point, abs=0.006) for point in expected]


# ---------------------------------------------------------------------- links and sample grids


def write_images(run_dir, images: dict[tuple[str, int], tuple[int, int, int]]) -> None:
    """A run's images/ folder as benchmark.generate writes it: one Parquet chunk of solid-colour PNGs."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from benchmark.generate import IMAGES_SCHEMA

    rows = []
    for (key, index), colour in images.items():
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buffer, format="PNG")
        rows.append({"key": key, "image_index": index, "seed": 1, "png": buffer.getvalue()})
    (run_dir / "images").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), run_dir / "images" / "part-0.parquet")


def test_links_to_result_files_and_sample_grids_are_relative(tmp_path):
    from urllib.parse import unquote, urlsplit

    from PIL import Image

    markdown_it = pytest.importorskip("markdown_it")
    with_images = tmp_path / "runs" / "sdxl (1) #2 'x' <y>%20"  # a folder name that is also URL and Markdown syntax
    without = tmp_path / "runs" / "plain"
    colours = {("k1", 0): (255, 0, 0), ("k0", 1): (0, 255, 0), ("k0", 0): (0, 0, 255)}
    write_images(with_images, colours)
    without.mkdir(parents=True)
    (with_images / "result.json").write_text(record("m1", 0.5, 20.0).to_json())
    (without / "result.json").write_text(record("m2", 0.4, 20.0).to_json())
    site = tmp_path / "site" / "board"
    assert main(["render", str(with_images), str(without / "result.json"), "--output", str(site)]) == 0

    (grid_file,) = (site / "samples").iterdir()
    grid = Image.open(grid_file).convert("RGB")
    assert grid.size == (3 * 128, 128)  # three images, scaled to 128 px wide, in (key, image index) order
    assert [grid.getpixel((64 + 128 * i, 64)) for i in range(3)] == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    assert grid.getpixel((64, 5)) == (255, 255, 255)  # 64x48 scaled to 128x96, centred in its cell

    def targets(hrefs: list[str]) -> list[Path]:
        for href in hrefs:
            parts = urlsplit(href)
            assert not parts.scheme and not parts.netloc and not href.startswith("/"), href
        return [(site / unquote(href)).resolve() for href in hrefs]

    expected = [with_images / "result.json", grid_file, without / "result.json"]
    rendered_md = markdown_it.MarkdownIt("commonmark").enable("table").render((site / "leaderboard.md").read_text())
    for page in (rendered_md, (site / "index.html").read_text()):
        parsed = _Parsed(page)
        anchors = [attrs for name, attrs in parsed.tags if name == "a"]
        assert targets([a["href"] for a in anchors]) == [path.resolve() for path in expected]
        assert [row[-1] for row in parsed.rows if row and row[0] in ("1", "2")] == ["result.json · samples", "result.json"]

    assert main(["render", str(with_images), "--output", str(tmp_path / "nogrid"), "--grid-images", "0"]) == 0
    assert not (tmp_path / "nogrid" / "samples").exists()
    assert "samples" not in (tmp_path / "nogrid" / "leaderboard.md").read_text().split("Files")[1]


# ---------------------------------------------------------------------- the command line (schemas.settings)


def _help_entries(text: str) -> dict[str, str]:
    """`--help` output -> {flag or positional name: its help entry, lines joined}."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if entry := re.match(r"^  ((--[a-z][\w.-]*)|[A-Z]+)", line):
            name = entry.group(1)
            entries[name] = line
        elif line.startswith("   ") and name is not None:
            entries[name] += " " + line.strip()
    return {name: " ".join(entry.split()) for name, entry in entries.items()}


@pytest.mark.parametrize(
    ("command", "settings_name", "positional"), [("render", "RenderSettings", "RUNS"), ("verify", "VerifySettings", "RECORD")]
)
def test_each_subcommand_help_shows_each_setting_with_a_default(command, settings_name, positional, capsys):
    import benchmark.leaderboard as leaderboard

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert " ".join(text.split()).startswith(f"usage: python -m benchmark.leaderboard {command} ")
    entries = _help_entries(text)
    assert {"--config", "--version", positional} <= set(entries)
    settings_cls = getattr(leaderboard, settings_name)
    flags = ["--" + name.replace("_", "-") for name in settings_cls.model_fields if name not in ("runs", "record")]
    assert flags and set(flags) <= set(entries)
    for flag in flags:
        assert re.search(r"\((default: .*|required)\)$", entries[flag]), entries[flag]


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m benchmark.leaderboard [-h] [--version] {render,verify} ...")
    assert "render render records to DIR/leaderboard.md and DIR/index.html" in text
    assert "verify recompute a record's metrics from its stored images" in text
    for argv, message in [([], r"required: \{render,verify\}"), (["draw"], r"invalid choice: 'draw'")]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


@pytest.mark.parametrize(
    ("command", "values", "argv"),
    [
        (
            "render",
            {"runs": ["run0", "run1/result.json"], "output": "site", "skip_invalid": True, "grid_images": 0},
            ["run0", "run1/result.json", "--output", "site", "--skip-invalid", "--grid-images", "0"],
        ),
        (
            "verify",
            {"record": "run0", "run_dir": "images", "num_actors": 2, "rel_tol": 0.01, "abs_tol": 0.5},
            ["run0", "--run-dir", "images", "--num-actors", "2", "--rel-tol", "0.01", "--abs-tol", "0.5"],
        ),
    ],
)
def test_each_subcommand_reads_a_config_file_like_its_flags(command, values, argv, tmp_path, monkeypatch):
    import yaml

    import benchmark.leaderboard.cli as leaderboard_cli

    seen = []
    monkeypatch.setattr(leaderboard_cli, f"_{command}", lambda settings: seen.append(settings) or 0)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(values))
    assert main([command, "--config", str(tmp_path / "job.yaml")]) == 0
    assert main([command, *argv]) == 0
    from_file, from_flags = seen
    assert from_file == from_flags
    settings_cls = type(from_file)
    required = {name for name, field in settings_cls.model_fields.items() if field.is_required()}
    defaults = settings_cls.model_validate({name: values[name] for name in required})
    changed = {name for name in settings_cls.model_fields if getattr(from_file, name) != getattr(defaults, name)}
    assert changed == set(values) - required  # every value given was read, from the file as from flags
    # a flag wins over the file, the positional records included
    assert main([command, "--config", str(tmp_path / "job.yaml"), "other"]) == 0
    assert seen[-1] == from_file.model_copy(update={"runs": [Path("other")]} if command == "render" else {"record": Path("other")})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "--output", "site"], r"render: error: RUNS: give at least one result.json file or run directory"),
        (["render", "run0"], r"--output is required"),
        (["render", "run0", "--output", "site", "--grid-images", "-1"], r"--grid-images: .*greater than or equal to 0"),
        (["render", "run0", "--output", "site", "--grids", "2"], r"unrecognized arguments: --grids 2"),
        (["verify"], r"verify: error: RECORD: give a result.json file or a run directory"),
        (["verify", "run0", "run1"], r"unrecognized arguments: run1"),
        (["verify", "run0", "--rel-tol", "tight"], r"--rel-tol: .*number.*'tight'"),
        (["verify", "run0", "--num-actors", "-2"], r"--num-actors: .*greater than or equal to 0"),
    ],
)
def test_bad_subcommand_settings_exit_2_naming_the_setting(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert re.search(message, capsys.readouterr().err), message
