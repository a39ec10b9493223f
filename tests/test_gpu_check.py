"""bench/gpu_check.sh --tiny: the GPU readiness check runs end to end on CPU, with tiny models and without Ray.

`ray` is made unimportable in every Python process the script starts (a `sitecustomize` on PYTHONPATH puts a
meta-path finder in front that refuses it), as on the bare CUDA machine the script is written for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_RAY = '''import sys


class NoRay:
    """Refuse `ray` and its submodules, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the gpu_check test)", name=name)
        return None


sys.meta_path.insert(0, NoRay())
'''


@pytest.mark.slow  # ~45 s on two idle cores: three processes that each import torch and diffusers
def test_gpu_check_tiny_runs_without_ray_and_reports_every_figure(tmp_path: Path) -> None:
    blocker = tmp_path / "no_ray"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_RAY)
    pythonpath = os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHON": sys.executable, "PYTHONPATH": pythonpath, "TMPDIR": str(tmp_path)}
    env.pop("GPU_CHECK_SITE", None)
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the gpu_check test" in probe.stderr

    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert "=== train: ok" in (out / "gpu_check.log").read_text()

    assert {name: stage["status"] for name, stage in summary["stages"].items()} == dict.fromkeys(
        ("train", "generation", "features"), "ok"
    )
    assert summary["ok"] is True and summary["targets_apply"] is False
    assert summary["seconds"] <= summary["budget_s"]

    assert [(entry["resolution"], entry["batch_size"]) for entry in summary["train"]] == [(64, 1), (128, 1)]
    for entry in summary["train"]:
        for path in ("cache", "raw"):
            figures = entry[path]
            assert all(
                figures[key] > 0 for key in ("samples_per_s", "step_s", "mfu", "flops", "peak_mem_mib")
            )
        # the cache skips the VAE and the text encoders
        assert entry["raw"]["flops"] > entry["cache"]["flops"]
        assert entry["cache_speedup"] == pytest.approx(
            entry["cache"]["samples_per_s"] / entry["raw"]["samples_per_s"]
        )

    generation = summary["generation"]
    assert generation["resolution"] == 64 and generation["steps"] == 2
    for key in ("plain_s_per_image", "sg_s_per_image", "plain_conditioning_s", "sg_conditioning_s"):
        assert generation[key] > 0
    assert generation["overhead"] == pytest.approx(
        generation["sg_s_per_image"] / generation["plain_s_per_image"] - 1
    )

    features = summary["features"]
    assert features["inception_images_per_s"] > 0
    assert set(features["clip_images_per_s"]) == {"tiny"} and features["clip_images_per_s"]["tiny"] > 0

    assert set(summary["targets"]) == {"cache_speedup_64_batch1>=1.5", "generation_overhead<=0.03"}
