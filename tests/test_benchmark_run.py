"""CompSG-Bench end to end on CPU with tiny random models: generate on Ray actors, judge, score, record,
render, verify; and the cheap pieces (adapters, seeds, config, run-directory identity) without models."""

from __future__ import annotations

import io
import json
import re
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.linalg
import torch
import torch_fidelity.metric_kid as tf_kid
from test_benchmark_dataset import export_rows, png, write_export
from test_leaderboard import EVIL, check_page_in_browser, record

from benchmark.dataset import build_benchmark
from benchmark.features import REFERENCE_INDEX, FeatureSettings
from benchmark.generate import (
    ADAPTERS,
    GenerationTask,
    generate_images,
    image_index,
    image_seed,
    images_digest,
    iter_images,
)
from benchmark.judge import JUDGEMENTS_SCHEMA, read_judgements
from benchmark.leaderboard import load_records
from benchmark.leaderboard import main as leaderboard_main
from benchmark.questions import generate_questions
from benchmark.questions.answer import ANSWERS_SCHEMA, read_answers
from benchmark.run import PROG, compute_metrics, main, run_benchmark
from benchmark.run_settings import BenchRunSettings, upgrade_run_identity
from benchmark.sample_set import load_benchmark
from schemas import DEFAULT_LIMITS, BenchmarkResult, Limits, SceneGraph
from schemas.runs import RunIdentityError, check_run_identity
from schemas.settings import parse_settings


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A frozen benchmark of two samples (a third row has too few relations)."""
    root = tmp_path_factory.mktemp("compsg")
    write_export(root / "export", {"test": export_rows([5, 6, 3])})
    build_benchmark(root / "export", root / "bench.parquet", split="test", min_relations=5)
    return root / "bench.parquet"


@pytest.fixture(scope="module")
def models(tiny_models_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoints, plus an SDXL-SG directory (a small SG encoder on top of the tiny SDXL)."""
    import torch

    from training.pipeline import SDXLSGPipeline
    from training.sg_encoder import SGEncoder

    root = tmp_path_factory.mktemp("sdxl_sg")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = SGEncoder(text_dim=96, hidden_dim=16, mlp_hidden_dim=16, num_layers=1)
    SDXLSGPipeline.save_encoder(root / "model", encoder, base_model=tiny_models_dir / "sdxl")
    return {
        "sdxl_sg": root / "model",
        "judge": tiny_models_dir / "qwen2_5_vl",
        "clip": tiny_models_dir / "open_clip",
        "inception": tiny_models_dir / "inception" / "pt_inception-random.pth",
    }


def run_args(bench: Path, models: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return [
        "--input", str(bench), "--adapter", "sdxl-sg", "--model", str(models["sdxl_sg"]), "--output", str(output),
        "--generation.images-per-sample", "1", "--generation.steps", "2", "--generation.height", "64",
        "--generation.width", "64", "--generation.seed", "7",
        "--judge.model", str(models["judge"]), "--judge.max-new-tokens", "256", "--judge.limits.max-objects", "4",
        "--judge.limits.max-relations", "4", "--judge.limits.max-attributes", "1",
        "--clip.model", str(models["clip"]), "--cmmd.model", str(models["clip"]),
        "--inception.weights", str(models["inception"]), "--kid.subsets", "10",
        "--features.batch-size", "3",  # 2 references + 2 generated images: two feature chunks, 3 + 1
        *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------- cheap pieces


def test_adapters_condition_on_their_field(bench):
    sample = load_benchmark(bench).samples[0]
    task = GenerationTask.of(sample)
    assert ADAPTERS["diffusers-caption"].condition(task) == {"prompt": sample.caption}
    assert ADAPTERS["diffusers-sg-text"].condition(task) == {"prompt": sample.sg_text}
    graph = ADAPTERS["sdxl-sg"].condition(task)["scene_graph"]
    assert isinstance(graph, SceneGraph) and graph == sample.scene_graph


def test_image_seeds_depend_only_on_seed_key_and_index():
    assert image_seed(42, "k", 0) == image_seed(42, "k", 0)
    seeds = {image_seed(s, k, i) for s in (42, 43) for k in ("a", "b") for i in range(3)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)


def parse(argv: list[str]) -> BenchRunSettings:
    return parse_settings(BenchRunSettings, argv, prog=PROG, description="")


def test_settings_from_yaml_and_command_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        "adapter: diffusers-sg-text\nmodel: m\ngeneration:\n  steps: 12\n  seed: 3\n"
        "judge:\n  restrict_vocabulary: false\n  model: j\n"
    )
    parsed = parse(["--config", str(config), "--input", "b", "--output", "o", "--generation.steps", "3"])
    assert parsed == BenchRunSettings(
        input="b", adapter="diffusers-sg-text", model="m", output="o",
        generation={"steps": 3, "seed": 3}, judge={"restrict_vocabulary": False, "model": "j"},
    )  # fmt: skip
    named = parse(["--input", "b", "--adapter", "sdxl-sg", "--model", "m", "--output", "o", "--display-name", "SDXL-SG (ours)"])
    assert named.display_name == "SDXL-SG (ours)" and named.to_record()["display_name"] == "SDXL-SG (ours)"
    assert parsed.display_name is None  # the leaderboard then names the run by its model id
    for yaml_text, argv, message in [
        ("steps: 3\n", [], "unknown setting 'steps'"),  # the generation settings are a group now
        ("judge_model: j\n", [], "unknown setting 'judge_model'"),
        ("", ["--input", "b"], "--adapter is required"),
        ("", ["--input", "b", "--adapter", "sdxl", "--model", "m", "--output", "o"], "--adapter: .*unknown adapter"),
        ("adapter: sdxl-sg\nmodel: m\ninput: b\noutput: o\n", ["--kid.subsets", "0"], "--kid.subsets: .*greater than or equal to 1"),
        ("adapter: sdxl-sg\nmodel: m\ninput: b\noutput: o\n", ["--clip.text", "title"], "--clip.text: .*'caption' or 'sg_text'"),
        ("adapter: sdxl-sg\nmodel: m\ninput: b\noutput: o\n", ["--judge.limits.max-objects", "0"], "--judge.limits.max-objects: .*greater than or equal to 1"),
        ("bench: b\n", [], "unknown setting 'bench'"),  # the benchmark file is --input now (records still read)
        ("judge:\n  max_objects: 3\n", [], "unknown setting 'judge.max_objects'"),  # judge.limits.max_objects now
    ]:
        config.write_text(yaml_text)
        with pytest.raises(SystemExit) as exited:
            parse(["--config", str(config), *argv])
        assert exited.value.code == 2
        assert re.search(message, capsys.readouterr().err), message


DEFAULT_LIMITS_JSON = asdict(DEFAULT_LIMITS)

# `provenance.config` as benchmark.run wrote it before its settings were grouped (flat keys), with the values
# that differ from the defaults changed.
LEGACY_CONFIG = {
    "bench": "/data/bench.parquet", "adapter": "sdxl-sg", "model": "/models/sdxl-sg", "output": "/runs/a",
    "images_per_sample": 2, "steps": 20, "guidance": 7.5, "height": 512, "width": 768, "seed": 7,
    "dtype": "bfloat16", "scheduler": "EulerDiscreteScheduler", "num_actors": 4, "chunk_size": 2,
    "judge_model": "/models/judge", "judge_restrict_vocabulary": False, "judge_max_new_tokens": 256,
    "judge_batch_size": 2, "judge_max_objects": 5, "judge_max_relations": 6, "judge_max_attributes": 1,
    "synonyms": "/data/synonyms.yaml", "clip_model": "/models/clip", "clip_pretrained": None,
    "clip_t_text": "sg_text", "cmmd_clip_model": "ViT-B-16", "cmmd_clip_pretrained": "laion2b",
    "inception_weights": "/models/pt_inception.pth", "allow_download": True, "kid_subsets": 10,
    "kid_subset_size": 50, "feature_batch_size": 3, "display_name": "old run",
}  # fmt: skip


def test_records_of_flat_settings_read_as_the_same_run():
    settings = BenchRunSettings.from_record(LEGACY_CONFIG)
    assert settings == BenchRunSettings.from_record(settings.to_record())  # today's records read back too
    assert settings.to_record() == {
        "input": "/data/bench.parquet", "adapter": "sdxl-sg", "model": "/models/sdxl-sg", "output": "/runs/a",
        "num_actors": 4, "chunk_size": 2, "display_name": "old run",
        "generation": {
            "images_per_sample": 2, "steps": 20, "guidance": 7.5, "height": 512, "width": 768, "seed": 7,
            "dtype": "bfloat16", "scheduler": "EulerDiscreteScheduler", "long_prompt": False,
        },
        "judge": {
            "model": "/models/judge", "restrict_vocabulary": False, "max_new_tokens": 256, "batch_size": 2,
            "limits": {**DEFAULT_LIMITS_JSON, "max_objects": 5, "max_relations": 6, "max_attributes": 1},
            "dtype": "auto", "synonyms": "/data/synonyms.yaml",
        },
        "questions": {"enabled": False, "max_new_tokens": 32},  # records from before the track did not run it
        "clip": {"model": "/models/clip", "pretrained": None, "text": "sg_text"},
        "cmmd": {"model": "ViT-B-16", "pretrained": "laion2b"},
        "inception": {"weights": "/models/pt_inception.pth", "allow_download": True},
        "kid": {"subsets": 10, "subset_size": 50},
        "features": {"batch_size": 3},
    }  # fmt: skip
    # what the images, judgements and features depend on is what the flat settings gave
    assert settings.generation_settings().model_dump() == {
        "seed": 7, "images_per_sample": 2, "num_inference_steps": 20, "guidance_scale": 7.5, "height": 512,
        "width": 768, "scheduler": "EulerDiscreteScheduler", "dtype": "bfloat16",
    }  # fmt: skip
    assert asdict(settings.judge_settings()) == {
        "model": "/models/judge", "restrict_vocabulary": False, "max_new_tokens": 256, "batch_size": 2,
        "limits": {**DEFAULT_LIMITS_JSON, "max_objects": 5, "max_relations": 6, "max_attributes": 1},
        "dtype": "auto",
    }  # fmt: skip
    assert settings.features_settings() == FeatureSettings(
        inception_weights="/models/pt_inception.pth", allow_download=True, clip_model="/models/clip",
        clip_pretrained=None, cmmd_clip_model="ViT-B-16", cmmd_clip_pretrained="laion2b", batch_size=3,
    )  # fmt: skip


# `provenance.config` as benchmark.run wrote it after its settings were grouped, before the benchmark file was
# `input` (it was `bench`) and before the judge's graph bounds were `judge.limits` (they were flat in `judge`).
GROUPED_CONFIG = {
    "bench": "/data/bench.parquet", "adapter": "sdxl-sg", "model": "/models/sdxl-sg", "output": "/runs/a",
    "num_actors": 0, "chunk_size": 8, "display_name": None,
    "generation": {
        "images_per_sample": 1, "steps": 40, "guidance": 5.0, "height": 1024, "width": 1024, "seed": 42,
        "dtype": "float32", "scheduler": None,
    },
    "judge": {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct", "restrict_vocabulary": True, "max_new_tokens": 1024,
        "batch_size": 1, "max_objects": 5, "max_relations": 6, "max_attributes": 1, "dtype": "auto",
        "synonyms": None,
    },
    "clip": {"model": "ViT-B-32", "pretrained": "openai", "text": "caption"},
    "cmmd": {"model": "ViT-L-14-336", "pretrained": "openai"},
    "inception": {"weights": None, "allow_download": False},
    "kid": {"subsets": 100, "subset_size": 1000},
    "features": {"batch_size": 32},
}  # fmt: skip


def test_records_of_the_bench_key_and_flat_judge_bounds_read_as_the_same_run():
    settings = BenchRunSettings.from_record(GROUPED_CONFIG)
    assert settings == BenchRunSettings(
        input="/data/bench.parquet", adapter="sdxl-sg", model="/models/sdxl-sg", output="/runs/a",
        judge={"limits": Limits(max_objects=5, max_relations=6, max_attributes=1)}, questions={"enabled": False},
    )  # fmt: skip
    record = settings.to_record()
    assert "bench" not in record and record["input"] == "/data/bench.parquet"
    assert record["judge"]["limits"] == {**DEFAULT_LIMITS_JSON, "max_objects": 5, "max_relations": 6, "max_attributes": 1}
    assert BenchRunSettings.from_record(record) == settings  # today's records read back too
    # a record with a bound of its own in today's layout is not overridden by the defaults
    nested = {**record, "judge": {**record["judge"], "limits": {"max_objects": 7}}}
    assert BenchRunSettings.from_record(nested).judge.limits == Limits(max_objects=7)
    # today's records hold the question track's settings: it stays on where it ran
    today = BenchRunSettings(input="b", adapter="sdxl-sg", model="m", output="o").to_record()
    assert today["questions"] == {"enabled": True, "max_new_tokens": 32}
    assert BenchRunSettings.from_record(today).questions.enabled is True


def test_run_directory_pinned_before_the_judge_bounds_were_nested_resumes(tmp_path):
    """`run.json` of a run with default settings, written by hand as benchmark.run pinned it before the judge's
    graph bounds were a nested `Limits`: the same run, so it still resumes; another bound is still refused."""
    settings = BenchRunSettings(input="b", adapter="sdxl-sg", model="m", output="o", generation={"scheduler": "S"})
    assert settings.generation_settings().model_dump() == {
        "seed": 42, "images_per_sample": 1, "num_inference_steps": 40, "guidance_scale": 5.0, "height": 1024,
        "width": 1024, "scheduler": "S", "dtype": "float32",
    }  # fmt: skip
    assert settings.features_settings() == FeatureSettings(None, False, "ViT-B-32", "openai", "ViT-L-14-336", "openai", 32)
    identity = {
        "benchmark": {"name": "CompSG-Bench", "version": "1", "content_hash": "abc", "n_samples": 2},
        "model": {"adapter": "sdxl-sg", "model_id": "m", "weights_hash": None, "conditioning": "scene_graph"},
        "generation": settings.generation_settings().model_dump(),
        "judge": asdict(settings.judge_settings()),
    }
    old_judge = {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct", "restrict_vocabulary": True, "max_new_tokens": 1024,
        "batch_size": 1, "max_objects": 64, "max_relations": 128, "max_attributes": 8, "dtype": "auto",
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps({**identity, "judge": old_judge}, indent=2, sort_keys=True))
    check_run_identity(tmp_path, identity, upgrade=upgrade_run_identity)  # resumes
    assert json.loads((tmp_path / "run.json").read_text())["judge"] == old_judge  # the file is left as it was
    with pytest.raises(RunIdentityError):  # the old layout is only accepted through the upgrade
        check_run_identity(tmp_path, identity)
    fewer = BenchRunSettings(input="b", adapter="sdxl-sg", model="m", output="o", judge={"limits": {"max_objects": 3}})
    with pytest.raises(RunIdentityError, match=r"different settings \(judge\)"):
        check_run_identity(tmp_path, {**identity, "judge": asdict(fewer.judge_settings())}, upgrade=upgrade_run_identity)
    # a run.json of today's layout is compared as it is
    (tmp_path / "run.json").write_text(json.dumps(identity))
    check_run_identity(tmp_path, identity, upgrade=upgrade_run_identity)


def test_resolved_settings_make_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sdxl").mkdir()
    (tmp_path / "clip").mkdir()
    settings = BenchRunSettings(
        input="bench.parquet", adapter="sdxl-sg", model="sdxl", output="runs/a",
        judge={"model": "Qwen/Qwen2.5-VL-7B-Instruct", "synonyms": "syn.yaml"},
        clip={"model": "clip"}, inception={"weights": "w.pth"},
    ).resolved()  # fmt: skip
    assert (settings.input, settings.output) == (tmp_path / "bench.parquet", tmp_path / "runs" / "a")
    assert (settings.model, settings.clip.model) == (str(tmp_path / "sdxl"), str(tmp_path / "clip"))
    assert (settings.judge.model, settings.cmmd.model) == ("Qwen/Qwen2.5-VL-7B-Instruct", "ViT-L-14-336")  # hub ids
    assert (settings.judge.synonyms, settings.inception.weights) == (tmp_path / "syn.yaml", tmp_path / "w.pth")


def test_diffusers_adapter_generates_resumably(bench, tiny_models_dir, tmp_path):
    from PIL import Image

    samples = load_benchmark(bench).samples[:1]
    settings = BenchRunSettings(
        input="b", adapter="diffusers-sg-text", model=str(tiny_models_dir / "sdxl"), output="o",
        generation={"steps": 2, "height": 32, "width": 32, "images_per_sample": 2},
    ).generation_settings()  # fmt: skip
    assert settings.scheduler == "EulerDiscreteScheduler"  # read from model_index.json
    index = generate_images(samples, "diffusers-sg-text", str(tiny_models_dir / "sdxl"), settings, tmp_path, chunk_size=1)
    assert index.column("key").to_pylist() == [s.key for s in samples for _ in range(2)]
    assert index.column("seed").to_pylist() == [image_seed(42, s.key, i) for s in samples for i in range(2)]
    assert len(list((tmp_path / "images").glob("part-*.parquet"))) == 1
    for table in iter_images(tmp_path):
        assert {Image.open(io.BytesIO(p)).size for p in table.column("png").to_pylist()} == {(32, 32)}
    digest = images_digest(tmp_path)
    # a resumed run with one more sample generates only that one
    more = load_benchmark(bench).samples
    generate_images(more, "diffusers-sg-text", str(tiny_models_dir / "sdxl"), settings, tmp_path, chunk_size=1)
    assert len(list((tmp_path / "images").glob("part-*.parquet"))) == 2
    assert images_digest(tmp_path) != digest


def test_run_directory_of_another_configuration_is_refused(bench, models, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"benchmark": {}, "model": {}, "generation": {}, "judge": {}}))
    with pytest.raises(ValueError, match=r"holds a run with different settings \(benchmark, generation, judge, model\)"):
        run_benchmark(parse(run_args(bench, models, out)))


def test_verify_fails_when_images_are_missing(bench, tmp_path, capsys):
    settings = BenchRunSettings(input=bench, adapter="sdxl-sg", model="m", output=tmp_path)
    legacy = {**LEGACY_CONFIG, "bench": str(bench), "output": str(tmp_path)}
    grouped = {**GROUPED_CONFIG, "bench": str(bench), "output": str(tmp_path)}
    # records of today, of before the settings groups (the legacy one asks for 2 images per sample) and of before
    # `bench` was `input` and the judge's bounds were `judge.limits`
    for config, missing in ((settings.to_record(), 2), (legacy, 4), (grouped, 2)):
        stub = record("m", 0.5, 20.0).model_copy(update={"benchmark": load_benchmark(bench).info()})
        stub = stub.model_copy(update={"provenance": stub.provenance.model_copy(update={"config": config})})
        (tmp_path / "result.json").write_text(stub.to_json())
        assert leaderboard_main(["verify", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "cannot recompute" in err and f"{missing} images missing" in err


# ---------------------------------------------------------------------- end to end


def tamper(run_dir: Path) -> None:
    """Replace the pixels of one stored image, keeping its key, index and seed."""
    part = sorted((run_dir / "images").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pngs = table.column("png").to_pylist()
    pngs[0] = png(12345)
    pq.write_table(table.set_column(table.schema.get_field_index("png"), "png", pa.array(pngs, pa.binary())), part)


def stored_features(run_dir: Path) -> pa.Table:
    """Every image-feature row stored under a run, sorted by (key, image_index)."""
    parts = sorted((run_dir / "features").rglob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts).sort_by([("key", "ascending"), ("image_index", "ascending")])


# ---------------------------------------------------------------------- reference recomputation
# A record's metrics recomputed from what its run stored (features/, judge/), pairing rows by (key, image_index),
# with code that shares nothing with `benchmark.metrics`: scipy's sqrtm, torch-fidelity, numpy written out from
# the papers' definitions, plain Python sets.


def feature_rows(run_dir: Path) -> dict[tuple[str, int], dict]:
    """The rows of a run's one feature folder (RUN_DIR/features/<settings digest>/part-*.parquet) by id."""
    (folder,) = (run_dir / "features").iterdir()
    rows = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))).to_pylist()
    by_id = {(r["key"], r["image_index"]): r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


def reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """pytorch-fid / clean-fid: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), float64, the real part of sqrtm.

    The features are first written in an orthonormal basis of the affine span of both sets (an exact rotation
    and translation: means, covariances and the trace of sqrtm(S1 S2) keep their values, the other directions
    are 0 in both sets), so scipy's sqrtm works on a (n1 + n2)-square matrix instead of a 2048-square one that
    takes minutes on a loaded CPU. `test_metrics_image` compares with sqrtm at full dimension."""
    points = np.concatenate([real, fake])
    basis, _ = np.linalg.qr((points - points[0]).T)  # d x (n1 + n2), orthonormal columns
    real, fake = (real - points[0]) @ basis, (fake - points[0]) @ basis
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    sigma1, sigma2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    with warnings.catch_warnings():  # S1 S2 is singular with so few samples: "may be inaccurate"
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real)


def reference_cmmd(x: np.ndarray, y: np.ndarray) -> float:
    """google-research/cmmd `distance.mmd`: _SIGMA = 10, _SCALE = 1000, Gaussian RBF kernel
    exp(-|a - b|^2 / (2 sigma^2)), biased estimator (every pair, diagonals included)."""
    sigma, scale = 10.0, 1000.0

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        sq_dist = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        return float(np.exp(-sq_dist / (2.0 * sigma**2)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))


def check_image_metrics(record: BenchmarkResult, run_dir: Path, bench: Path) -> None:
    """FID, KID, CLIP-T, CLIP-I and CMMD of the record equal the references' values from its stored features."""
    rows = feature_rows(run_dir)
    real_ids = sorted(i for i in rows if i[1] == REFERENCE_INDEX)
    fake_ids = sorted(i for i in rows if i[1] != REFERENCE_INDEX)
    assert real_ids == [(s.key, REFERENCE_INDEX) for s in load_benchmark(bench).samples]
    images = image_index(run_dir)
    assert fake_ids == list(zip(images.column("key").to_pylist(), images.column("image_index").to_pylist(), strict=True))
    owners = [(key, REFERENCE_INDEX) for key, _ in fake_ids]  # each generated image's reference row (same key)

    def array(column: str, ids: list[tuple[str, int]]) -> np.ndarray:
        return np.array([rows[i][column] for i in ids], dtype=np.float64)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    metrics = record.metrics
    real, fake = array("inception", real_ids), array("inception", fake_ids)
    assert metrics["fid"] == pytest.approx(reference_fid(real, fake), rel=1e-6)
    # KID: torch-fidelity's calculate_metrics(input1=generated, input2=reference) with the run's 10 subsets, its
    # default seed 2020 and the subset size capped at the smaller set
    kid = tf_kid.kid_features_to_metric(
        torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=10, kid_subset_size=min(len(real), len(fake)),
        rng_seed=2020, verbose=False,
    )  # fmt: skip
    assert metrics["kid_mean"] == pytest.approx(kid[tf_kid.KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-12)
    image_clip = unit(array("clip", fake_ids))
    # CLIP-T: 100 * max(cos(generated image, its sample's text), 0) per image, averaged
    text_cos = (image_clip * unit(array("text_clip", owners))).sum(axis=1)
    assert metrics["clip_t"] == pytest.approx(float(np.mean(100.0 * np.maximum(text_cos, 0.0))), rel=1e-9)
    # CLIP-I (benchmark.metrics.clip_score): cos(generated image, reference image) averaged, on the 0..1 scale
    image_cos = (image_clip * unit(array("clip", owners))).sum(axis=1)
    assert metrics["clip_i"] == pytest.approx(float(np.mean(image_cos)), rel=1e-9)
    assert metrics["cmmd"] == pytest.approx(reference_cmmd(array("cmmd", real_ids), array("cmmd", fake_ids)), rel=1e-6)


def reference_graph_ious(judgements: list[dict], targets: dict[str, SceneGraph]) -> dict[str, float]:
    """Mean SG-/Entity-/Relation-IoU of stored judge answers with Python sets: triples (subject name, predicate,
    object name), object names, predicates; IoU 1.0 for two empty sets; a failed answer scores 0.0 on all three.
    (The restricted judge answers in the targets' vocabulary verbatim, so no text normalisation is needed.)"""

    def sets(objects: list[dict], relations: list[dict]) -> tuple[set, set, set]:
        names = {o["id"]: o["name"] for o in objects}
        triples = {
            (names[r["subject"]], r["predicate"], names[r["object"]])
            for r in relations
            if r["subject"] in names and r["object"] in names
        }
        return triples, set(names.values()), {r["predicate"] for r in relations}

    def iou(a: set, b: set) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    scores = []
    for row in judgements:
        if row["status"] == "failed" or row["scene_graph"] is None:
            scores.append((0.0, 0.0, 0.0))
            continue
        target = targets[row["key"]]
        intended = sets(
            [{"id": o.id, "name": o.name} for o in target.objects],
            [{"subject": r.subject, "predicate": r.predicate, "object": r.object} for r in target.relations],
        )
        judged = sets(row["scene_graph"]["objects"], row["scene_graph"]["relations"])
        scores.append(tuple(iou(p, t) for p, t in zip(judged, intended, strict=True)))
    return {name: sum(s[i] for s in scores) / len(scores) for i, name in enumerate(("sg_iou", "entity_iou", "relation_iou"))}


def check_graph_ious(metrics: dict[str, float], run_dir: Path, state_dir: Path, bench: Path) -> dict[str, float]:
    """The IoUs equal the references' values from the judge answers stored under `state_dir`/judge."""
    judgements = read_judgements(state_dir / "judge").to_pylist()
    images = image_index(run_dir)
    assert [(j["key"], j["image_index"]) for j in judgements] == list(
        zip(images.column("key").to_pylist(), images.column("image_index").to_pylist(), strict=True)
    )
    expected = reference_graph_ious(judgements, {s.key: s.scene_graph for s in load_benchmark(bench).samples})
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    return expected


def reference_question_scores(rows: list[dict], targets: dict[str, SceneGraph]) -> dict[str, float]:
    """The question track's means from stored answers, DSG's rule written out: a question counts when its answer
    is yes and all its parents count; per image, the share counting per category and overall; each key the mean
    over the images where it is defined. (The question lists come from `generate_questions`, whose exact output
    `test_questions` pins.)"""
    shares: dict[str, list[float]] = {"entity": [], "attribute": [], "relation": [], "overall": []}
    for row in rows:
        answers = {a["id"]: a["answer"] for a in row["answers"]}
        counted: dict[str, bool] = {}
        by_category: dict[str, list[bool]] = {"entity": [], "attribute": [], "relation": []}
        for q in generate_questions(targets[row["key"]]):
            counted[q.id] = answers.get(q.id) is True and all(counted[p] for p in q.parents)
            by_category[q.category].append(counted[q.id])
        for category, values in by_category.items():
            if values:
                shares[category].append(sum(values) / len(values))
        if counted:
            shares["overall"].append(sum(counted.values()) / len(counted))
    key = {"overall": "question_score", "entity": "question_entity", "attribute": "question_attribute",
           "relation": "question_relation"}  # fmt: skip
    return {key[k]: sum(v) / len(v) for k, v in shares.items() if v}


def check_question_scores(metrics: dict[str, float], state_dir: Path, bench: Path) -> dict[str, float]:
    """The question scores equal the reference's from the answers stored under `state_dir`/questions."""
    rows = read_answers(state_dir / "questions").to_pylist()
    expected = reference_question_scores(rows, {s.key: s.scene_graph for s in load_benchmark(bench).samples})
    assert {k: v for k, v in metrics.items() if k.startswith("question_")} == pytest.approx(expected, rel=1e-12)
    return expected


def doctor_answers(state_dir: Path) -> None:
    """Answer no to the first image's first entity question and to every second question of the others (the
    tiny random judge answers yes to everything)."""
    parts = sorted((state_dir / "questions").glob("part-*.parquet"))
    for n, part in enumerate(parts):
        rows = pq.read_table(part).to_pylist()
        for i, row in enumerate(rows):
            for j, answer in enumerate(row["answers"]):
                if (n, i) == (0, 0) and j == 0 or (n, i) != (0, 0) and j % 2:
                    answer["answer"] = False
        pq.write_table(pa.Table.from_pylist(rows, schema=ANSWERS_SCHEMA), part)


def doctor_judgements(state_dir: Path, bench: Path) -> None:
    """Replace the stored judge answers (the tiny random judge only writes truncated JSON, so all its IoUs are 0)
    by a parsed graph that partly matches its target for the first image, and a failed answer for the others:
    the target's first three objects, the third renamed, and its first two relations, the second's predicate
    changed."""
    targets = {s.key: s.scene_graph for s in load_benchmark(bench).samples}
    (part,) = (state_dir / "judge").glob("part-*.parquet")
    rows = pq.read_table(part).to_pylist()
    target = targets[rows[0]["key"]]
    objects = [{"id": o.id, "name": o.name, "attributes": []} for o in target.objects[:3]]
    objects[2]["name"] = "zebra"
    relations = [{"subject": r.subject, "predicate": r.predicate, "object": r.object} for r in target.relations[:2]]
    relations[1]["predicate"] = "eating"
    rows[0].update(scene_graph={"objects": objects, "relations": relations}, status="ok", error=None)
    for row in rows[1:]:
        row.update(scene_graph=None, status="failed", error="doctored")
    pq.write_table(pa.Table.from_pylist(rows, schema=JUDGEMENTS_SCHEMA), part)


def no_model(*args, **kwargs):
    raise AssertionError("a finished run must not load a model")


@pytest.mark.slow
def test_end_to_end_on_ray_reproducible_rendered_and_verified(
    ray_local, bench, models, tmp_path, capsys, monkeypatch
):
    # run a in this process (no actors), run b on two Ray actors with one sample per chunk
    assert main(run_args(bench, models, tmp_path / "a", "--num-actors", "0")) == 0
    assert main(run_args(bench, models, tmp_path / "b", "--num-actors", "2", "--chunk-size", "1")) == 0
    a, b = load_records([tmp_path / "a", tmp_path / "b"])

    # one record, fully described
    assert isinstance(a, BenchmarkResult)
    assert a.benchmark == load_benchmark(bench).info() and a.benchmark.n_samples == 2
    assert a.model.adapter == "sdxl-sg" and a.model.conditioning == "scene_graph" and len(a.model.weights_hash) == 64
    questions = {"question_score", "question_entity", "question_attribute", "question_relation"}
    assert set(a.metrics) == {"fid", "kid_mean", "clip_t", "clip_i", "cmmd", "sg_iou", "entity_iou", "relation_iou"} | questions
    assert all(0.0 <= a.metrics[k] <= 1.0 for k in ("sg_iou", "entity_iou", "relation_iou"))
    details = a.metric_details
    assert details["fid"]["n_real"] == 2 and details["fid"]["n_fake"] == 2 and details["fid"]["weights_sha256"]
    assert details["graph_iou"]["n_images"] == 2 and details["graph_iou"]["restrict_vocabulary"] is True
    assert sum(details["graph_iou"]["judge_status"].values()) == 2
    assert b.provenance.config["num_actors"] == 2 and a.provenance.packages["torch"]
    assert a.provenance.wall_time_s > 0 and "cpu_count" in a.provenance.hardware

    # every number recomputed by reference code from the features and judge answers the run stored
    check_image_metrics(a, tmp_path / "a", bench)
    check_graph_ious(a.metrics, tmp_path / "a", tmp_path / "a", bench)
    check_question_scores(a.metrics, tmp_path / "a", bench)
    assert details["questions"]["n_items"] == 2 and details["questions"]["status"] == {"ok": 2}

    # no Ray vs two actors: the same images, the same judge answers, the same numbers
    assert images_digest(tmp_path / "a") == images_digest(tmp_path / "b") == details["images"]["sha256"]
    assert read_judgements(tmp_path / "a" / "judge") == read_judgements(tmp_path / "b" / "judge")
    assert read_answers(tmp_path / "a" / "questions") == read_answers(tmp_path / "b" / "questions")
    assert stored_features(tmp_path / "a") == stored_features(tmp_path / "b")
    assert stored_features(tmp_path / "a").num_rows == 4
    assert len(list((tmp_path / "b" / "features").rglob("part-*.parquet"))) == 2
    assert a.metrics == b.metrics and a.run_id == b.run_id

    # resuming a finished run regenerates, re-judges and re-featurises nothing (and loads no model)
    files = sorted((tmp_path / "a").rglob("part-*.parquet"))
    stamps = [f.stat().st_mtime_ns for f in files]
    samples = load_benchmark(bench).samples
    generate_images(samples, "sdxl-sg", "/nonexistent", a.generation, tmp_path / "a")
    monkeypatch.setattr("benchmark.features.ImageFeaturizer", no_model)
    monkeypatch.setattr("benchmark.judge.GraphJudge", no_model)
    monkeypatch.setattr("benchmark.questions.answer.QuestionJudge", no_model)
    settings = BenchRunSettings.from_record(a.provenance.config)
    metrics, _ = compute_metrics(settings, load_benchmark(bench), tmp_path / "a", tmp_path / "a")
    assert metrics == a.metrics
    assert sorted((tmp_path / "a").rglob("part-*.parquet")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # ... and scores judge answers it finds stored: with one partly right graph the IoUs are no longer all 0
    doctored = tmp_path / "doctored"
    for folder in ("judge", "features", "questions"):
        shutil.copytree(tmp_path / "a" / folder, doctored / folder)
    doctor_judgements(doctored, bench)
    doctor_answers(doctored)
    metrics, _ = compute_metrics(settings, load_benchmark(bench), tmp_path / "a", doctored)
    ious = check_graph_ious(metrics, tmp_path / "a", doctored, bench)
    assert all(0.0 < value < 1.0 for value in ious.values())
    scores = check_question_scores(metrics, doctored, bench)
    assert 0.0 < scores["question_score"] < 1.0 and scores["question_entity"] < 1.0
    changed = ious.keys() | scores.keys()
    assert {k: v for k, v in metrics.items() if k not in changed} == {k: v for k, v in a.metrics.items() if k not in changed}
    monkeypatch.undo()

    # the leaderboard renders the records (plus one with a hostile model id) and the page works in a browser
    evil = record(EVIL, 1.0, 10.0, content_hash=a.benchmark.content_hash)
    (tmp_path / "evil.json").write_text(evil.to_json())
    site = tmp_path / "site"
    inputs = [str(tmp_path / "a"), str(tmp_path / "b" / "result.json"), str(tmp_path / "evil.json")]
    assert leaderboard_main(["render", *inputs, "--output", str(site)]) == 0
    markdown = (site / "leaderboard.md").read_text()
    # runs a and b in both tracks' tables (the hostile record has no question scores: it is in the first only)
    main_table, question_table = markdown.split("### Question track")
    assert main_table.count(str(models["sdxl_sg"])) == question_table.count(str(models["sdxl_sg"])) == 2
    ranks = [line.split(" | ")[0] for line in question_table.splitlines() if re.match(r"^\| \d", line)]
    assert "<script>" not in markdown and ranks == ["| 1", "| 1"] and "evil" not in question_table
    # each run links to its record and to a grid of its images, relative to the site folder
    assert "(../a/result.json)" in markdown and "(../b/result.json)" in markdown
    assert len(list((site / "samples").glob("*.png"))) == 2 and main_table.count("](samples/") == 2
    escaped = "&lt;script&gt;document.title='pwned'&lt;/script&gt;evil|model"
    # runs a and b are the same run (no Ray vs two actors): equal SG-IoU, so they share rank 2
    check_page_in_browser(site / "index.html", [escaped, str(models["sdxl_sg"]), str(models["sdxl_sg"])], [1, 2, 2])
    model = str(models["sdxl_sg"])
    check_page_in_browser(site / "index.html", [model, model], [1, 1], track="questions", sorted_by="Q-Score")

    # verify: an untouched run reproduces; a tampered image is caught
    capsys.readouterr()
    assert leaderboard_main(["verify", str(tmp_path / "a" / "result.json")]) == 0
    assert "ok" in capsys.readouterr().out

    # a run directory and a record as written before `bench` was `input` and the judge's graph bounds were
    # `judge.limits`: the run resumes without redoing anything, the record verifies
    flat = ("max_objects", "max_relations", "max_attributes")
    pinned = json.loads((tmp_path / "a" / "run.json").read_text())
    limits = pinned["judge"].pop("limits")
    pinned["judge"] |= {name: limits[name] for name in flat}
    (tmp_path / "a" / "run.json").write_text(json.dumps(pinned))
    assert main(run_args(bench, models, tmp_path / "a", "--num-actors", "0")) == 0
    assert sorted((tmp_path / "a").rglob("part-*.parquet")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    old = json.loads((tmp_path / "a" / "result.json").read_text())
    config = old["provenance"]["config"]
    config["bench"] = config.pop("input")
    limits = config["judge"].pop("limits")
    config["judge"] |= {name: limits[name] for name in flat}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert leaderboard_main(["verify", str(tmp_path / "old" / "result.json"), "--run-dir", str(tmp_path / "a")]) == 0
    assert "ok" in capsys.readouterr().out
    tamper(tmp_path / "b")
    assert leaderboard_main(["verify", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "MISMATCH images: digest" in err and "MISMATCH fid" in err
