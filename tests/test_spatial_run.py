"""The spatial track as a benchmark run: `VISORScore` against the functional `visor`, and `benchmark.spatial.run`
end to end with the tiny SDXL and the tiny OWLv2 (in this process, resumed, refused, verified, and on Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmark.generate import ADAPTERS, GenerationTask, image_index, images_digest
from benchmark.leaderboard import load_records
from benchmark.leaderboard import main as leaderboard_main
from benchmark.metrics import RECORD_METRICS, VISORScore
from benchmark.metrics.visor import VISOR_KEYS, visor, visor_details
from benchmark.provenance import weights_sha256
from benchmark.spatial.detect import DETECTIONS_SCHEMA, DetectorSettings
from benchmark.spatial.prompts import RELATION_PHRASES, build_prompt_set, image_seed, load_prompts
from benchmark.spatial.run import SpatialRunSettings, main, prompt_samples
from schemas.runs import RunIdentityError

# ---------------------------------------------------------------------- the metric class


def det(label: str, score: float, box: tuple[float, float, float, float]) -> tuple:
    return (label, score, box)


def item(prompt_id: str, subject: str, relation: str, obj: str, detections: list, index: int | None = None) -> dict:
    found = {"prompt_id": prompt_id, "subject": subject, "relation": relation, "object": obj, "detections": detections}
    return found if index is None else found | {"image_index": index}


CAT_LEFT = [det("cat", 0.9, (0, 0, 10, 10)), det("dog", 0.8, (50, 0, 60, 10))]
CAT_RIGHT = [det("cat", 0.9, (50, 0, 60, 10)), det("dog", 0.8, (0, 0, 10, 10))]
CAT_ONLY = [det("cat", 0.9, (0, 0, 10, 10))]

# prompt a: 5 images (image 4 right but beyond the first four); b: 4 images listed out of order; c: 2 images
ITEMS = [
    *(item("a", "cat", "left of", "dog", d, i) for i, d in enumerate([CAT_LEFT, CAT_RIGHT, CAT_ONLY, [], CAT_LEFT])),
    *(item("b", "dog", "right of", "cat", d, i) for i, d in zip([3, 1, 0, 2], [CAT_LEFT, CAT_LEFT, CAT_RIGHT, []], strict=True)),
    item("c", "cat", "above", "dog", [det("cat", 0.5, (0, 0, 10, 10)), det("dog", 0.5, (0, 20, 10, 30))], 0),
    item("c", "cat", "above", "dog", [det("cat", 0.5, (0, 40, 10, 50)), det("dog", 0.5, (0, 20, 10, 30))], 1),
]


def test_visor_score_equals_functional_visor_in_one_update_and_in_merged_halves():
    whole = VISORScore()
    whole.update(ITEMS)
    expected = visor_details(ITEMS)
    assert whole.compute() == expected
    assert {k: expected[k] for k in VISOR_KEYS} == visor(ITEMS)
    assert expected["n_prompts_short"] == 1 and 0 < expected["visor_cond"] < 1 and expected["oa"] < 1
    first, second = VISORScore(), VISORScore()
    first.update(ITEMS[::2])  # every prompt split across the two halves
    second.update(ITEMS[1::2])
    first.merge_state(second)
    assert first.compute() == expected
    # without image_index, the order of the items is the image order (within one update)
    unindexed = [{k: v for k, v in i.items() if k != "image_index"} for i in ITEMS]
    metric = VISORScore()
    metric.update(unindexed)
    assert metric.compute() == visor_details(unindexed)


def test_visor_score_names_its_record_keys_and_refuses_what_visor_refuses():
    assert VISORScore in RECORD_METRICS and set(VISORScore.labels) == set(VISOR_KEYS)
    assert next(iter(VISORScore.labels)) == "visor_uncond" and VISORScore.track == "spatial"
    with pytest.raises(ValueError, match="^visor: no items to score$"):
        VISORScore().compute()
    twice = VISORScore()
    twice.update(ITEMS[:2])
    twice.update(ITEMS[1:3])
    with pytest.raises(ValueError, match="^visor: a prompt has a repeated image_index across updates$"):
        twice.compute()
    other = VISORScore()
    other.update(ITEMS[:1])
    other.update([item("a", "cat", "above", "dog", CAT_LEFT, 7)])
    with pytest.raises(ValueError, match="^visor: the items of a prompt disagree on subject, relation or object across updates$"):
        other.compute()


# ---------------------------------------------------------------------- settings and samples


def test_settings_default_to_four_images_and_the_detector_defaults():
    settings = SpatialRunSettings(input="p.parquet", adapter="sdxl-sg", model="m", output="out")
    assert settings.generation.images_per_sample == 4
    assert settings.detector.settings() == DetectorSettings()
    assert settings.detector.model == "google/owlv2-base-patch16-ensemble" and settings.detector.threshold == 0.1
    with pytest.raises(ValueError, match="unknown adapter"):
        SpatialRunSettings(input="p", adapter="nope", model="m", output="o")


def test_every_adapter_gets_its_conditioning_from_a_prompt(tmp_path):
    build_prompt_set(tmp_path / "p.parquet", max_prompts=5)
    prompt_set = load_prompts(tmp_path / "p.parquet")
    for prompt, sample in zip(prompt_set.prompts, prompt_samples(prompt_set), strict=True):
        task = GenerationTask.of(sample)
        assert sample.key == prompt.prompt_id and sample.image == b""
        assert ADAPTERS["diffusers-caption"].condition(task) == {"prompt": prompt.text}
        # the graph's text is the prompt without its articles: "dog to the left of apple"
        sg_text = f"{prompt.subject} {RELATION_PHRASES[prompt.relation]} {prompt.object}"
        assert ADAPTERS["diffusers-sg-text"].condition(task) == {"prompt": sg_text}
        graph = ADAPTERS["sdxl-sg"].condition(task)["scene_graph"]
        graph.validate()
        assert [o.name for o in graph.objects] == [prompt.subject, prompt.object]
        [relation] = graph.relations
        assert (relation.subject, relation.predicate, relation.object) == (0, RELATION_PHRASES[prompt.relation], 1)


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spatial") / "prompts.parquet"
    build_prompt_set(path, max_prompts=3)
    return path


def run_args(prompts: Path, models: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--input", str(prompts), "--adapter", "diffusers-caption", "--model", str(models / "sdxl"),
        "--output", str(output), "--generation.images-per-sample", "2", "--generation.steps", "2",
        "--generation.height", "64", "--generation.width", "64", "--generation.seed", "7",
        "--detector.model", str(models / "owlv2"), "--detector.threshold", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run_a(prompts, tiny_models_dir, tmp_path_factory) -> Path:
    """One finished run, in this process."""
    output = tmp_path_factory.mktemp("run") / "a"
    assert main(run_args(prompts, tiny_models_dir, output)) == 0
    return output


def stored_detections(run_dir: Path) -> pa.Table:
    files = sorted((run_dir / "detections").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f, schema=DETECTIONS_SCHEMA) for f in files])
    return table.sort_by([("key", "ascending"), ("image_index", "ascending")])


def reference_visor(rows: list[dict], prompts: dict) -> dict[str, float]:
    """VISOR by hand: per image the top-scoring box of each class, centroids compared along the relation's axis."""
    both, right, right_per_prompt = 0, 0, dict.fromkeys(prompts, 0)
    for row in rows:
        p = prompts[row["key"]]
        best = {}
        for d in row["detections"] or []:
            if d["label"] not in best or d["score"] > best[d["label"]]["score"]:
                best[d["label"]] = d
        if p.subject not in best or p.object not in best:
            continue
        both += 1
        (sx0, sy0, sx1, sy1), (ox0, oy0, ox1, oy1) = best[p.subject]["box"], best[p.object]["box"]
        sx, sy, ox, oy = (sx0 + sx1) / 2, (sy0 + sy1) / 2, (ox0 + ox1) / 2, (oy0 + oy1) / 2
        ok = {"left of": sx < ox, "right of": sx > ox, "above": sy < oy, "below": sy > oy}[p.relation]
        right += ok
        right_per_prompt[row["key"]] += ok and row["image_index"] < 4
    n = len(rows)
    scores = {"oa": both / n, "visor_uncond": right / n, "visor_cond": right / both if both else 0.0}
    for k in range(1, 5):
        scores[f"visor_{k}"] = sum(c >= k for c in right_per_prompt.values()) / len(prompts)
    return scores


def no_model(*args, **kwargs):
    raise AssertionError("a finished run must not load a model")


def test_a_spatial_run_writes_a_record_of_its_detections_resumes_and_verifies(
    run_a, prompts, tiny_models_dir, tmp_path, capsys, monkeypatch
):
    [record] = load_records([run_a])
    prompt_set = load_prompts(prompts)
    manifest = prompt_set.manifest
    assert (record.benchmark.name, record.benchmark.version) == (manifest["name"], manifest["version"])
    assert record.benchmark.content_hash == manifest["content_hash"] and record.benchmark.n_samples == 3
    assert record.model.adapter == "diffusers-caption" and record.model.conditioning == "caption"
    assert record.generation.images_per_sample == 2 and set(record.metrics) == set(VISOR_KEYS)

    # the seeds are the prompt set's seed rule
    images = image_index(run_a).to_pylist()
    assert [(r["key"], r["image_index"]) for r in images] == [(p.prompt_id, i) for p in prompt_set.prompts for i in (0, 1)]
    assert all(r["seed"] == image_seed(r["key"], r["image_index"], seed=7) for r in images)

    # the metrics are VISOR of the stored detections, recomputed by hand; the tiny detector found both objects
    rows = stored_detections(run_a).to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    expected = reference_visor(rows, {p.prompt_id: p for p in prompt_set.prompts})
    assert record.metrics == pytest.approx(expected, rel=1e-12, abs=0)
    details = record.metric_details["visor"]
    assert details["n_both"] > 0 and details["n_images"] == 6 and details["detection_status"] == {"ok": 6}
    assert details["n_prompts"] == 3 and details["n_prompts_short"] == 3  # 2 images each: allowed, stated
    assert details["detector"]["threshold"] == 0.0
    assert details["detector_weights_sha256"] == weights_sha256(tiny_models_dir / "owlv2")
    assert record.metric_details["images"] == {"n_images": 6, "sha256": images_digest(run_a)}
    assert record.provenance.config["detector"]["model"] == str((tiny_models_dir / "owlv2").resolve())

    # a re-run loads no model, rewrites nothing but the record, and gives the same record
    files = sorted(run_a.rglob("part-*.parquet"))
    stamps = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setattr("benchmark.generate.ImageGenerator", no_model)
    monkeypatch.setattr("benchmark.spatial.detect.ObjectDetector", no_model)
    capsys.readouterr()
    assert main(run_args(prompts, tiny_models_dir, run_a)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"run_id": record.run_id, "metrics": record.metrics}
    assert "3 prompts have fewer than 4 images" in err
    [again] = load_records([run_a])
    assert again.metrics == record.metrics and again.run_id == record.run_id
    assert [f.stat().st_mtime_ns for f in sorted(run_a.rglob("part-*.parquet"))] == stamps

    # other settings in the same run directory are refused before anything runs
    with pytest.raises(RunIdentityError, match=r"different settings \(detector\)"):
        main(run_args(prompts, tiny_models_dir, run_a, "--detector.threshold", "0.5"))
    with pytest.raises(RunIdentityError, match=r"different settings \(generation\)"):
        main(run_args(prompts, tiny_models_dir, run_a, "--generation.steps", "3"))
    monkeypatch.undo()

    # verify re-detects the stored images in a scratch folder: the record checks out
    assert leaderboard_main(["verify", str(run_a / "result.json")]) == 0
    assert "ok" in capsys.readouterr().out
    # ... and against a folder without its images it fails, saying why
    empty = tmp_path / "empty"
    assert leaderboard_main(["verify", str(run_a / "result.json"), "--run-dir", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"MISMATCH cannot recompute: {empty}: 6 images missing and 0 unexpected for 3 prompts x 2 images" in err
    # the leaderboard shows the record in the spatial track's table only
    assert leaderboard_main(["render", str(run_a), "--output", str(tmp_path / "site"), "--grid-images", "0"]) == 0
    markdown = (tmp_path / "site" / "leaderboard.md").read_text()
    assert "### Spatial track: VISOR" in markdown and "### Question track" not in markdown
    assert "| VISOR" in markdown and "SG-IoU" not in markdown


@pytest.mark.slow
def test_two_ray_actors_give_the_same_detections_and_metrics(ray_local, run_a, prompts, tiny_models_dir, tmp_path):
    b = tmp_path / "b"
    assert main(run_args(prompts, tiny_models_dir, b, "--num-actors", "2", "--chunk-size", "1")) == 0
    a_record, b_record = load_records([run_a, b])
    assert images_digest(b) == images_digest(run_a)
    assert stored_detections(b).equals(stored_detections(run_a))
    assert len(list((b / "detections").glob("part-*.parquet"))) == 6  # one image per chunk
    assert b_record.metrics == a_record.metrics and b_record.run_id == a_record.run_id
