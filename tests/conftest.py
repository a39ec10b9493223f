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
