"""Hostile inputs to CompSG-Bench: undecodable generated images at the judge, failed judgements in the IoU means,
non-finite features in every image metric, malformed result records at the leaderboard.

Each fault must end as a clear per-item status or a clear up-front error (naming what and where), never as a
traceback, a blind score or a silently wrong number. Expected values are written out by hand.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from benchmark.judge import JUDGEMENTS_SCHEMA, GraphJudge, JudgeItem, JudgeSettings, score_judgements
from benchmark.leaderboard import RecordError, load_records, main
from benchmark.metrics import (
    CMMD,
    FID,
    KID,
    CLIPImageScore,
    CLIPScore,
    Precomputed,
    cmmd,
    feature_stats,
    kernel_inception_distance,
)
from benchmark.sample_set import BenchmarkSample
from pipelines.engines.base import Generation
from schemas import BenchmarkInfo, BenchmarkResult, GenerationSettings, ModelInfo, Provenance, SceneGraph


def sg(objects: list[str], relations: list[tuple[int, str, int]] = ()) -> SceneGraph:
    return SceneGraph.from_json(
        {
            "objects": [{"id": i, "name": n} for i, n in enumerate(objects)],
            "relations": [{"subject": s, "predicate": p, "object": o} for s, p, o in relations],
        }
    )


TARGET = sg(["man", "horse", "hat"], [(0, "riding", 1), (0, "wearing", 2)])


def png(seed: int, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- the judge


class RecordingGenerator:
    """Stands in for the judge VLM: remembers every request and answers with a fixed graph."""

    def __init__(self, answer: str) -> None:
        self.answer, self.requests = answer, []

    def generate(self, requests):
        self.requests.extend(requests)
        return [Generation(text=self.answer) for _ in requests]


def make_judge(answer: str, batch_size: int) -> GraphJudge:
    judge = GraphJudge.__new__(GraphJudge)  # no model: the generator is the stand-in above
    judge.settings = JudgeSettings(model="stand-in", batch_size=batch_size)
    judge.generator = RecordingGenerator(answer)
    return judge


@pytest.mark.parametrize("batch_size", [1, 3])
def test_judge_never_scores_an_undecodable_image(batch_size):
    good = png(1)
    items = [
        JudgeItem("a", 0, good, TARGET.to_json()),
        JudgeItem("b", 0, b"definitely not an image", TARGET.to_json()),
        JudgeItem("c", 0, good[: len(good) // 3], TARGET.to_json()),  # truncated PNG
        JudgeItem("d", 1, png(2), TARGET.to_json()),
        JudgeItem("e", 0, b"", TARGET.to_json()),
    ]
    decodable = []
    for item in items:  # the oracle: what PIL itself can decode
        try:
            Image.open(io.BytesIO(item.png)).load()
            decodable.append(True)
        except Exception:
            decodable.append(False)
    assert decodable == [True, False, False, True, False]

    judge = make_judge(TARGET.to_json(), batch_size)
    rows = judge(items)
    # only the decodable images reached the model, each with its image
    assert len(judge.generator.requests) == 2
    assert all(request.image is not None for request in judge.generator.requests)
    # one row per item, in item order; the undecodable ones are failed items with the reason
    assert [(r["key"], r["image_index"]) for r in rows] == [("a", 0), ("b", 0), ("c", 0), ("d", 1), ("e", 0)]
    for row, ok in zip(rows, decodable, strict=True):
        if ok:
            assert row["status"] == "ok" and row["error"] is None
            assert SceneGraph.from_json(row["scene_graph"]) == TARGET
        else:
            assert row["status"] == "failed" and row["scene_graph"] is None and row["raw_output"] is None
            assert row["error"].startswith("undecodable image: ")
    pa.Table.from_pylist(rows, schema=JUDGEMENTS_SCHEMA)  # the rows fit the stored schema


def sample(key: str, graph: SceneGraph) -> BenchmarkSample:
    return BenchmarkSample(key=key, caption="", scene_graph=graph, sg_text=graph.to_text(), image=b"")


def judgement(key: str, index: int, graph: SceneGraph | None, status: str, error: str | None = None) -> dict:
    return {
        "key": key,
        "image_index": index,
        "scene_graph": None if graph is None else graph.to_dict(),
        "status": status,
        "error": error,
        "raw_output": None if graph is None else graph.to_json(),
    }


def test_failed_judgements_count_as_zero_in_the_iou_means():
    samples = [sample("a", TARGET), sample("b", TARGET), sample("empty", SceneGraph())]
    partial = sg(["man", "horse", "dog"], [(0, "riding", 1), (2, "chasing", 1)])  # 1/3, 2/4, 1/3 against TARGET
    judgements = pa.Table.from_pylist(
        [
            judgement("a", 0, TARGET, "ok"),  # 1, 1, 1
            judgement("a", 1, None, "failed", "undecodable image: cannot identify image file"),  # 0, 0, 0
            judgement("b", 0, partial, "repaired", "repaired: ..."),  # 1/3, 1/2, 1/3
            judgement("b", 1, None, "failed", "invalid JSON: Expecting value (char 0)"),  # 0, 0, 0
            # a failed item scores 0 even against an empty target, where an empty graph would score 1
            judgement("empty", 0, None, "failed", "undecodable image: truncated"),
        ],
        schema=JUDGEMENTS_SCHEMA,
    )
    means, details = score_judgements(samples, judgements)
    assert means == pytest.approx(
        {"sg_iou": (1 + 1 / 3) / 5, "entity_iou": (1 + 1 / 2) / 5, "relation_iou": (1 + 1 / 3) / 5}, abs=1e-12
    )
    assert details["n_images"] == 5 and details["n_failed"] == 3
    per_item = {"sg_iou": [1, 0, 1 / 3, 0, 0], "entity_iou": [1, 0, 1 / 2, 0, 0], "relation_iou": [1, 0, 1 / 3, 0, 0]}
    assert {key: details[f"{key}_std"] for key in per_item} == pytest.approx(
        {key: statistics.pstdev(values) for key, values in per_item.items()}, abs=1e-12
    )
    assert details["judge_status"] == {"ok": 1, "failed": 3, "repaired": 1}
    assert details["failed"] == {
        "a:1": "undecodable image: cannot identify image file",
        "b:1": "invalid JSON: Expecting value (char 0)",
        "empty:0": "undecodable image: truncated",
    }
    json.dumps(details)  # goes into the result record as is


# ---------------------------------------------------------------------- non-finite features


def poison(features: np.ndarray, rows: list[int], value: float) -> np.ndarray:
    out = features.copy()
    for i, row in enumerate(rows):
        out[row, (7 * i) % out.shape[1]] = value
    return out


def inception_metric(cls, real: np.ndarray, fake: np.ndarray):
    metric = cls(Precomputed(), subsets=2) if cls is KID else cls(Precomputed())
    metric.update_features(real, real=True)
    metric.update_features(fake, real=False)
    return metric


@pytest.mark.parametrize("cls", [FID, KID])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_inception_metrics_reject_non_finite_features(cls, bad):
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((6, 2048)), rng.standard_normal((5, 2048))
    name = cls.__name__
    with pytest.raises(ValueError, match=rf"^{name}: non-finite values \(NaN or inf\) in 2 of 6 reference rows;"):
        inception_metric(cls, poison(real, [1, 4], bad), fake).compute()
    with pytest.raises(ValueError, match=rf"^{name}: .* in 1 of 5 generated rows;"):
        inception_metric(cls, real, poison(fake, [3], bad)).compute()
    with pytest.raises(ValueError, match=rf"^{name}: .* in 3 of 6 reference rows and 1 of 5 generated rows;"):
        inception_metric(cls, poison(real, [0, 2, 5], bad), poison(fake, [0], bad)).compute()
    assert math.isfinite(inception_metric(cls, real, fake).compute()["fid" if cls is FID else "kid_mean"])


def test_kid_rejects_a_nan_its_subsets_would_not_have_drawn():
    # 1 subset of 2 out of 200 rows: the NaN row is almost never drawn, so the value used to look finite
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    with pytest.raises(ValueError, match=r"^KID: .* in 1 of 200 x rows;"):
        kernel_inception_distance(poison(x, [123], math.nan), y, subsets=1, subset_size=2)
    with pytest.raises(ValueError, match=r"^KID: .* in 2 of 200 y rows;"):
        kernel_inception_distance(x, poison(y, [0, 199], math.inf), subsets=1, subset_size=2)
    with pytest.raises(ValueError, match=r"^feature_stats: .* in 1 of 200 features rows;"):
        feature_stats(poison(x, [5], math.nan))


def test_clip_metrics_reject_non_finite_embeddings():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 16)), rng.standard_normal((4, 16))
    with pytest.raises(ValueError, match=r"^CLIP-T: .* in 1 of 4 generated image rows;"):
        CLIPScore(Precomputed()).update_embeddings(poison(a, [2], math.nan), b)
    with pytest.raises(ValueError, match=r"^CLIP-T: .* in 2 of 4 text rows;"):
        CLIPScore(Precomputed()).update_embeddings(a, poison(b, [0, 1], math.inf))
    with pytest.raises(ValueError, match=r"^CLIP-I: .* in 1 of 4 generated rows and 1 of 4 reference rows;"):
        CLIPImageScore(Precomputed()).update_embeddings(poison(a, [0], math.nan), poison(b, [3], -math.inf))

    metric = CMMD(Precomputed())
    metric.update_embeddings(poison(a, [1, 2, 3], math.nan), real=True)
    metric.update_embeddings(b, real=False)
    with pytest.raises(ValueError, match=r"^CMMD: .* in 3 of 4 reference rows;"):
        metric.compute()
    with pytest.raises(ValueError, match=r"^CMMD: .* in 1 of 4 y rows;"):
        cmmd(a, poison(b, [0], math.nan))


# ---------------------------------------------------------------------- malformed result records


def good_record(model_id: str = "model-a") -> BenchmarkResult:
    return BenchmarkResult(
        benchmark=BenchmarkInfo(version="1.0", content_hash="a" * 64, n_samples=3),
        model=ModelInfo(adapter="diffusers-caption", model_id=model_id, conditioning="caption"),
        generation=GenerationSettings(
            seed=1, images_per_sample=1, num_inference_steps=2, guidance_scale=5.0, height=64, width=64
        ),
        metrics={"sg_iou": 0.25, "fid": 30.0},
        provenance=Provenance(
            package_version="0.1.0", packages={}, hardware={"cpu_count": 1}, wall_time_s=1.0, created_at="2025-01-01"
        ),
    )


def with_metric(value_json: str) -> str:
    """A valid record's JSON text with the FID replaced by the literal `value_json`."""
    data = json.loads(good_record("hostile").to_json())
    data["metrics"]["fid"] = "PLACEHOLDER"
    return json.dumps(data).replace('"PLACEHOLDER"', value_json)


BAD_FILES = {
    "not_json.json": ("{ this is not json", "not valid JSON: "),
    "empty.json": ("", "not valid JSON: "),
    "list.json": ("[1, 2, 3]", "not a result record: a JSON array, not an object"),
    "wrong_shape.json": ('{"metrics": {"fid": 1.0}}', "benchmark: Field required"),
    "bool.json": (with_metric("true"), "metrics: metrics must be real numbers (not booleans or strings); not a number: fid = true (a boolean)"),
    "string.json": (with_metric('"27.5"'), 'not a number: fid = "27.5" (a string)'),
    "nan.json": (with_metric("NaN"), "metrics: metrics must be finite numbers; not finite: fid"),
    "overflow.json": (with_metric("1e999"), "not finite: fid"),
}


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    for name, (text, _) in BAD_FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "latin1.json").write_bytes(b'{"model": "caf\xe9"}')
    (tmp_path / "run").mkdir()  # a run directory without result.json
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "result.json").write_text(good_record().to_json())
    return tmp_path


def test_every_malformed_record_is_reported_with_its_path(records_dir: Path):
    paths = [records_dir / "ok", *(records_dir / name for name in BAD_FILES), records_dir / "latin1.json",
             records_dir / "run", records_dir / "missing.json"]  # fmt: skip
    with pytest.raises(RecordError) as raised:
        load_records(paths)
    problems = {path.name: problem for path, problem in raised.value.problems.items()}
    assert len(problems) == len(BAD_FILES) + 3
    for name, (_, expected) in BAD_FILES.items():
        assert expected in problems[name], name
    assert problems["latin1.json"].startswith("not UTF-8 text")
    assert problems["result.json"].startswith("cannot read")  # run/result.json
    assert problems["missing.json"].startswith("cannot read")
    message = str(raised.value)
    assert message.startswith(f"{len(problems)} invalid result record(s):")
    assert f"{records_dir / 'bool.json'}: not a valid result record: metrics:" in message
    assert f"{records_dir / 'run' / 'result.json'}: cannot read" in message


def test_render_stops_with_a_clear_error_or_skips_with_warnings(records_dir: Path, capsys):
    site = records_dir / "site"
    bad = [str(records_dir / name) for name in ("bool.json", "not_json.json", "string.json")]
    assert main(["render", str(records_dir / "ok"), *bad, "--output", str(site)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("leaderboard: error: 3 invalid result record(s):")
    assert all(path in err for path in bad) and "fid = true (a boolean)" in err and 'fid = "27.5"' in err
    assert not site.exists()  # nothing half-rendered

    assert main(["render", str(records_dir / "ok"), *bad, "--output", str(site), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: skipped ")]
    assert [w.split(": ")[1].removeprefix("skipped ") for w in warnings] == bad
    markdown = (site / "leaderboard.md").read_text()
    assert "model-a" in markdown and "hostile" not in markdown and "rendered 1 records" in captured.out

    assert main(["render", *bad, "--output", str(records_dir / "none"), "--skip-invalid"]) == 2
    assert "no valid result record" in capsys.readouterr().err
    assert main(["verify", bad[0]]) == 2
    assert "bool.json" in capsys.readouterr().err
