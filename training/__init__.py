"""SDXL-SG: the scene-graph encoder, the diffusers pipeline, and the precompute and training jobs.

    from training import SDXLSGPipeline, SGEncoder

The two public classes are imported on first use, so that importing a submodule (a Ray worker importing
`training.train`, a test writing `laion_sg.offline.fixtures`) does not import the diffusers pipeline stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.pipeline import SDXLSGPipeline
    from training.sg_encoder import SGEncoder

__all__ = ["SDXLSGPipeline", "SGEncoder"]

_LAZY = {"SDXLSGPipeline": "training.pipeline", "SGEncoder": "training.sg_encoder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
