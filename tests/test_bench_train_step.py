"""bench/train_step.py counts model FLOPs on a weightless meta-device copy. The count must equal what the same
step counts when it really runs on CPU with attention as matmuls (SDPA's math backend)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from train_step import count_flops, main  # noqa: E402

from laion_sg.offline.fixtures import write_fixture_dataset  # noqa: E402
from training.batches import RowCollator  # noqa: E402
from training.image_transforms import ImageConfig  # noqa: E402
from training.rows import find_splits, read_rows, usable  # noqa: E402
from training.sg_encoder import SGEncoder  # noqa: E402
from training.step import FrozenSDXL  # noqa: E402


def test_meta_flop_count_equals_a_real_cpu_step(tiny_models_dir: Path, tmp_path: Path) -> None:
    rows = [r for r in read_rows(find_splits(write_fixture_dataset(tmp_path / "data"))["train"]) if usable(r)][:2]
    flops = {}
    for device in ("meta", "cpu"):
        frozen = FrozenSDXL.load(tiny_models_dir / "sdxl", device)
        encoder = SGEncoder.for_text_encoders(*frozen.text_encoders, hidden_dim=32, mlp_hidden_dim=64)
        batch = RowCollator(frozen.tokenizers, ImageConfig(resolution=64))(rows).to(torch.device(device))
        with sdpa_kernel(SDPBackend.MATH):
            flops[device] = count_flops(frozen, encoder.to(device), batch)["flops"]
    assert flops["meta"] == flops["cpu"] > 0


def test_bench_script_reports_flops_time_and_memory(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figures.json"
    assert main(["--size", "tiny", "--batch-size", "1", "--steps", "1", "--device", "cpu", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    results = figures["results"]
    assert results["raw"]["flops"] > results["cache"]["flops"] > 0  # the cache skips the VAE and text encoders
    for r in results.values():
        assert r["samples_per_s"] > 0 and r["peak_mem_mib"] > 0
        assert r["mfu"] == r["flops"] / r["step_s"] / figures["peak_flops"]
    assert "raw/cache FLOP ratio" in capsys.readouterr().out
