"""Shared fixtures: tiny random-weight models, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from laion_sg.offline import make_tiny_models

# Property tests draw 150 examples each; `make mutation` runs them once per mutant and sets HYPOTHESIS_PROFILE=mutation.
settings.register_profile("suite", max_examples=150)
settings.register_profile("mutation", max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding what `laion-sg make-tiny-models` writes: qwen2_5_vl/, sdxl/, open_clip/, owlv2/,
    clipseg/, inception/*.pth.

    With ``LAION_SG_TINY_MODELS=DIR`` the models come from DIR, built there once if DIR is empty (`make mutation`
    runs the unit tests once per mutant and sets it); tests only read them."""
    if cached := os.environ.get("LAION_SG_TINY_MODELS"):
        root = Path(cached)
        if not (root / "complete").exists():
            make_tiny_models(root)
            (root / "complete").touch()
        return root
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


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: loading a local folder must stay offline."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
