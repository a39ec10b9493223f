"""`Precomputed`: stands in for a feature extractor or CLIP embedder when the features were computed elsewhere
(on Ray actors, `benchmark.features`), so a metric can report the provenance of its features without loading the
model in this process. Such a metric takes `update_features` / `update_embeddings` only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Precomputed"]


@dataclass(frozen=True)
class Precomputed:
    """The provenance of features extracted elsewhere (e.g. `inception_provenance(...)`, `clip_provenance(...)`)."""

    provenance: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *_: Any) -> Any:
        raise TypeError(
            "these features were computed elsewhere: pass them to update_features / update_embeddings"
        )

    embed_images = embed_texts = __call__
