"""SDXL-SG training: data handling, the plain step, exact resume, the precompute cache, and Ray Train.

Everything runs on CPU with the tiny random SDXL at 64x64 and a 16-wide SG encoder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from laion_sg.offline.fixtures import write_fixture_dataset  # noqa: E402
from training.batches import RowCollator  # noqa: E402
from training.cache import CacheCollator  # noqa: E402
from training.contexts import RayContext  # noqa: E402
from training.image_transforms import ImageConfig, is_flipped, transform_image  # noqa: E402
from training.loop import run_worker  # noqa: E402
from training.rows import find_splits, read_rows, usable  # noqa: E402
from training.settings import TrainSettings  # noqa: E402
from training.sg_encoder import SGEncoder  # noqa: E402
from training.step import (  # noqa: E402
    FrozenSDXL,
    build_lr_scheduler,
    build_optimizer,
    diffusion_loss,
    load_tokenizers,
    step_seed,
    train_step,
)
from training.train import train_local  # noqa: E402

TINY_ENCODER = {"hidden_dim": 16, "mlp_hidden_dim": 32}
RESOLUTION = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_dataset(tmp_path_factory.mktemp("sg_data"))


@pytest.fixture(scope="module")
def sdxl(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "sdxl"


@pytest.fixture(scope="module")
def frozen(sdxl: Path) -> FrozenSDXL:
    return FrozenSDXL.load(sdxl)


@pytest.fixture(scope="module")
def train_rows(data_dir: Path) -> list[dict]:
    return [r for r in read_rows(find_splits(data_dir)["train"]) if usable(r)]


def tiny_config(data: Path, model: Path, output: Path, **overrides) -> TrainSettings:
    values = {
        "batch_size": 2, "resolution": RESOLUTION, "warmup_steps": 1, "checkpoint_every": 2, "val_every": 0,
        "encoder": TINY_ENCODER,
    }  # fmt: skip
    return TrainSettings(input=str(data), model=str(model), output=str(output), **(values | overrides))


def tiny_encoder(frozen: FrozenSDXL) -> SGEncoder:
    torch.manual_seed(0)
    return SGEncoder.for_text_encoders(*frozen.text_encoders, **TINY_ENCODER)


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """The scalars of a run's event files as TensorBoard itself reads them (a resumed run's purge applied); a
    step logged twice for one tag fails."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        steps = [e.step for e in accumulator.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
        scalars[tag] = {e.step: e.value for e in accumulator.Scalars(tag)}
    return scalars


def assert_logged_as_reported(run_dir: Path, reported: list[dict]) -> None:
    """TensorBoard holds exactly the reported steps' loss, learning rate and grad norm (validation loss where it
    was measured), as float32, and a positive throughput for every step."""
    import numpy as np

    scalars = tensorboard_scalars(run_dir)
    tags = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "val_loss": "val/loss"}
    for key, tag in tags.items():
        expected = {m["step"]: float(np.float32(m[key])) for m in reported if key in m}
        assert scalars[tag] == expected, tag
    throughput = scalars["train/samples_per_s"]
    assert sorted(throughput) == [m["step"] for m in reported] and min(throughput.values()) > 0


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert min(image.size) > 100


# ---------------------------------------------------------------------------------------------- data


def test_fixture_rows_and_usable_filter(data_dir: Path) -> None:
    splits = find_splits(data_dir)
    rows = read_rows(splits["train"])
    assert len(rows) == 9 and sum(map(usable, rows)) == 8  # the failed annotation is skipped
    assert len(read_rows(splits["val"])) == 2


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/validation-00000-of-00001.parquet",
          "data/test-00000-of-00001.parquet"],
         {"train": ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"],
          "val": ["data/validation-00000-of-00001.parquet"]}),
        (["train/a.parquet", "val/b.parquet", "test/c.parquet"], {"train": ["train/a.parquet"], "val": ["val/b.parquet"]}),
        (["train.parquet", "dev.parquet", "test.parquet"], {"train": ["train.parquet"], "val": ["dev.parquet"]}),
        (["shard-0.parquet", "more/shard-1.parquet"], {"train": ["more/shard-1.parquet", "shard-0.parquet"]}),
    ],
)  # fmt: skip
def test_find_splits_layouts(tmp_path: Path, files: list[str], expected: dict[str, list[str]]) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    found = find_splits(tmp_path)
    assert {k: [str(p.relative_to(tmp_path)) for p in v] for k, v in found.items()} == expected


def test_center_crop_and_micro_conditioning() -> None:
    from PIL import Image

    image = Image.new("RGB", (200, 100))
    pixels, time_ids = transform_image(image, ImageConfig(resolution=64), flip=False)
    assert pixels.shape == (3, 64, 64) and float(pixels.min()) == -1.0
    assert time_ids == [100, 200, 0, 32, 64, 64]  # (orig h, orig w, crop top, crop left, target h, target w)
    _, flipped = transform_image(image, ImageConfig(resolution=64), flip=True)
    assert flipped[3] == 128 - 64 - 32
    _, squashed = transform_image(image, ImageConfig(resolution=64, crop="none"), flip=False)
    assert squashed == [100, 200, 0, 0, 64, 64]


def test_flip_swaps_left_and_right_consistently(sdxl: Path, train_rows: list[dict]) -> None:
    """A flipped row's image is mirrored and its graph text has left and right swapped (`schemas.flip_graph`,
    tested on its own in test_schemas.py); the flip decision is per row and repeatable."""
    keys = [r["key"] for r in train_rows]
    decisions = [is_flipped(0, 1, k) for k in keys]
    assert decisions == [is_flipped(0, 1, k) for k in keys] and 0 < sum(decisions) < len(keys)
    collate = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION, flip=True)).with_epoch(1)
    batch = collate(train_rows)
    plain = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION))(train_rows)
    for b, flipped in enumerate(decisions):
        pixels = plain.pixel_values[b].flip(-1) if flipped else plain.pixel_values[b]
        torch.testing.assert_close(batch.pixel_values[b], pixels)
        expected = plain.graphs.texts[b]
        if flipped:
            expected = expected.replace("left", "\0").replace("right", "left").replace("\0", "right")
        assert batch.graphs.texts[b] == expected
    assert any("left of" in t for t in plain.graphs.texts)


def test_config_from_yaml_and_flags(tmp_path: Path) -> None:
    from training.settings import EncoderSettings
    from training.train import parse_config

    (tmp_path / "run.yaml").write_text("input: d\nmodel: m\noutput: o\nlr: 0.001\nencoder: {hidden_dim: 16}\n")
    config = parse_config(["--config", str(tmp_path / "run.yaml"), "--lr", "0.002", "--use-gpu", "--encoder.num-layers", "2"])
    assert (config.lr, config.use_gpu, config.weight_decay) == (0.002, True, 0.2)
    assert config.encoder == EncoderSettings(hidden_dim=16, num_layers=2)  # the file's and the flag's, merged


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cache", "c", "--flip"], r"--flip: .*train from a cache with flip off"),
        (["--max-steps", "0"], r"--max-steps: Input should be greater than or equal to 1 \(got '0'\)"),
        (["--resolution", "100"], r"--resolution: Input should be a multiple of 8"),
        (["--crop", "square"], r"--crop: Input should be 'center' or 'none'"),
        (["--lr", "0"], r"--lr: Input should be greater than 0"),
        (["--encoder.pooling", "max"], r"--encoder.pooling: Input should be 'avg' or 'sum'"),
        (["--encoder.hidden-dim", "0"], r"--encoder.hidden-dim: Input should be greater than or equal to 1"),
        (["--checkpoint-every", "0"], r"--checkpoint-every: Input should be greater than or equal to 1"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from training.train import main

    with pytest.raises(SystemExit) as exited:
        main(["--input", "d", "--model", "m", "--output", "o", *argv])
    assert exited.value.code == 2
    assert re.search(message, capsys.readouterr().err), message


def test_required_settings_and_unknown_yaml_keys_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.train import parse_config

    with pytest.raises(SystemExit) as exited:
        parse_config(["--input", "d"])
    assert exited.value.code == 2
    assert "--model is required; --output is required" in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("input: d\nmodel: m\noutput: o\nencoder: {hidden: 16}\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(tmp_path / "run.yaml")])
    assert "unknown setting 'encoder.hidden'" in capsys.readouterr().err


def test_encoder_settings_are_the_sg_encoder_arguments() -> None:
    """`--encoder.*` defaults are `SGEncoder`'s, and every setting reaches the encoder `run_worker` builds."""
    from training.settings import EncoderSettings
    from training.train import parse_config

    widths = EncoderSettings().model_dump()
    defaults = SGEncoder().config
    assert widths == {name: defaults[name] for name in widths}
    config = parse_config(["--input", "d", "--model", "m", "--output", "o", "--encoder.hidden-dim", "8",
                           "--encoder.mlp-hidden-dim", "12", "--encoder.num-layers", "1", "--encoder.pooling", "sum",
                           "--no-encoder.residual"])  # fmt: skip
    built = SGEncoder(text_dim=32, **config.encoder.model_dump()).config
    assert (built.hidden_dim, built.mlp_hidden_dim, built.num_layers, built.pooling, built.residual) == (
        8, 12, 1, "sum", False)  # fmt: skip


def test_settings_round_trip_to_ray_workers(data_dir: Path, sdxl: Path, tmp_path: Path, monkeypatch) -> None:
    """`build_trainer` hands the workers plain data (`model_dump`); the per-worker function rebuilds the same
    settings from it."""
    import dataclasses
    import pickle

    import ray.data
    import ray.train.torch

    from training import jobs
    from training import train as train_module

    config = tiny_config(data_dir, sdxl, tmp_path, flip=True, crop="none", max_bad_fraction=0.5, seed=3)
    captured = {}

    class Trainer:
        def __init__(self, loop, train_loop_config, **kwargs):
            captured["loop"], captured["values"] = loop, train_loop_config

        def fit(self):
            raise RuntimeError("stop before training")

    monkeypatch.setattr(ray.data, "read_parquet", lambda files: files)
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", Trainer)
    monkeypatch.setattr(jobs, "RayContext", lambda settings: ("ctx", settings))
    worker = lambda settings, ctx: captured.setdefault("worker", settings)  # noqa: E731
    with pytest.raises(RuntimeError, match="stop before training"):
        dataclasses.replace(train_module.JOB, worker=worker).fit(config)
    values = pickle.loads(pickle.dumps(captured["values"]))  # as Ray ships it
    assert values["encoder"] == TINY_ENCODER | {"num_layers": 5, "pooling": "avg", "residual": True}
    captured["loop"](values)
    assert captured["worker"] == config and captured["worker"] is not config
    assert captured["worker"].image_config == config.image_config


def test_relative_paths_reach_ray_workers_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train workers run in another working directory, so local paths are made absolute; hub ids are kept."""
    from training.train import parse_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sdxl").mkdir()
    config = parse_config(["--input", "dataset", "--model", "sdxl", "--output", "runs"])
    assert (config.input, config.model, config.output) == (
        str(tmp_path / "dataset"), str(tmp_path / "sdxl"), str(tmp_path / "runs"))
    hub = parse_config(["--input", "d", "--model", "stabilityai/stable-diffusion-xl-base-1.0", "--output", "o"])
    assert hub.model == "stabilityai/stable-diffusion-xl-base-1.0"


# ---------------------------------------------------------------------------------------------- the plain step


def test_step_trains_only_the_sg_encoder(frozen: FrozenSDXL, sdxl: Path, train_rows: list[dict]) -> None:
    encoder = tiny_encoder(frozen)
    before_encoder = {k: v.clone() for k, v in encoder.state_dict().items()}
    before_frozen = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen.modules()]
    optimizer = build_optimizer(encoder, lr=5e-4, weight_decay=0.2)
    scheduler = build_lr_scheduler(optimizer, warmup_steps=0, total_steps=10)
    collate = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION))
    losses = []
    for step in range(3):
        batch = collate(train_rows[2 * step : 2 * step + 2])
        metrics = train_step(frozen, encoder, optimizer, scheduler, batch, seed=step_seed(0, step, 0))
        losses.append(metrics["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not any(p.requires_grad for m in frozen.modules() for p in m.parameters())
    assert not any(m.training for m in frozen.modules())
    for module, before in zip(frozen.modules(), before_frozen, strict=True):
        assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    after = encoder.state_dict()
    assert float(after["alpha"]) != 0.0
    # alpha is 0 at step 0, so only alpha has a gradient then; from step 1 on the graph network learns too.
    assert not torch.equal(after["gconv.net1.0.weight"], before_encoder["gconv.net1.0.weight"])
    assert not torch.equal(after["project_out.weight"], before_encoder["project_out.weight"])


def test_step_noise_depends_only_on_seed_step_and_rank(frozen: FrozenSDXL, sdxl: Path, train_rows: list[dict]) -> None:
    batch = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION))(train_rows[:2])
    encoder = tiny_encoder(frozen)
    with torch.no_grad():
        first = diffusion_loss(frozen, encoder, batch, seed=step_seed(0, 5, 0))
        torch.randn(100)  # consuming the global RNG changes nothing
        again = diffusion_loss(frozen, encoder, batch, seed=step_seed(0, 5, 0))
        other = diffusion_loss(frozen, encoder, batch, seed=step_seed(0, 5, 1))
    assert float(first) == float(again) != float(other)


def test_resumed_local_run_reproduces_losses(data_dir: Path, sdxl: Path, tmp_path: Path) -> None:
    """Interrupt after 3 steps (last checkpoint at step 2), resume: steps 3-5 match an uninterrupted run.

    Flips are on, so the flip decisions (per epoch and key) must survive the resume too; 5 steps of batch 2 over
    8 rows cross an epoch boundary."""
    straight_ctx, _ = train_local(tiny_config(data_dir, sdxl, tmp_path / "straight", max_steps=5, flip=True))
    config = tiny_config(data_dir, sdxl, tmp_path / "resumed", max_steps=5, flip=True, val_every=2)
    first, state = train_local(config, stop_after=3)
    assert state.step == 3 and not (tmp_path / "resumed" / "final").exists()
    second, _ = train_local(config)
    straight = {m["step"]: m["loss"] for m in straight_ctx.history}
    resumed = {m["step"]: m["loss"] for m in first.history + second.history}
    assert [m["step"] for m in second.history] == [3, 4, 5] and second.history[0]["resumed_from_step"] == 2
    assert resumed == straight  # bit-identical on CPU
    assert {m["epoch"] for m in second.history} == {0, 1}
    assert "val_loss" in second.history[1] and torch.isfinite(torch.tensor(second.history[-1]["val_loss"]))
    checkpoint = sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1]
    assert {p.name for p in checkpoint.iterdir()} == {"sg_encoder", "trainer_state.pt", "state.json", "rng_rank0.pt"}
    final = tmp_path / "resumed" / "final"
    assert (final / "model_index.json").exists()
    assert (final / "sg_encoder" / "diffusion_pytorch_model.safetensors").exists()
    # TensorBoard: steps 1-3 of the interrupted process, then 3-5 of the resumed one (step 3 once: purged)
    reported = {m["step"]: m for m in first.history + second.history}
    assert_logged_as_reported(tmp_path / "resumed", [reported[step] for step in sorted(reported)])
    assert_png(tmp_path / "resumed" / "loss.png")


# ---------------------------------------------------------------------------------------------- the cache


def test_cache_gives_the_on_the_fly_loss(frozen: FrozenSDXL, sdxl: Path, train_rows: list[dict], tmp_path: Path) -> None:
    """Same rows, same seed: the loss from cached latents/features equals the loss with the frozen encoders run
    on the fly, to float32 round-off (rtol 1e-5; the phrase batches are padded differently)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import row_schema
    from training.cache import read_cache_meta
    from training.precompute import CacheEncoder, cache_meta

    encoder = tiny_encoder(frozen)
    with torch.no_grad():
        encoder.alpha.fill_(1.0)  # let the graph branch count in the loss
    actor = CacheEncoder(str(sdxl), RESOLUTION, "center", "float32", use_gpu=False)
    raw = pa.Table.from_pylist(train_rows, schema=row_schema())
    raw = raw.append_column("split", pa.array(["train"] * raw.num_rows))
    pq.write_table(actor(raw.slice(0, 4)), tmp_path / "a.parquet")
    pq.write_table(actor(raw.slice(4, 4)), tmp_path / "b.parquet")
    (tmp_path / "cache.json").write_text(json.dumps(cache_meta(str(sdxl), RESOLUTION, "center", "float32")))
    cached = {r["key"]: r for f in ("a", "b") for r in pq.read_table(tmp_path / f"{f}.parquet").to_pylist()}
    cache_collate = CacheCollator(read_cache_meta(tmp_path))
    row_collate = RowCollator(load_tokenizers(sdxl), ImageConfig(resolution=RESOLUTION))
    batch_rows = [train_rows[1], train_rows[6], train_rows[3]]  # across the two cache files
    with torch.no_grad():
        fly = diffusion_loss(frozen, encoder, row_collate(batch_rows), seed=123)
        from_cache = diffusion_loss(frozen, encoder, cache_collate([cached[r["key"]] for r in batch_rows]), seed=123)
    torch.testing.assert_close(from_cache, fly, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------- Ray



@pytest.mark.slow
def test_ray_precompute_cache_matches_raw_rows(ray_local, data_dir: Path, sdxl: Path, frozen: FrozenSDXL,
                                               train_rows: list[dict], tmp_path: Path) -> None:  # fmt: skip
    """The Ray Data job writes every usable row once per split, and its rows give the on-the-fly loss."""
    from training.cache import read_cache_meta
    from training.precompute import precompute

    cache = tmp_path / "cache"
    counts = precompute(data_dir, str(sdxl), cache, resolution=RESOLUTION, dtype="float32", batch_size=4)
    assert counts == {"train": 8, "val": 2}
    cached = {r["key"]: r for r in read_rows(find_splits(cache)["train"])}
    assert set(cached) == {r["key"] for r in train_rows}
    encoder = tiny_encoder(frozen)
    with torch.no_grad():
        encoder.alpha.fill_(1.0)
        batch_rows = train_rows[:3]
        fly = diffusion_loss(frozen, encoder, RowCollator(load_tokenizers(sdxl), ImageConfig(RESOLUTION))(batch_rows),
                             seed=7)  # fmt: skip
        collate = CacheCollator(read_cache_meta(cache))
        from_cache = diffusion_loss(frozen, encoder, collate([cached[r["key"]] for r in batch_rows]), seed=7)
    torch.testing.assert_close(from_cache, fly, rtol=1e-5, atol=0)


def _observed_ray_loop(record: Path, fail_at_step: int | None = None):
    """The real per-worker function (`run_worker` with a `RayContext`, as `training.train` runs it), observed.

    Rank 0 appends every step's metrics to ``record/history.jsonl``; at the last step every rank saves its
    SG-encoder weights to ``record/weights_rank<r>.pt``. With `fail_at_step`, rank 0 raises once (the first time
    it finishes that step, before any checkpoint of it): Ray Train restarts the group (FailureConfig) and the
    loop resumes from `ray.train.get_checkpoint()`. Everything the workers need is defined in here,
    so that cloudpickle ships it by value (the workers cannot import this test module)."""

    def loop(values: dict) -> None:
        import json

        class Observed(RayContext):
            def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
                self.encoder = model  # DDP wraps it and shares its parameters
                return super().prepare(model)

            def log_step(self, metrics):
                marker = record / "failed_once"
                if self.rank == 0 and metrics["step"] == fail_at_step and not marker.exists():
                    marker.touch()
                    raise RuntimeError("injected worker failure")
                if self.rank == 0:
                    kept = {"step", "epoch", "loss", "grad_norm", "lr", "alpha", "val_loss"}
                    kept.add("resumed_from_step")
                    with open(record / "history.jsonl", "a") as f:
                        f.write(json.dumps({k: v for k, v in metrics.items() if k in kept}) + "\n")
                if metrics["step"] == self.config.max_steps:
                    weights = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
                    torch.save(weights, record / f"weights_rank{self.rank}.pt")
                return super().log_step(metrics)

        train_config = TrainSettings.model_validate(values)
        run_worker(train_config, Observed(train_config))

    return loop


def _fit_observed(config: TrainSettings, record: Path, fail_at_step: int | None = None):
    import json

    from training.jobs import build_trainer

    record.mkdir()
    result = build_trainer(config, _observed_ray_loop(record, fail_at_step)).fit()
    history = [json.loads(line) for line in (record / "history.jsonl").read_text().splitlines()]
    ranks = [torch.load(record / f"weights_rank{r}.pt", weights_only=True) for r in range(config.num_workers)]
    return result, history, ranks


@pytest.mark.slow
def test_ray_train_two_workers_fail_and_resume(ray_local, data_dir: Path, sdxl: Path, tmp_path: Path) -> None:
    """A 2-worker TorchTrainer (gloo) on the raw Parquet rows runs the real loop twice: straight through,
    and with worker 0 dying once at step 3, so that Ray restarts the group (FailureConfig) and the loop
    resumes from the step-2 checkpoint. The resumed run ends equal to the straight one: the same reported
    steps, losses, grad norms and learning rates (so the step counter, the data position, the optimizer,
    scheduler and RNG states all came back), the same final SG-encoder weights, and identical weights on
    both ranks; the result loads as a pipeline.

    The train split is one Parquet block, so the streaming split and the seeded shuffle hand each rank the
    same rows in the same order in both runs. Batch 1: 4 batches per worker per epoch, so the resumed group
    skips the 2 batches already used in epoch 0."""
    from training.checkpoints import export_final
    from training.pipeline import SDXLSGPipeline
    from training.tracking import plot_losses

    def config(run: str, **overrides) -> TrainSettings:
        values = {"max_steps": 4, "num_workers": 2, "batch_size": 1} | overrides
        return tiny_config(data_dir, sdxl, tmp_path / run, **values)

    _, straight, straight_ranks = _fit_observed(config("straight"), tmp_path / "straight_record")
    resumed_config = config("resumed", max_failures=1)
    record = tmp_path / "resumed_record"
    result, resumed, resumed_ranks = _fit_observed(resumed_config, record, fail_at_step=3)

    assert (record / "failed_once").exists()
    assert [m["step"] for m in straight] == [m["step"] for m in resumed] == [1, 2, 3, 4]
    assert [m["resumed_from_step"] for m in resumed] == [0, 0, 2, 2]
    assert {m["epoch"] for m in resumed} == {0}
    for before, after in zip(straight, resumed, strict=True):  # loss, grad norm, lr, alpha of every step
        ours = {k: v for k, v in after.items() if k != "resumed_from_step"}
        theirs = {k: v for k, v in before.items() if k != "resumed_from_step"}
        assert ours.keys() == theirs.keys()
        message = lambda m, s=after["step"]: f"step {s}: {m}"  # noqa: E731
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9, msg=message)
    assert torch.isfinite(torch.tensor([resumed[-1]["loss"], resumed[-1]["val_loss"]])).all()
    for ranks in (straight_ranks, resumed_ranks):  # DDP keeps the replicas equal
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    torch.testing.assert_close(resumed_ranks[0], straight_ranks[0], rtol=1e-6, atol=1e-9)
    assert float(resumed_ranks[0]["alpha"]) != 0.0

    assert result.metrics["step"] == 4 and result.metrics["resumed_from_step"] == 2
    run_dir = tmp_path / "resumed" / "sdxl_sg"
    # Rank 0's TensorBoard events: the reported steps once each (step 3 of the failed attempt purged)
    assert_logged_as_reported(run_dir, resumed)
    assert_png(plot_losses(run_dir))
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint_0*"))
    assert checkpoints == ["checkpoint_00000002", "checkpoint_00000004"]
    with result.checkpoint.as_directory() as directory:
        written = {p.name for p in Path(directory).iterdir()}
        assert {"rng_rank0.pt", "rng_rank1.pt", "trainer_state.pt"} <= written
        trained = SGEncoder.from_pretrained(Path(directory) / "sg_encoder")
        final = export_final(directory, resumed_config)
    assert all(torch.equal(v, resumed_ranks[0][k]) for k, v in trained.state_dict().items())
    pipe = SDXLSGPipeline.from_pretrained(final)
    assert torch.equal(pipe.sg_encoder.alpha, trained.alpha)
