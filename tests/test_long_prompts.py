"""The data side of the long-prompt track: the `paragraph` task (schema, parser, the tiny Qwen through the hf
engine), the prompt set from a ParaPrompts-style CSV (`benchmark.long_prompts`) read by the annotate job, and
benchmark sets whose prompt text comes from the `paragraph` column (`build_benchmark(caption_column=...)`)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from awkward_images import skimage_photo_bytes
from test_benchmark_dataset import export_rows, write_export

from benchmark import long_prompts
from benchmark.dataset import build_benchmark
from benchmark.dataset import main as bench_set_main
from benchmark.sample_set import load_benchmark, manifest_path
from benchmark.selection import BenchmarkSelectionError
from pipelines.annotate import main as annotate_main
from pipelines.annotate.writing import output_schema
from pipelines.answers import parse_paragraph
from pipelines.engines import EngineOptions
from pipelines.engines.hf import HFGenerator
from pipelines.tasks import get_task
from schemas import hf_features, row_key

WORD = "[A-Za-z0-9,.;:!?'()-]{1,24}"


def _words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# -------------------------------------------------------------------------------------------- paragraph task


def test_paragraph_task_columns_prompt_and_example() -> None:
    task = get_task("paragraph")
    assert (task.name, task.needs_image, task.needs_caption) == ("paragraph", True, False)
    assert task.output_columns == {"paragraph": pa.string()}
    assert task.columns(None) == {"paragraph": None} and task.columns("A dog.") == {"paragraph": "A dog."}
    assert task.variables == {"min_words": 100, "max_words": 300}
    assert task.schema == {
        "title": "Paragraph",
        "type": "object",
        "properties": {"paragraph": {"type": "string", "pattern": f"^{WORD}( {WORD}){{99,299}}$"}},
        "required": ["paragraph"],
        "additionalProperties": False,
    }
    request = task.request(image=b"png")
    assert (
        "one dense paragraph of 100 to 300 words" in request.user
        and "${" not in request.user + request.system
    )
    assert request.image == b"png" and request.schema_name == "paragraph"
    jsonschema.validate(json.loads(task.example_answer), task.schema)  # the dry run's answer is a valid one
    assert task.parse(task.example_answer).status == "ok"


def test_paragraph_column_reaches_the_row_schema_and_the_dataset_features() -> None:
    """Like ``spatial_caption``, the column is declared by the task alone: the annotate output schema and the
    exported Hugging Face features carry it as a string without any per-task code."""
    schema = output_schema(get_task("paragraph"), images=True)
    assert schema.field("paragraph").type == pa.string() and "scene_graph" in schema.names
    assert hf_features(schema)["paragraph"] == {"dtype": "string", "_type": "Value"}


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        ({"paragraph": _words(100)}, True),
        ({"paragraph": _words(300)}, True),
        ({"paragraph": "A dog, brown; (it's small)! " + _words(96)}, True),
        ({"paragraph": _words(99)}, False),
        ({"paragraph": _words(301)}, False),
        ({"paragraph": "a" * 25 + " " + _words(99)}, False),
        ({"paragraph": 'a "quoted" dog ' + _words(97)}, False),
        ({"paragraph": "A dog.\nA cat. " + _words(97)}, False),
        ({"paragraph": "A  dog " + _words(98)}, False),
        ({"paragraph": 300}, False),
        ({}, False),
        ({"paragraph": _words(100), "extra": 1}, False),
    ],
)
def test_paragraph_schema_bounds(answer: dict, valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(get_task("paragraph").schema)
    assert validator.is_valid(answer) == valid


PARAGRAPH_ANSWERS = [
    ("ok", json.dumps({"paragraph": _words(150)}), _words(150), "ok", None),
    ("20 words: the usable minimum", json.dumps({"paragraph": _words(20)}), _words(20), "ok", None),
    (
        "plain prose over two lines",
        "A dog lies on a rug.\n\nBehind it  a window. " + _words(20),
        "A dog lies on a rug. Behind it a window. " + _words(20),
        "repaired",
        "repaired: the answer is not JSON; used the text as the paragraph; normalised whitespace",
    ),
    (
        "fenced JSON",
        "```json\n" + json.dumps({"paragraph": _words(30)}) + "\n```",
        _words(30),
        "repaired",
        "repaired: removed a Markdown code fence around the JSON",
    ),
    (
        "too long: cut with a note",
        json.dumps({"paragraph": _words(350)}),
        _words(300),
        "repaired",
        "repaired: cut to 300 words",
    ),
    (
        "too short",
        json.dumps({"paragraph": _words(19)}),
        None,
        "failed",
        "paragraph too short: 19 words, at least 20 needed",
    ),
    ("short prose", "A dog.", None, "failed", "paragraph too short: 2 words, at least 20 needed"),
    (
        "invalid JSON",
        '{"paragraph": "a dog" "a cat"}',
        None,
        "failed",
        "invalid JSON: Expecting ',' delimiter (char 22)",
    ),
    (
        "truncated JSON",
        '{"paragraph": "A dog',
        None,
        "failed",
        "truncated JSON: the answer ends before the JSON is complete (Unterminated string starting at, char 14)",
    ),
    (
        "not a string",
        '{"paragraph": ["a dog"]}',
        None,
        "failed",
        "invalid paragraph: expected a string field 'paragraph', got ['a dog']",
    ),
    ("blank", '{"paragraph": " \\n "}', None, "failed", "empty paragraph"),
    ("no answer", "", None, "failed", "empty output: the model returned no text"),
]


@pytest.mark.parametrize(
    ("raw", "value", "status", "error"),
    [a[1:] for a in PARAGRAPH_ANSWERS],
    ids=[a[0] for a in PARAGRAPH_ANSWERS],
)
def test_parse_paragraph(raw: str, value: str | None, status: str, error: str | None) -> None:
    parsed = parse_paragraph(raw)
    assert tuple(parsed) == (value, status, error)
    assert get_task("paragraph").parse(raw) == parsed


def test_tiny_qwen_writes_a_schema_valid_paragraph_through_the_hf_engine(tiny_models_dir: Path) -> None:
    """The real hf engine (transformers + xgrammar) on the tiny random-weight Qwen: the grammar compiled from
    the {99,299}-word pattern makes even random weights write 100..300 words, which schema and parser accept.
    The whole answer fits in `max_new_tokens` (measured: 300 words in about 380 tokens, 2 s on 2 CPU cores)."""
    generator = HFGenerator(str(tiny_models_dir / "qwen2_5_vl"), EngineOptions(max_new_tokens=2048))
    task = get_task("paragraph")
    generation = generator.generate([task.request(image=skimage_photo_bytes("coffee.png"))])[0]
    assert generation.error is None and generation.truncated is False, generation
    answer = json.loads(generation.text)
    jsonschema.validate(answer, task.schema)
    assert 100 <= len(answer["paragraph"].split(" ")) <= 300
    assert task.parse(generation.text) == (answer["paragraph"], "ok", None)


# -------------------------------------------------------------------------------------------- CSV prompt set

DOG = 'A brown dog, "happy" and wet, lies on a sofa.\nBehind it, a window; rain on the glass.'
CSV_TEXT = (
    "Category,Prompt\n"
    'animals,"A brown dog, ""happy"" and wet, lies on a sofa.\nBehind it, a window; rain on the glass."\n'
    "\n"
    "scenes,  A quiet harbour at dawn  \n"
    ',"A lone tree, no category"\n'
    'animals again,"A brown dog, ""happy"" and wet, lies on a sofa.\nBehind it, a window; rain on the glass."\n'
)


def test_csv_prompt_set_keeps_prompts_whole_and_drops_duplicates(tmp_path: Path, capsys) -> None:
    source = tmp_path / "prompts.csv"
    source.write_text(CSV_TEXT, encoding="utf-8")
    output = tmp_path / "sets" / "captions.parquet"
    assert long_prompts.main(["--input", str(source), "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = pq.read_table(output).to_pylist()
    assert rows == [
        {"key": row_key(caption=DOG), "caption": DOG, "category": "animals"},
        {"key": row_key(caption="A quiet harbour at dawn"), "caption": "A quiet harbour at dawn", "category": "scenes"},
        {"key": row_key(caption="A lone tree, no category"), "caption": "A lone tree, no category",
         "category": "uncategorized"},
    ]  # fmt: skip
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["count"] == 3
    assert manifest["categories"] == {"animals": 1, "scenes": 1, "uncategorized": 1}
    assert manifest["duplicates"] == [{"line": 7, "first_line": 2, "key": row_key(caption=DOG)}]
    assert manifest["content_hash"] == long_prompts.long_prompts_hash(rows) == printed["content_hash"]
    assert printed["duplicates_dropped"] == 1
    again = long_prompts.build_long_prompts(source, tmp_path / "again.parquet")
    assert again["content_hash"] == manifest["content_hash"]  # canonical: same prompts, same hash
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("prompt,category\nA lone tree,x\n", encoding="utf-8")
    other = long_prompts.build_long_prompts(reordered, tmp_path / "other.parquet")
    assert other["categories"] == {"x": 1} and other["content_hash"] != manifest["content_hash"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt\nA dog\n", ": the header needs the columns category and prompt, missing category (header: prompt)"),
        ("", ": the header needs the columns category and prompt, missing category, prompt (header: none)"),
        ("category,prompt\nanimals,A dog, on a sofa\n", ", line 2: 3 fields for 2 columns; quote a prompt that holds commas"),
        ("category,prompt\nanimals,A dog\nanimals,  \n", ", line 3: empty prompt"),
        ("category,prompt\n\n", ": no prompts"),
    ],
)  # fmt: skip
def test_csv_prompt_set_errors_name_the_line(tmp_path: Path, capsys, text: str, message: str) -> None:
    source = tmp_path / "prompts.csv"
    source.write_text(text, encoding="utf-8")
    with pytest.raises(long_prompts.LongPromptsError) as info:
        long_prompts.build_long_prompts(source, tmp_path / "out.parquet")
    assert str(info.value) == f"{source}{message}"
    assert long_prompts.main(["--input", str(source), "--output", str(tmp_path / "out.parquet")]) == 2
    assert capsys.readouterr().err == f"benchmark.long_prompts: error: {info.value}\n"
    assert not (tmp_path / "out.parquet").exists()


def test_annotate_reads_the_prompt_set_for_text_to_graph(ray_local, tmp_path: Path) -> None:
    """`python -m pipelines.annotate --task text_to_graph --input captions.parquet` (a dry run with the fixed
    engine): every prompt is read whole and annotated under the key the prompt set gave it."""
    source = tmp_path / "prompts.csv"
    source.write_text(CSV_TEXT, encoding="utf-8")
    captions = tmp_path / "captions.parquet"
    long_prompts.build_long_prompts(source, captions)
    output = tmp_path / "annotated"
    argv = ["--task", "text_to_graph", "--input", str(captions), "--output", str(output)]
    assert annotate_main([*argv, "--engine", "fixed", "--model", "builtin", "--no-images"]) == 0
    annotated = [
        row for path in sorted((output / "data").glob("*.parquet")) for row in pq.read_table(path).to_pylist()
    ]
    expected = {row["key"]: row["caption"] for row in pq.read_table(captions).to_pylist()}
    assert {row["key"]: row["caption"] for row in annotated} == expected
    assert {row["annotation"]["status"] for row in annotated} == {"ok"}


# -------------------------------------------------------------------------------- benchmark from paragraphs


def _paragraph_export(root: Path, paragraphs: list[str | None]) -> Path:
    """`write_export`'s test split (a row per paragraph, each with 5 relations) plus a `paragraph` column, as
    an export of rows annotated with both the scene_graph and the paragraph task."""
    write_export(root, {"test": export_rows([5] * len(paragraphs))})
    path = root / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.append_column("paragraph", pa.array(paragraphs, pa.string())), path)
    return root


def test_benchmark_prompts_from_the_paragraph_column(tmp_path: Path, capsys) -> None:
    paragraphs = [_words(120), None, "  ", "A dog lies on a sofa. " + _words(100)]
    export = _paragraph_export(tmp_path / "export", paragraphs)
    out = tmp_path / "long.parquet"
    manifest = build_benchmark(export, out, split="test", min_relations=5, caption_column="paragraph")
    assert manifest["counts"] == {
        "split_rows": 4, "failed_annotation": 0, "too_few_relations": 0, "no_image": 0, "no_prompt": 2,
        "eligible": 2, "selected": 2,
    }  # fmt: skip
    assert manifest["selection"]["caption_column"] == "paragraph"
    rule = "prompt text from column 'paragraph'; rows where it is empty are skipped"
    assert manifest["selection"]["prompt_rule"] == rule
    bench = load_benchmark(out)  # the hash covers the paragraph text, now in the file's caption column
    by_key = {s.key: s.caption for s in bench.samples}
    rows = export_rows([5] * len(paragraphs))
    assert by_key == {rows[0]["key"]: paragraphs[0], rows[3]["key"]: paragraphs[3]}
    short = build_benchmark(export, tmp_path / "short.parquet", split="test", min_relations=5)
    assert short["selection"]["caption_column"] == "caption" and short["selection"]["prompt_rule"] is None
    assert short["counts"]["selected"] == 4 and "no_prompt" not in short["counts"]
    assert short["content_hash"] != manifest["content_hash"]

    argv = [
        "--input",
        str(export),
        "--output",
        str(tmp_path / "cli.parquet"),
        "--caption-column",
        "paragraph",
    ]
    assert bench_set_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["content_hash"] == manifest["content_hash"]


def test_benchmark_refuses_a_missing_or_empty_prompt_column(tmp_path: Path) -> None:
    export = _paragraph_export(tmp_path / "export", [None, " "])
    with pytest.raises(
        BenchmarkSelectionError, match="none has a readable reference image and text in column 'paragraph'"
    ):
        build_benchmark(export, tmp_path / "a.parquet", caption_column="paragraph")
    with pytest.raises(BenchmarkSelectionError, match="has no 'dense' column for the prompt text"):
        build_benchmark(export, tmp_path / "b.parquet", caption_column="dense")


def test_benchmark_joins_paragraphs_from_another_annotate_output_by_key(tmp_path: Path) -> None:
    rows = export_rows([5, 5, 5])
    write_export(tmp_path / "export", {"test": rows})  # graphs and images, no paragraph column
    # the paragraph task's output over the same images: same keys, one without text, one key not exported
    data = tmp_path / "paragraphs" / "data"
    data.mkdir(parents=True)
    texts = {rows[0]["key"]: _words(150), rows[2]["key"]: None, "not-exported": _words(120)}
    pq.write_table(pa.table({"key": list(texts), "paragraph": list(texts.values())}), data / "shard-0.parquet")
    out = tmp_path / "long.parquet"
    manifest = build_benchmark(
        tmp_path / "export", out, min_relations=5, caption_column="paragraph", prompts=tmp_path / "paragraphs"
    )
    assert manifest["name"] == "CompSG-Bench-paragraph" and manifest["selection"]["prompts_from"] == "paragraphs"
    # row 1 has no paragraph row at all, row 2 an empty one: both skipped and counted
    assert manifest["counts"]["no_prompt"] == 2 and manifest["counts"]["selected"] == 1
    (sample,) = load_benchmark(out).samples
    assert (sample.key, sample.caption) == (rows[0]["key"], texts[rows[0]["key"]])
    assert sample.scene_graph.to_dict() == rows[0]["scene_graph"]  # the image's graph: the questions' source
    named = build_benchmark(
        tmp_path / "export", tmp_path / "n.parquet", caption_column="paragraph", prompts=data / "shard-0.parquet",
        name="ParaBench",
    )  # fmt: skip
    assert named["name"] == "ParaBench" and named["content_hash"] == manifest["content_hash"]
    with pytest.raises(BenchmarkSelectionError, match="--prompts .* has no 'dense' column"):
        build_benchmark(tmp_path / "export", tmp_path / "x.parquet", caption_column="dense", prompts=data.parent)
