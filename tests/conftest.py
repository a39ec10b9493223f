"""Shared fixtures: tiny random-weight models, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from laion_sg_cli import make_tiny_models


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding what `laion-sg make-tiny-models` writes: qwen2_5_vl/, sdxl/, open_clip/, inception/*.pth."""
    root = tmp_path_factory.mktemp("tiny_models")
    make_tiny_models(root)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the whole session (starting one costs ~6 s). Four logical CPUs: the 2-worker Ray
    Train tests need them beside Ray Data's tasks. Yields the `ray` module."""
    import ray
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
