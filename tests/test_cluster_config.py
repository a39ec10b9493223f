"""`ray_cluster.yaml` is a valid Ray autoscaler config, checked by Ray's own validator."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_passes_ray_validation():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    prepared = prepare_config(config)  # what `ray up` does before validating: merge provider defaults
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["resources"]["GPU"] for t in gpu_types.values()} == {8, 1}
    assert any("H100" in key for t in gpu_types.values() for key in t["resources"])
    assert prepared["idle_timeout_minutes"] > 0
    assert all(t["max_workers"] <= prepared["max_workers"] for t in types.values())
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard must not listen on a public address"
    assert "ray-llm:2.60" in prepared["docker"]["image"]
    assert any("[gpu]" in command for command in prepared["setup_commands"])


def test_kuberay_rayjob_manifest_runs_our_annotate_job():
    import shlex

    from pipelines.annotate import load_config

    manifest = yaml.safe_load((ROOT / "deploy" / "rayjob-annotate.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    entrypoint = shlex.split(manifest["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", "pipelines.annotate"]
    config = load_config(entrypoint[3:])  # the entrypoint's flags are ones the job accepts
    assert (config.engine, config.task) == ("vllm", "scene_graph")
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups, "annotation needs a GPU worker group"
