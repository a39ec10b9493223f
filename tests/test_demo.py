"""The demo chain (annotate -> export -> train -> bench set -> bench x2 -> leaderboard) as a `ray job submit` job.

`make demo` runs the same `laion_sg.demo.plan` with an in-process Ray (CI runs it after the suite); here the demo is
one job on a real local cluster on 127.0.0.1, each stage's outputs being the next one's inputs.
"""

from __future__ import annotations

import html
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from local_ray_cluster import local_ray_cluster

from laion_sg.demo import DEMO_MARKER, DemoOutputError, plan, prepare_output, verify_artifacts

# leaderboard column label -> record metric key, and the adapter of each demo run (written out, not imported)
COLUMNS = {
    "SG-IoU": "sg_iou", "Entity-IoU": "entity_iou", "Relation-IoU": "relation_iou", "FID": "fid", "KID": "kid_mean",
    "CLIP-T": "clip_t", "CLIP-I": "clip_i", "CMMD": "cmmd",
}  # fmt: skip
# the question track's table
QUESTION_COLUMNS = {
    "Q-Score": "question_score", "Q-Entity": "question_entity", "Q-Attribute": "question_attribute",
    "Q-Relation": "question_relation",
}  # fmt: skip
ADAPTERS = {"baseline": "diffusers-sg-text", "sdxl_sg": "sdxl-sg"}
MODEL_NAMES = ("qwen2_5_vl", "sdxl", "open_clip", "owlv2", "clipseg")  # + inception, a file


def leaderboard_rows(markdown: str) -> list[list[dict[str, str]]]:
    """The rows of each Markdown table (one per track), as {header cell: cell}, Markdown backslash escapes and HTML
    entities undone."""

    def cells(line: str) -> list[str]:
        return [html.unescape(re.sub(r"\\(.)", r"\1", c.strip())) for c in line.strip().strip("|").split("|")]

    tables = []
    for part in markdown.split("\n### ")[1:]:
        table = [line for line in part.splitlines() if line.startswith("|")]
        header = [re.sub(r"\s*[↑↓]$", "", c) for c in cells(table[0])]
        assert set(table[1]) <= set("|-:")  # the separator line
        tables.append([dict(zip(header, cells(line), strict=True)) for line in table[2:]])
    return tables


def check_artifacts(output: Path, models: dict[str, Path]) -> None:
    """What the demo promises, read back independently of `verify_artifacts`."""
    import datasets

    from benchmark.sample_set import load_benchmark
    from schemas import BenchmarkResult
    from training.pipeline import SDXLSGPipeline

    # the dataset: every ok or repaired annotated photograph exactly once over the splits, images as PIL
    annotated = pa.concat_tables(
        pq.read_table(p) for p in sorted((output / "annotated" / "data").glob("*.parquet"))
    )
    statuses = [a["status"] for a in annotated.column("annotation").to_pylist()]
    kept = sorted(
        k
        for k, s in zip(annotated.column("key").to_pylist(), statuses, strict=True)
        if s in ("ok", "repaired")
    )
    assert kept, "the annotator produced no usable row"
    # a fresh cache: `datasets` keys its default cache on the card, not the files, so an earlier run's (or an
    # unbroken) copy of the data could be read instead of these files
    with tempfile.TemporaryDirectory(prefix="hf-datasets-") as cache:
        dataset = datasets.load_dataset(str(output / "dataset"), cache_dir=cache)
        assert {"train", "test"} <= set(dataset) <= {"train", "validation", "test"}
        assert sorted(k for split in dataset.values() for k in split["key"]) == kept
        first = dataset["train"][0]
        assert first["image"].size[0] > 0 and isinstance(first["scene_graph"]["objects"], list)
        test_keys = sorted(dataset["test"]["key"])
        train_keys = sorted(dataset["train"]["key"])
    # the benchmark set is the test split
    bench = load_benchmark(output / "bench" / "compsg_bench.parquet")
    assert sorted(s.key for s in bench.samples) == test_keys
    # the pre-trained SG encoder loads (gate closed), and the trained pipeline loads, with its SG encoder
    from training.sg_encoder import SGEncoder

    assert float(SGEncoder.from_pretrained(str(output / "pretrain" / "final")).alpha) == 0.0
    trained = output / "train" / "final"
    pipeline = SDXLSGPipeline.from_pretrained(str(trained))
    assert pipeline.sg_encoder is not None and math.isfinite(float(pipeline.sg_encoder.alpha))

    # one record per run: the model it names, the whole benchmark set, every metric finite
    model_ids = {"baseline": str(models["sdxl"].resolve()), "sdxl_sg": str(trained.resolve())}
    records = {
        name: BenchmarkResult.from_json((output / "runs" / name / "result.json").read_text())
        for name in ADAPTERS
    }
    for name, record in records.items():
        assert (record.model.model_id, record.model.adapter) == (model_ids[name], ADAPTERS[name])
        assert record.benchmark.n_samples == len(bench.samples)
        # a question category is scored when some sample's graph has a question of it (the demo's few test
        # samples may have no relation)
        asked = {"question_score", "question_entity"}
        asked |= {"question_attribute"} if any(o.attributes for s in bench.samples for o in s.scene_graph.objects) else set()
        asked |= {"question_relation"} if any(s.scene_graph.relations for s in bench.samples) else set()
        assert set(record.metrics) == set(COLUMNS.values()) | asked
        assert all(math.isfinite(v) for v in record.metrics.values()), record.metrics
        assert record.metric_details["questions"]["n_items"] == len(bench.samples)

    # the leaderboard: per track a table, one row per record, its model and adapter, every metric as its
    # record's number (4 digits)
    markdown = (output / "leaderboard" / "leaderboard.md").read_text()
    groups = {part.split(" ", 1)[0]: part for part in markdown.split("\n## ")[1:]}
    assert sorted(groups) == ["CompSG-Bench", "CompSG-Bench-paragraph", "VISOR-SR2D-spatial"]  # one per set
    tables = leaderboard_rows(groups["CompSG-Bench"])
    assert len(tables) == 2
    for table, columns in zip(tables, (COLUMNS, QUESTION_COLUMNS), strict=True):
        rows = {row["Model"]: row for row in table}
        assert sorted(rows) == sorted(model_ids.values())
        for name, record in records.items():
            row = rows[model_ids[name]]
            assert row["Adapter"] == ADAPTERS[name]
            for label, key in columns.items():
                if key not in record.metrics:  # no column when no record has it, else a dash
                    assert row.get(label, "–") == "–"
                    continue
                value = row[label].split(" ± ")[0].strip("*")  # the best value is bold; CLIP and KID carry a ±
                assert float(value) == pytest.approx(record.metrics[key], rel=1e-3, abs=1e-12), (name, label)
    page = (output / "leaderboard" / "index.html").read_text()
    assert all(html.escape(model_id) in page for model_id in model_ids.values())
    check_long_prompt_track(output, train_keys, model_ids["baseline"], leaderboard_rows(groups["CompSG-Bench-paragraph"]))
    check_spatial_track(output, model_ids["baseline"], leaderboard_rows(groups["VISOR-SR2D-spatial"]))
    check_spright_lora(output, models["sdxl"])
    check_gen4gen(output)


def check_gen4gen(output: Path) -> None:
    """Every planned composition once, with a status; boxes inside the 64 x 64 canvas; the scores are the means
    of the composed images' per-image scores."""
    import json

    from laion_sg.offline.fixtures import CONCEPT_SCENES

    rows = pq.read_table(output / "compositing" / "data").to_pylist()
    assert len(rows) == len({r["key"] for r in rows}) == 2 * len(CONCEPT_SCENES)
    composed = [r for r in rows if r["compositing"]["status"] == "ok"]
    for row in composed:
        assert row["image"]["bytes"] and all(0 <= b["x0"] < b["x1"] <= 64 for b in row["boxes"])
    for row in rows:
        if row["compositing"]["status"] != "ok":
            assert row["compositing"]["stage"] and row["compositing"]["error"] and row["image"] is None
    scores = json.loads((output / "compositing_scores" / "scores.json").read_text())
    per_image = pq.read_table(output / "compositing_scores" / "per_image.parquet").to_pylist()
    scored = [r for r in per_image if r["status"] == "scored"]
    assert scores["n_images"] == len(scored) == len(composed)
    if scored:
        assert scores["cp_clip"] == pytest.approx(sum(r["cp_clip"] for r in scored) / len(scored))
        assert scores["ti_clip"] == pytest.approx(sum(r["ti_clip"] for r in scored) / len(scored))


def check_spright_lora(output: Path, base: Path) -> None:
    """The LoRA loads into a plain SDXL pipeline with `load_lora_weights` and changes its output; its spatial
    run names it with the sdxl-lora adapter."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from schemas import BenchmarkResult

    def image(pipe: StableDiffusionXLPipeline) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        kwargs = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np", "generator": generator}
        return pipe("a dog to the left of a cat", **kwargs).images[0]

    pipe = StableDiffusionXLPipeline.from_pretrained(str(base))
    plain = image(pipe)
    pipe.load_lora_weights(str(output / "lora" / "final"), weight_name="pytorch_lora_weights.safetensors")
    assert not np.array_equal(plain, image(pipe))
    record = BenchmarkResult.from_json((output / "runs" / "spatial_lora" / "result.json").read_text())
    assert record.model.adapter == "sdxl-lora" and record.model.model_id == str((output / "lora").resolve())


def check_spatial_track(output: Path, model_id: str, tables: list) -> None:
    """The spatial run: 4 prompts x 4 images, every image detected, VISOR's keys in [0, 1] and on the
    leaderboard's spatial table only."""
    from benchmark.spatial.prompts import load_prompts
    from schemas import BenchmarkResult

    prompts = load_prompts(output / "bench" / "spatial_prompts.parquet").prompts
    record = BenchmarkResult.from_json((output / "runs" / "spatial" / "result.json").read_text())
    assert (record.model.model_id, record.model.adapter) == (model_id, "diffusers-caption")
    assert record.benchmark.n_samples == len(prompts) == 4
    assert set(record.metrics) == {"oa", "visor_uncond", "visor_cond", "visor_1", "visor_2", "visor_3", "visor_4"}
    assert all(0.0 <= v <= 1.0 for v in record.metrics.values())
    detections = pa.concat_tables(pq.read_table(p) for p in (output / "runs" / "spatial" / "detections").glob("*.parquet"))
    assert detections.num_rows == 16 and set(detections.column("status").to_pylist()) == {"ok"}
    (table,) = tables
    assert sorted(row["Model"] for row in table) == sorted([model_id, str((output / "lora").resolve())])


def check_long_prompt_track(output: Path, keys: list[str], model_id: str, tables: list) -> None:
    """The long-prompt set holds images of the split it was frozen from (`keys`) prompted with their paragraphs
    (from the paragraph task's output, by key), and its run used the long-prompt encoding and scored the
    question track."""
    from benchmark.sample_set import load_benchmark
    from schemas import BenchmarkResult

    paragraphs = pa.concat_tables(pq.read_table(p) for p in sorted((output / "paragraph" / "data").glob("*.parquet")))
    by_key = dict(zip(paragraphs.column("key").to_pylist(), paragraphs.column("paragraph").to_pylist(), strict=True))
    long_set = load_benchmark(output / "bench" / "long_prompts.parquet")
    assert long_set.samples and {s.key for s in long_set.samples} <= set(keys)
    assert all(s.caption == by_key[s.key] and len(s.caption.split()) >= 20 for s in long_set.samples)
    record = BenchmarkResult.from_json((output / "runs" / "long_prompts" / "result.json").read_text())
    assert (record.model.model_id, record.model.adapter) == (model_id, "diffusers-caption")
    assert record.benchmark.name == "CompSG-Bench-paragraph" and record.generation.long_prompt is True
    assert record.benchmark.n_samples == len(long_set.samples) and "question_score" in record.metrics
    assert record.metric_details["clip_t"]["text_tokens"].startswith("the first window")
    main_table, question_table = tables
    assert [row["Model"] for row in main_table] == [row["Model"] for row in question_table] == [model_id]


@pytest.mark.slow
def test_chain_as_a_ray_job_on_a_local_cluster(tmp_path: Path) -> None:
    """`ray job submit -- python -m laion_sg.demo`: the job's driver joins the cluster and runs every stage's
    `main()` in order (their Ray Data / Train work on the cluster's workers); the artifacts are then read back.
    One job, not one per stage: each job pays a driver start and fresh Ray workers (about 20 s here)."""
    output = tmp_path / "chain"
    with local_ray_cluster(tmp_path, num_cpus=4) as cluster:
        job = cluster.submit("laion_sg.demo", ["--output", str(output), "--train-steps", "2"], cwd=tmp_path, timeout=1200)
    log = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in job.stdout, log[-6000:]
    assert "Connecting to existing Ray cluster" in log  # not a private in-process Ray
    models = {name: output / "models" / name for name in MODEL_NAMES}
    models["inception"] = output / "models" / "inception" / "pt_inception-random.pth"
    stages = plan(output, models, output / "photos", train_steps=2)
    assert [s.module for s in stages] == [
        "pipelines.annotate", "pipelines.annotate", "pipelines.annotate", "pipelines.export", "training.pretrain_sg",
        "training.train",
        "benchmark.dataset", "benchmark.run", "benchmark.run", "benchmark.dataset", "benchmark.run",
        "benchmark.spatial.prompts", "benchmark.spatial.run", "pipelines.export", "training.lora",
        "benchmark.spatial.run", "pipelines.compositing", "benchmark.compositing", "benchmark.leaderboard",
    ]  # fmt: skip
    # every stage ran, in this order, as the command a cluster user would submit
    positions = [log.find(f"=== {s.title}\n    python -m {s.module} {' '.join(s.argv)}\n") for s in stages]
    assert -1 not in positions and positions == sorted(positions), positions
    checks = verify_artifacts(output)
    assert set(checks) == {
        "dataset", "pipeline", "record baseline", "record sdxl_sg", "record long_prompts", "record spatial",
        "record spatial_lora",
    }  # fmt: skip
    check_artifacts(output, models)


# ---------------------------------------------------------------------------------------------- --output guard


def _listing(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
    }


def test_output_guard_refuses_a_foreign_directory_and_reuses_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "my_thesis"
    (foreign / "chapter1").mkdir(parents=True)
    (foreign / "chapter1" / "draft.tex").write_text("\\section{Results}")
    (foreign / "notes.txt").write_text("do not lose")
    before = _listing(foreign)
    with pytest.raises(DemoOutputError, match="not made by the demo.*nothing was deleted"):
        prepare_output(foreign)
    assert _listing(foreign) == before
    with pytest.raises(DemoOutputError, match="not a directory"):
        prepare_output(foreign / "notes.txt")
    assert _listing(foreign) == before

    made = prepare_output(tmp_path / "new" / "demo")  # created, with parents, and marked
    assert made == (tmp_path / "new" / "demo").resolve() and _listing(made) == {
        DEMO_MARKER: (made / DEMO_MARKER).read_bytes()
    }
    (made / "dataset" / "data").mkdir(parents=True)  # what a previous demo run left
    (made / "dataset" / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (made / "summary.json").write_text("{}")
    (made / "link").symlink_to(foreign, target_is_directory=True)  # emptying removes the link, not its target
    assert prepare_output(made) == made and set(_listing(made)) == {DEMO_MARKER}
    assert _listing(foreign) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_output(empty) == empty.resolve() and set(_listing(empty)) == {DEMO_MARKER}


def test_demo_cli_exits_2_before_any_work_on_a_foreign_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from laion_sg import demo as laion_sg_demo

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo started working on a foreign --output")

    monkeypatch.setattr(laion_sg_demo, "prepare_inputs", no_work)
    monkeypatch.setattr(ray, "init", no_work)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    before = _listing(foreign)
    assert laion_sg_demo.main(["--output", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laion-sg demo: --output ") and str(foreign.resolve()) in err
    assert "nothing was deleted" in err and DEMO_MARKER in err
    assert _listing(foreign) == before
