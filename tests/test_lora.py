"""`training.lora`: SPRIGHT-style spatial LoRA of SDXL's UNet, on the tiny random SDXL at 64 px (CPU).

The data is `laion_sg.offline.fixtures`' export (9 train rows: 8 annotated, 1 failed annotation, which still
has an image and a caption) with a ``spatial_caption`` column added: 8 rows have one naming a left and a
right, the failed row has none (it trains on its original caption, counted as a fallback).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from benchmark.generate import ADAPTERS
from laion_sg.offline.fixtures import write_fixture_dataset
from training.checkpoints import TrainState
from training.contexts import LocalContext
from training.lora import (
    LORA_JSON,
    LORA_WEIGHTS,
    LoraSDXLPipeline,
    LoraSettings,
    epoch_batches,
    main,
    train_lora_local,
)
from training.lora_data import SPATIAL_COLUMN, CaptionPlanner
from training.rows import find_splits
from training.spatial_captions import swap_left_right

RESOLUTION = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture export with a spatial caption on every train row but the failed one."""
    out = write_fixture_dataset(tmp_path_factory.mktemp("lora_data"), max_side=RESOLUTION)
    for path in find_splits(out)["train"]:
        table = pq.read_table(path)
        spatial = [
            None
            if row["annotation"]["status"] == "failed"
            else f"{row['caption']} on the left, a tree on the right"
            for row in table.to_pylist()
        ]
        pq.write_table(table.append_column(SPATIAL_COLUMN, pa.array(spatial, pa.string())), path)
    return out


@pytest.fixture(scope="module")
def sdxl(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / "sdxl"


def tiny_settings(data: Path, model: Path, output: Path, **overrides) -> LoraSettings:
    values = {
        "batch_size": 2,
        "resolution": RESOLUTION,
        "rank": 4,
        "lr": 1e-2,
        "checkpoint_every": 2,
        "max_steps": 4,
    }
    return LoraSettings(input=str(data), model=str(model), output=str(output), **(values | overrides))


def epoch_samples(settings: LoraSettings, epoch: int) -> dict[str, tuple[str, str, bool, torch.Tensor]]:
    """key -> (caption source, caption, flipped, pixels) of every sample of an epoch, through the job's
    batches."""
    ctx = LocalContext(settings)
    planner = CaptionPlanner(find_splits(settings.input)["train"], settings.seed, settings.spatial_probability)
    samples = {}
    for batch in epoch_batches(ctx, settings, planner, TrainState(epoch=epoch)):
        for i, key in enumerate(batch.keys):
            samples[key] = (batch.sources[i], batch.captions[i], batch.flipped[i], batch.pixel_values[i])
    return samples


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_caption_mix_is_exactly_half_and_flips_swap_left_right(
    data_dir: Path, tmp_path: Path, epoch: int
) -> None:
    """Batch 1 over the 9 train rows: each epoch 4 of the 8 rows with a spatial caption train on it, 4 on
    their original caption, and the row without one on its original caption. With --flip swap, a mirrored
    sample's pixels are exactly `np.fliplr` of the same sample with --flip off, and its caption is the
    unmirrored caption with left and right swapped; an unmirrored sample is identical in both runs."""
    swapped = epoch_samples(
        tiny_settings(data_dir, Path("unused"), tmp_path, batch_size=1, flip="swap"), epoch
    )
    plain = epoch_samples(tiny_settings(data_dir, Path("unused"), tmp_path, batch_size=1, flip="off"), epoch)
    sources = [source for source, *_ in plain.values()]
    assert (sources.count("spatial"), sources.count("original"), sources.count("fallback")) == (4, 4, 1)
    assert [
        source for source, *_ in swapped.values()
    ] == sources  # the caption choice does not depend on flips
    assert {flipped for _, _, flipped, _ in plain.values()} == {False}
    flips = [flipped for _, _, flipped, _ in swapped.values()]
    assert any(flips) and not all(flips)
    for key, (source, caption, flipped, pixels) in swapped.items():
        _, plain_caption, _, plain_pixels = plain[key]
        image, plain_image = pixels.permute(1, 2, 0).numpy(), plain_pixels.permute(1, 2, 0).numpy()
        if flipped:
            np.testing.assert_array_equal(image, np.fliplr(plain_image))
            assert caption == swap_left_right(plain_caption)
            if source == "spatial":
                assert (
                    "on the right, a tree on the left" in caption and "on the left, a tree" in plain_caption
                )
        else:
            np.testing.assert_array_equal(image, plain_image)
            assert caption == plain_caption


def test_another_spatial_share_reaches_the_batches(data_dir: Path, tmp_path: Path) -> None:
    """A share other than SPRIGHT's half, through the job's batches (batch 1 over the 9 train rows): of the 8 rows
    with a spatial caption, 0.25 gives 2 spatial samples in every epoch (0.25·8 is whole), 1.0 all 8 and 0.0 none;
    a share outside [0, 1] is refused."""
    for share, spatial in ((0.25, 2), (1.0, 8), (0.0, 0)):
        for epoch in (0, 1):
            settings = tiny_settings(data_dir, Path("unused"), tmp_path, batch_size=1, spatial_probability=share)
            samples = epoch_samples(settings, epoch)
            sources = [source for source, *_ in samples.values()]
            assert (sources.count("spatial"), sources.count("fallback")) == (spatial, 1), (share, epoch)
    for share in (-0.5, 1.5):
        with pytest.raises(ValueError, match="spatial_probability"):
            tiny_settings(data_dir, Path("unused"), tmp_path, spatial_probability=share)


def test_help_lists_the_settings_with_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m training.lora --help` (its `main`, in process) names the settings with their defaults."""
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: python -m training.lora ")
    one_line = re.sub(r"\n {20,}", " ", out)  # a long flag puts its description on the next line
    defaults = dict(re.findall(r"^  (--[\w-]+) [^\n]*\(default: ([^)]*)\)$", one_line, flags=re.MULTILINE))
    expected = {
        "--name": "sdxl_lora", "--max-steps": "1000", "--num-workers": "1", "--batch-size": "1",
        "--lr": "0.0001", "--rank": "16", "--resolution": "1024", "--seed": "0",
        "--spatial-probability": "0.5", "--flip": "swap", "--checkpoint-every": "500",
    }  # fmt: skip
    assert {flag: defaults.get(flag) for flag in expected} == expected
    for flag in ("--input", "--model", "--output", "--config"):
        assert f"  {flag} " in out, flag


# ---------------------------------------------------------------------------------------------- training


def generate(pipe: StableDiffusionXLPipeline) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a cup on the left of a plate", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION,
        generator=torch.Generator("cpu").manual_seed(0), output_type="np",
    ).images[0]  # fmt: skip


@pytest.mark.slow
def test_tiny_run_writes_a_lora_that_changes_the_images(data_dir: Path, sdxl: Path, tmp_path: Path) -> None:
    """4 steps: ``final/`` has diffusers' LoRA file (UNet attention projections only) and lora.json; loaded
    into the base SDXL it changes the image of a fixed prompt and seed, and the ``sdxl-lora`` benchmark
    adapter (`LoraSDXLPipeline` from the run directory) makes the very same image as that manual load."""
    out = tmp_path / "run"
    ctx, state = train_lora_local(tiny_settings(data_dir, sdxl, out))
    assert state.step == 4 and [m["step"] for m in ctx.history] == [1, 2, 3, 4]
    assert all(np.isfinite(m["loss"]) for m in ctx.history)
    assert (ctx.history[0]["spatial_captions"], ctx.history[0]["fallback_captions"]) == (4, 1)
    final = out / "final"
    weights = load_file(str(final / LORA_WEIGHTS))
    assert weights and all(k.startswith("unet.") and ".lora" in k for k in weights)
    assert {k.split(".lora")[0].rsplit(".", 1)[-1] for k in weights} == {"to_q", "to_k", "to_v", "0"}
    assert (final / LORA_JSON).exists() and (out / "loss.png").exists()

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl, use_safetensors=True)
    before = generate(pipe)
    pipe.load_lora_weights(final)
    after = generate(pipe)
    assert np.abs(after - before).max() > 1e-3
    adapter = ADAPTERS["sdxl-lora"]
    loaded = adapter.load(str(out), torch.float32)
    assert isinstance(loaded, LoraSDXLPipeline)
    np.testing.assert_array_equal(generate(loaded), after)


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_one(data_dir: Path, sdxl: Path, tmp_path: Path) -> None:
    """5 steps of batch 2 over 9 rows (4 batches an epoch, so the run crosses an epoch), a checkpoint every 2:
    a run stopped after step 3 (last checkpoint: step 2) and started again trains steps 3-5 and ends with the
    uninterrupted run's losses and LoRA weights, bit for bit. Checkpoints hold safetensors and JSON only."""
    straight, _ = train_lora_local(tiny_settings(data_dir, sdxl, tmp_path / "straight", max_steps=5))
    settings = tiny_settings(data_dir, sdxl, tmp_path / "resumed", max_steps=5)
    first, state = train_lora_local(settings, stop_after=3)
    assert state.step == 3 and not (tmp_path / "resumed" / "final").exists()
    checkpoint = sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1]
    assert checkpoint.name == "step_00000002"
    assert {p.name for p in checkpoint.iterdir()} == {
        "lora.safetensors", "optimizer.safetensors", "trainer_state.json", "state.json",
        "rng_rank0.safetensors",
    }  # fmt: skip
    second, _ = train_lora_local(settings)
    assert [m["step"] for m in second.history] == [3, 4, 5] and second.history[0]["resumed_from_step"] == 2
    assert {m["epoch"] for m in second.history} == {0, 1}
    resumed = {m["step"]: m["loss"] for m in first.history + second.history}
    assert resumed == {m["step"]: m["loss"] for m in straight.history}
    ours = load_file(str(tmp_path / "resumed" / "final" / LORA_WEIGHTS))
    theirs = load_file(str(tmp_path / "straight" / "final" / LORA_WEIGHTS))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
