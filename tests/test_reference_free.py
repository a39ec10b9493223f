"""Reference-free benchmark sets (issue 11, the long-prompt track on ParaPrompts-style prompt sets without images):
a CSV -> `benchmark.long_prompts` -> `pipelines.annotate` text_to_graph (the fixed engine with hand-written graphs)
-> `benchmark.dataset --reference-free` -> `benchmark.run`, which scores CLIP-T, the judge's graph IoUs and the
question track, skips FID, KID, CLIP-I and CMMD, and says so in the record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_benchmark_dataset import export_rows, write_export

from benchmark import long_prompts
from benchmark.dataset import REFERENCE_FREE_NAME, build_benchmark
from benchmark.dataset import main as bench_set_main
from benchmark.features import REFERENCE_INDEX
from benchmark.sample_set import load_benchmark, manifest_path
from benchmark.selection import BenchmarkSelectionError
from pipelines.annotate import main as annotate_main
from schemas import row_key

PROMPTS = [
    ("animals", "A brown dog lies on a red sofa next to a sleeping cat, while rain runs down the window behind them."),
    ("scenes", "A wooden boat floats on a calm lake below a snowy mountain; a heron stands on the boat's bow."),
    ("objects", "A teapot."),  # its answer is not a graph: a failed annotation, left out of the set
]
GRAPHS = [
    {
        "objects": [
            {"id": 0, "name": "dog", "attributes": ["brown"]},
            {"id": 1, "name": "sofa", "attributes": ["red"]},
            {"id": 2, "name": "cat", "attributes": []},
            {"id": 3, "name": "window", "attributes": []},
        ],
        "relations": [
            {"subject": 0, "predicate": "lying on", "object": 1},
            {"subject": 2, "predicate": "next to", "object": 0},
            {"subject": 3, "predicate": "behind", "object": 1},
        ],
    },
    {
        "objects": [
            {"id": 0, "name": "boat", "attributes": ["wooden"]},
            {"id": 1, "name": "lake", "attributes": ["calm"]},
            {"id": 2, "name": "mountain", "attributes": ["snowy"]},
            {"id": 3, "name": "heron", "attributes": []},
        ],
        "relations": [
            {"subject": 0, "predicate": "on", "object": 1},
            {"subject": 2, "predicate": "behind", "object": 1},
            {"subject": 3, "predicate": "standing on", "object": 0},
        ],
    },
    "this is not a graph",
]


def annotate_prompts(root: Path) -> Path:
    """CSV -> captions Parquet -> text_to_graph annotate output (fixed answers: `GRAPHS`, in the CSV's order)."""
    csv = root / "prompts.csv"
    csv.write_text("category,prompt\n" + "".join(f'{c},"{p}"\n' for c, p in PROMPTS), encoding="utf-8")
    captions = root / "captions.parquet"
    assert long_prompts.main(["--input", str(csv), "--output", str(captions)]) == 0
    answers = root / "graphs.jsonl"
    answers.write_text("".join(json.dumps(g) + "\n" for g in GRAPHS), encoding="utf-8")
    output = root / "graphs"
    argv = ["--task", "text_to_graph", "--input", str(captions), "--output", str(output), "--no-images"]
    assert annotate_main([*argv, "--engine", "fixed", "--model", str(answers)]) == 0
    return output


@pytest.fixture(scope="module")
def paraprompts(ray_local, tmp_path_factory) -> Path:
    """A frozen reference-free set `ParaPrompts` of the two prompts whose answers are graphs."""
    root = tmp_path_factory.mktemp("paraprompts")
    graphs = annotate_prompts(root)
    argv = ["--reference-free", "--input", str(graphs), "--output", str(root / "set.parquet"), "--name", "ParaPrompts"]
    assert bench_set_main(argv) == 0
    return root / "set.parquet"


def test_reference_free_set_from_a_text_to_graph_output(paraprompts, capsys):
    bench = load_benchmark(paraprompts)  # the content hash verifies
    manifest = json.loads(manifest_path(paraprompts).read_text())
    assert bench.reference_free and manifest["reference_free"] is True
    assert bench.info().name == "ParaPrompts" and bench.info().n_samples == 2
    expected = {row_key(caption=p): (p, g) for (_, p), g in zip(PROMPTS[:2], GRAPHS[:2], strict=True)}
    assert {s.key: (s.caption, s.scene_graph.to_dict()) for s in bench.samples} == expected
    assert all(s.image is None and s.sg_text == s.scene_graph.to_text() for s in bench.samples)
    assert manifest["counts"] == {
        "rows": 3, "failed_annotation": 1, "no_graph": 0, "too_few_relations": 0, "no_prompt": 0, "eligible": 2,
        "selected": 2,
    }  # fmt: skip
    assert manifest["selection"]["min_relations"] == 0 and manifest["selection"]["split"] is None
    assert "no reference images" in manifest["selection"]["rule"] and "null" in manifest["hash_rule"]
    assert pq.read_table(paraprompts).column("image").null_count == 2


def test_reference_free_selection_rules(paraprompts, tmp_path):
    graphs = paraprompts.parent / "graphs"
    # the default name, a relation threshold, a stable subset
    manifest = build_benchmark(graphs, tmp_path / "a.parquet", reference_free=True, min_relations=3, subset=1)
    assert manifest["name"] == REFERENCE_FREE_NAME and manifest["counts"]["selected"] == 1
    with pytest.raises(BenchmarkSelectionError, match="qualifies for a reference-free benchmark.*too_few_relations 2"):
        build_benchmark(graphs, tmp_path / "b.parquet", reference_free=True, min_relations=4)
    # --prompts: the prompt text by key from another output's column; a row without it is counted, not taken
    keys = sorted(s.key for s in load_benchmark(paraprompts).samples)
    paragraph = "A long paragraph about a dog, a sofa, a cat and the rain on the window behind them, told slowly."
    pq.write_table(pa.table({"key": keys, "paragraph": [paragraph, None]}), tmp_path / "paragraphs.parquet")
    argv = ["--reference-free", "--input", str(graphs), "--output", str(tmp_path / "p.parquet"),
            "--prompts", str(tmp_path / "paragraphs.parquet"), "--caption-column", "paragraph"]  # fmt: skip
    assert bench_set_main(argv) == 0
    joined = load_benchmark(tmp_path / "p.parquet")
    assert [(s.key, s.caption) for s in joined.samples] == [(keys[0], paragraph)]
    counts = json.loads(manifest_path(tmp_path / "p.parquet").read_text())["counts"]
    assert (counts["no_prompt"], counts["selected"]) == (1, 1)
    with pytest.raises(BenchmarkSelectionError, match="has no 'paragraph' column"):
        build_benchmark(graphs, tmp_path / "q.parquet", reference_free=True, prompts=graphs, caption_column="paragraph")
    # a text-only output without --reference-free is refused with a pointer to the flag
    with pytest.raises(BenchmarkSelectionError, match="--reference-free"):
        build_benchmark(graphs / "data", tmp_path / "c.parquet", split="train")


def test_a_set_with_references_is_as_before(tmp_path):
    """No `reference_free` key, the old hash rule, the old default relation threshold (5)."""
    write_export(tmp_path / "export", {"test": export_rows([5, 6, 3])})
    manifest = build_benchmark(tmp_path / "export", tmp_path / "bench.parquet")
    assert "reference_free" not in manifest and not load_benchmark(tmp_path / "bench.parquet").reference_free
    assert manifest["selection"]["min_relations"] == 5 and manifest["counts"]["selected"] == 2
    assert manifest["hash_rule"].endswith("sha256(image bytes)] in key order")


@pytest.mark.slow
def test_benchmark_run_on_a_reference_free_set(paraprompts, tiny_models_dir, tmp_path):
    from test_benchmark_run import check_graph_ious, check_question_scores, feature_rows

    from benchmark.leaderboard import load_records
    from benchmark.metrics import CLIPEmbedder
    from benchmark.run import NO_REFERENCES
    from benchmark.run import main as run_main

    def run(output: Path, *extra: str) -> int:
        return run_main([
            "--input", str(paraprompts), "--adapter", "diffusers-caption", "--model", str(tiny_models_dir / "sdxl"),
            "--output", str(output), "--generation.steps", "2", "--generation.height", "64",
            "--generation.width", "64", "--judge.model", str(tiny_models_dir / "qwen2_5_vl"),
            "--judge.max-new-tokens", "64", "--clip.model", str(tiny_models_dir / "open_clip"),
            "--inception.weights", str(tmp_path / "absent.pth"),  # never read: no FID or KID without references
            "--features.batch-size", "3", *extra,
        ])  # fmt: skip

    assert run(tmp_path / "a") == 0
    assert run(tmp_path / "b", "--num-actors", "2", "--chunk-size", "1") == 0
    a, b = load_records([tmp_path / "a", tmp_path / "b"])
    questions = {"question_score", "question_entity", "question_attribute", "question_relation"}
    assert set(a.metrics) == {"clip_t", "sg_iou", "entity_iou", "relation_iou"} | questions
    assert a.benchmark.name == "ParaPrompts" and a.benchmark.n_samples == 2
    assert a.metric_details["reference_images"] == {
        "available": False, "skipped_metrics": ["fid", "kid_mean", "clip_i", "cmmd"], "reason": NO_REFERENCES,
    }  # fmt: skip
    assert not {"fid", "kid", "clip_i", "cmmd"} & set(a.metric_details)
    assert a.metrics == b.metrics and a.metric_details["images"] == b.metric_details["images"]

    # CLIP-T: each image's stored CLIP embedding against its prompt's text embedding, recomputed here
    rows = feature_rows(tmp_path / "a")
    bench = load_benchmark(paraprompts)
    fake = sorted(i for i in rows if i[1] != REFERENCE_INDEX)
    assert [k for k, _ in fake] == [s.key for s in bench.samples]
    assert all(rows[(s.key, REFERENCE_INDEX)]["clip"] == [] for s in bench.samples)  # text-only reference rows
    texts = CLIPEmbedder(str(tiny_models_dir / "open_clip"), "openai").embed_texts([s.caption for s in bench.samples])
    stored_texts = np.array([rows[(s.key, REFERENCE_INDEX)]["text_clip"] for s in bench.samples])
    np.testing.assert_allclose(stored_texts, texts, rtol=1e-6, atol=1e-9)
    images = np.array([rows[i]["clip"] for i in fake])
    cos = (images * texts).sum(axis=1) / np.linalg.norm(images, axis=1) / np.linalg.norm(texts, axis=1)
    assert a.metrics["clip_t"] == pytest.approx(float(np.mean(100.0 * np.maximum(cos, 0.0))), rel=1e-6)
    assert a.metric_details["clip_t"]["text"] == "caption"

    check_graph_ious(a.metrics, tmp_path / "a", tmp_path / "a", paraprompts)
    check_question_scores(a.metrics, tmp_path / "a", paraprompts)

    # the leaderboard: its own section, only the metrics the record has
    from benchmark.leaderboard import main as leaderboard_main

    assert leaderboard_main(["render", str(tmp_path / "a"), "--output", str(tmp_path / "site")]) == 0
    markdown = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "ParaPrompts" in markdown and "FID" not in markdown and "CLIP-T" in markdown
    # verify recomputes the record from its stored images: the same numbers, no reference images needed
    assert leaderboard_main(["verify", str(tmp_path / "a" / "result.json")]) == 0

    # resuming a finished run writes nothing new and gives the same record numbers
    files = {f: f.stat().st_mtime_ns for f in (tmp_path / "a").rglob("part-*.parquet")}
    assert run(tmp_path / "a") == 0
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "a").rglob("part-*.parquet")} == files
    assert load_records([tmp_path / "a"])[0].metrics == a.metrics
