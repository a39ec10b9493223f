"""`training.pretrain_sg`: SGDiff-style pre-training of the SG encoder (contrastive + masked graph), its
resume, its hand-over to `training.train --init-sg-encoder`, and `bench/pretrain_sg.py`.

Tiny random models (SDXL text encoders, open_clip at 64 px), the fixture export (8 usable train rows), a
16-wide encoder, CPU.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from benchmark.metrics.clip_embedding import CLIPEmbedder
from laion_sg.offline.fixtures import write_fixture_dataset
from training.image_transforms import load_image, transform_image
from training.pretrain_losses import SGPretrainModel, info_nce, mask_items, masked_loss
from training.pretrain_sg import (
    PRETRAIN_JSON,
    CLIPImageSettings,
    FrozenCLIPImages,
    PretrainSettings,
    main,
    pretrain_local,
)
from training.rows import find_splits, read_rows, usable
from training.settings import TrainSettings
from training.sg_encoder import SGEncoder
from training.sg_features import SGFeatures
from training.sg_graphs import BatchIndex, GraphIndex
from training.train import parse_config, train_local

REPO = Path(__file__).resolve().parents[1]
TINY_ENCODER = {"hidden_dim": 16, "mlp_hidden_dim": 32}
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_dataset(tmp_path_factory.mktemp("pretrain_data"), max_side=64)


def tiny_settings(data: Path, models: Path, output: Path, **overrides) -> PretrainSettings:
    values = {"batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 2, "max_steps": 3,
              "encoder": TINY_ENCODER, "clip": {"model": str(models / "open_clip")}}  # fmt: skip
    return PretrainSettings(
        input=str(data), model=str(models / "sdxl"), output=str(output), **(values | overrides)
    )


def encoder_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / WEIGHTS))


# ---------------------------------------------------------------------------------------------- losses


def test_info_nce_is_the_symmetric_cross_entropy_written_out() -> None:
    """Against numpy: cosine logits over the temperature, log-softmax over rows (graph -> image) and over
    columns (image -> graph), the diagonal's mean, averaged; and a 2x2 case by hand: log(1 + e^-2)."""
    rng = np.random.default_rng(0)
    graphs, images = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    g = graphs / np.linalg.norm(graphs, axis=1, keepdims=True)
    i = images / np.linalg.norm(images, axis=1, keepdims=True)
    logits = g @ i.T / 0.07
    rows = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    cols = logits - np.log(np.exp(logits).sum(axis=0, keepdims=True))
    expected = -(np.diag(rows).mean() + np.diag(cols).mean()) / 2
    loss = info_nce(torch.tensor(graphs, dtype=torch.float64), torch.tensor(images), temperature=0.07)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    eye = torch.eye(2)
    assert float(info_nce(eye, 3 * eye, temperature=0.5)) == pytest.approx(np.log1p(np.exp(-2.0)), rel=1e-6)


def test_mask_is_a_seeded_draw_at_the_rate_with_at_least_one_item() -> None:
    first = mask_items(50_000, 0.15, seed=7)
    assert torch.equal(first, mask_items(50_000, 0.15, seed=7))
    assert not torch.equal(first, mask_items(50_000, 0.15, seed=8))
    assert float(first.float().mean()) == pytest.approx(0.15, abs=0.005)
    scores = torch.rand(5, generator=torch.Generator().manual_seed(3))
    assert mask_items(5, 0.0, seed=3).tolist() == (scores == scores.min()).tolist()  # exactly one, seeded
    assert mask_items(5, 1.0, seed=3).all() and mask_items(0, 0.5, seed=3).numel() == 0


def test_masked_loss_is_the_cosine_distance() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    assert float(masked_loss(x, 5 * x)) == pytest.approx(0.0, abs=1e-7)
    assert float(masked_loss(x, -x)) == pytest.approx(2.0)
    assert float(masked_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))) == pytest.approx(1.0)


def hand_made_features(text_dim: int) -> SGFeatures:
    """Two graphs: nodes 0, 1 and the edge 0 -> 1 (item 3) in the first; node 2 alone in the second."""
    graphs = [
        GraphIndex(2, np.array([[0, 1]]), token_pos=np.array([1, 2, 3]), token_source=np.array([0, 2, 1])),
        GraphIndex(1, np.zeros((0, 2), dtype=np.int64), token_pos=np.array([1]), token_source=np.array([0])),
    ]
    generator = torch.Generator().manual_seed(0)
    return SGFeatures(
        token_embeds=torch.randn(2, 5, text_dim, generator=generator),
        pooled=torch.randn(2, 4, generator=generator),
        node_feats=torch.randn(3, text_dim, generator=generator).requires_grad_(True),
        edge_feats=torch.randn(1, text_dim, generator=generator).requires_grad_(True),
        index=BatchIndex.merge(graphs, sequence_length=5),
    )


def test_masked_items_are_hidden_from_the_encoder_and_alpha_stays_out() -> None:
    """Masking node 0: its reconstruction gets nothing from node 0's own feature (zero gradient), something
    from its neighbours (node 1 and the edge), nothing from the other graph's node 2. Alpha gets no
    gradient."""
    torch.manual_seed(0)
    model = SGPretrainModel(SGEncoder(text_dim=8, hidden_dim=4, mlp_hidden_dim=8, num_layers=1), clip_dim=3)
    features = hand_made_features(8)
    mask = torch.tensor([True, False, False, False])
    losses = model(features, torch.randn(2, 3), mask, temperature=0.07)
    losses["masked"].backward(retain_graph=True)
    node_grad = features.node_feats.grad.abs().sum(dim=1)
    assert node_grad[0] == 0 and node_grad[1] > 0 and node_grad[2] == 0
    assert features.edge_feats.grad.abs().sum() > 0
    assert model.heads.mask_embedding.grad.abs().sum() > 0
    losses["contrastive"].backward()
    assert model.encoder.alpha.grad is None and float(model.encoder.alpha) == 0.0
    assert model.heads.graph_proj.weight.grad.abs().sum() > 0


def test_clip_image_embedding_is_clip_embedders(data_dir: Path, tiny_models_dir: Path) -> None:
    """The job's CLIP target (RowCollator's resize and crop, then the model's normalisation) is what
    `CLIPEmbedder` gives for the same images: equal pixels and embeddings, but for a one-pixel crop offset
    when the crop margin is odd (torchvision rounds half a margin to even, `transform_image` floors it)."""
    rows = [r for r in read_rows(find_splits(data_dir)["train"]) if usable(r)]
    clip = FrozenCLIPImages.load(
        CLIPImageSettings(model=str(tiny_models_dir / "open_clip")), torch.device("cpu")
    )
    reference = CLIPEmbedder(tiny_models_dir / "open_clip", device="cpu")
    exact = 0
    for row in rows:
        image = load_image(row["image"])
        pixels = transform_image(image, clip.image_config(seed=0), False)[0]
        ours = torch.nn.functional.normalize(clip.embed(pixels[None]), dim=-1).numpy()[0]
        theirs = reference.embed_images([image])[0]
        assert float(ours @ theirs) > 0.998
        if torch.allclose(((pixels + 1) / 2 - clip.mean) / clip.std, reference.preprocess(image), atol=1e-5):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
            exact += 1
    assert exact >= len(rows) // 2


def test_help_lists_the_settings_with_defaults(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.startswith("usage: python -m training.pretrain_sg ")
    one_line = re.sub(r"\n {20,}", " ", out)
    defaults = dict(re.findall(r"^  (--[\w.-]+) [^\n]*\(default: ([^)]*)\)$", one_line, flags=re.MULTILINE))
    expected = {
        "--max-steps": "1000", "--batch-size": "32", "--lr": "0.0001", "--seed": "0", "--temperature": "0.07",
        "--mask-probability": "0.15", "--loss-weights.contrastive": "1.0", "--loss-weights.masked": "1.0",
        "--checkpoint-every": "500", "--num-workers": "1", "--clip.model": "ViT-B-32",
        "--clip.pretrained": "openai", "--encoder.hidden-dim": "512",
    }  # fmt: skip
    assert {flag: defaults.get(flag) for flag in expected} == expected
    for flag in ("--input", "--model", "--output", "--config"):
        assert f"  {flag} " in out, flag


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def pretrained(data_dir: Path, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step pre-training run's output directory."""
    out = tmp_path_factory.mktemp("pretrained")
    ctx, state = pretrain_local(tiny_settings(data_dir, tiny_models_dir, out))
    assert state.step == 3 and [m["step"] for m in ctx.history] == [1, 2, 3]
    assert all(np.isfinite([m["loss"], m["contrastive"], m["masked"]]).all() for m in ctx.history)
    assert all(m["masked_items"] >= 1 for m in ctx.history)
    return out


@pytest.mark.slow
def test_final_encoder_loads_and_starts_fine_tuning(pretrained: Path, data_dir: Path, tiny_models_dir: Path,
                                                    tmp_path: Path) -> None:  # fmt: skip
    """``final/`` loads with `SGEncoder.from_pretrained` (alpha 0, the last checkpoint's trained weights). A
    fine-tuning run with ``--init-sg-encoder final`` starts from those weights: after its first step (alpha 0
    makes every other gradient exactly zero; no weight decay) all but alpha still equal them. Other widths are
    refused, naming them."""
    final = pretrained / "final"
    encoder = SGEncoder.from_pretrained(final)
    assert float(encoder.alpha.detach()) == 0.0 and encoder.config.hidden_dim == 16
    weights = encoder_weights(final)
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in weights.items())
    assert json.loads((final / PRETRAIN_JSON).read_text())["step"] == 3

    config = TrainSettings(
        input=str(data_dir), model=str(tiny_models_dir / "sdxl"), output=str(tmp_path / "tune"),
        init_sg_encoder=final, encoder=TINY_ENCODER, max_steps=1, batch_size=2, resolution=64, warmup_steps=0,
        weight_decay=0.0, checkpoint_every=1, val_batches=0,
    )  # fmt: skip
    train_local(config)
    tuned = encoder_weights(tmp_path / "tune" / "checkpoints" / "step_00000001" / "sg_encoder")
    assert tuned.keys() == weights.keys()
    assert all(torch.equal(tuned[k], v) for k, v in weights.items() if k != "alpha")
    assert float(tuned["alpha"]) != 0.0

    with pytest.raises(ValidationError, match="hidden_dim"):
        TrainSettings(input="d", model="m", output="o", init_sg_encoder=final, encoder={"hidden_dim": 8})
    argv = ["--input", "d", "--model", "m", "--output", "o", "--encoder.hidden-dim", "16",
            "--encoder.mlp-hidden-dim", "32", "--init-sg-encoder", str(final)]  # fmt: skip
    assert parse_config(argv).init_sg_encoder == final.resolve()
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv[:6] + argv[8:])  # default mlp_hidden_dim 512
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_resumed_run_reproduces_the_uninterrupted_one(
    data_dir: Path, tiny_models_dir: Path, tmp_path: Path
) -> None:
    """5 steps of batch 4 over 8 rows (2 batches an epoch), a checkpoint every 2: stopped after step 3 (last
    checkpoint: step 2) and started again, the run gives the uninterrupted run's losses (both parts) and final
    encoder and heads, bit for bit. Checkpoints hold safetensors and JSON only."""
    straight, _ = pretrain_local(tiny_settings(data_dir, tiny_models_dir, tmp_path / "straight", max_steps=5))
    settings = tiny_settings(data_dir, tiny_models_dir, tmp_path / "resumed", max_steps=5)
    first, state = pretrain_local(settings, stop_after=3)
    assert state.step == 3 and not (tmp_path / "resumed" / "final").exists()
    checkpoint = sorted((tmp_path / "resumed" / "checkpoints").iterdir())[-1]
    assert checkpoint.name == "step_00000002"
    assert {p.name for p in checkpoint.iterdir()} == {
        "sg_encoder", "heads.safetensors", "optimizer.safetensors", "trainer_state.json", "state.json",
        "rng_rank0.safetensors",
    }  # fmt: skip
    second, _ = pretrain_local(settings)
    assert [m["step"] for m in second.history] == [3, 4, 5] and second.history[0]["resumed_from_step"] == 2
    assert {m["epoch"] for m in straight.history} == {0, 1, 2}

    def losses(history: list[dict]) -> dict[int, tuple[float, float, float]]:
        return {m["step"]: (m["loss"], m["contrastive"], m["masked"]) for m in history}

    assert losses(first.history[:2] + second.history) == losses(straight.history)
    assert straight.history[0]["loss"] != straight.history[-1]["loss"]
    for name in (f"final/{WEIGHTS}", f"checkpoints/step_00000005/sg_encoder/{WEIGHTS}",
                 "checkpoints/step_00000005/heads.safetensors"):  # fmt: skip
        ours, theirs = (
            load_file(str(tmp_path / "resumed" / name)),
            load_file(str(tmp_path / "straight" / name)),
        )
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items()), name


@pytest.mark.slow
def test_bench_prints_both_curves_and_their_ratio(data_dir: Path, tiny_models_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """2 pre-training and 2 fine-tuning steps per run: both curves, their per-step ratio (exactly 1 at step 1,
    where alpha is 0 in both runs) and the last-quarter ratio."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from pretrain_sg import main as bench_main
    finally:
        sys.path.remove(str(REPO / "bench"))
    out = tmp_path / "figures.json"
    models = ["--model", str(tiny_models_dir / "sdxl"), "--clip-model", str(tiny_models_dir / "open_clip")]
    steps = ["--pretrain-steps", "2", "--steps", "2"]
    argv = ["--input", str(data_dir), *models, *steps, "--json", str(out)]
    assert bench_main(argv) == 0
    printed = capsys.readouterr().out
    assert "pre-training loss" in printed and "mean of the last quarter" in printed
    figures = json.loads(out.read_text())
    assert len(figures["pretrained"]) == len(figures["default"]) == 2 and len(figures["pretrain_loss"]) == 2
    assert figures["ratio_per_step"][0] == 1.0
    assert figures["ratio_last_quarter"] == pytest.approx(figures["pretrained"][-1] / figures["default"][-1])
