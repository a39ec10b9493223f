"""The demo chain (annotate -> export -> train -> bench set -> bench x2 -> leaderboard) as `ray job submit` jobs.

`make demo` runs the same `laion_sg_demo.plan` in-process (CI runs it after the suite); here every stage is a job
on a real local cluster on 127.0.0.1, each job's outputs being the next one's inputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from local_ray_cluster import local_ray_cluster

from laion_sg_demo import plan, prepare_inputs, verify_artifacts


@pytest.mark.slow
def test_chain_as_ray_jobs_on_a_local_cluster(tiny_models_dir: Path, tmp_path: Path) -> None:
    models = {name: tiny_models_dir / name for name in ("qwen2_5_vl", "sdxl", "open_clip")}
    models["inception"] = tiny_models_dir / "inception" / "pt_inception-random.pth"
    output = tmp_path / "chain"
    output.mkdir()
    models, photos = prepare_inputs(output, models)
    stages = plan(output, models, photos, train_steps=2)
    assert [s.module for s in stages] == [
        "pipelines.annotate", "pipelines.annotate", "pipelines.export", "training.train", "benchmark.dataset",
        "benchmark.run", "benchmark.run", "benchmark.leaderboard",
    ]  # fmt: skip
    with local_ray_cluster(tmp_path, num_cpus=4) as cluster:
        for stage in stages:
            job = cluster.submit(stage.module, stage.argv, cwd=tmp_path)
            assert job.returncode == 0 and "succeeded" in job.stdout, (
                f"{stage.title}: {job.stdout[-3000:]}{job.stderr[-3000:]}"
            )
    checks = verify_artifacts(output)
    assert set(checks) == {"dataset", "pipeline", "record baseline", "record sdxl_sg"}
