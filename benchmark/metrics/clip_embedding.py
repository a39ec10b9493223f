"""CLIP embeddings (open_clip, `CLIPEmbedder`) and the per-pair scores the CLIP metrics average: the part the
feature actors need, without torch's metric stack (torchmetrics is imported only by `clip_score`'s classes).

The model is `model` + `pretrained` as open_clip names them (default ViT-L-14 / openai), or a local folder in
open_clip's hub layout (`open_clip_config.json` + weights), loaded through open_clip's `local-dir:` schema.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from benchmark.provenance import weights_sha256

if TYPE_CHECKING:
    import torch

__all__ = ["CLIPEmbedder", "clip_provenance", "clip_t_scores", "cosine_scores", "l2_normalize"]

_SCHEMAS = ("local-dir:", "hf-hub:")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of paired embeddings."""
    a, b = l2_normalize(a), l2_normalize(b)
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {a.shape} vs {b.shape}")
    return np.einsum("nd,nd->n", a, b)


def clip_t_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair CLIP-T: 100 · max(cos, 0)."""
    return 100.0 * np.maximum(cosine_scores(image_embeddings, text_embeddings), 0.0)


def _as_pil(images: Sequence[Image.Image] | Sequence[np.ndarray] | np.ndarray) -> list[Image.Image]:
    return [
        im.convert("RGB") if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images
    ]


def clip_provenance(model: str | Path, pretrained: str | None) -> dict[str, Any]:
    """The open_clip name the model loads under (a local folder becomes ``local-dir:DIR``), its pretrained tag
    (none for a schema name) and, for a local folder, the sha256 of its weights."""
    name = str(model)
    if not name.startswith(_SCHEMAS) and Path(name).is_dir():
        name = "local-dir:" + name
    local_dir = name.removeprefix("local-dir:") if name.startswith("local-dir:") else None
    return {
        "clip_model": name,
        "clip_pretrained": None if name.startswith(_SCHEMAS) else pretrained,
        "clip_weights_sha256": weights_sha256(local_dir),
    }


class CLIPEmbedder:
    """L2-normalised open_clip image and text embeddings (float64 arrays)."""

    def __init__(
        self,
        model: str | Path = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        device: str | None = None,
        batch_size: int = 32,
    ) -> None:
        import open_clip
        import torch

        self.provenance = clip_provenance(model, pretrained)
        name = self.provenance["clip_model"]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=self.provenance["clip_pretrained"], device=self.device
        )
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batch_size = batch_size

    def _encode(
        self,
        items: Sequence[Any],
        to_tensor: Callable[[Sequence[Any]], torch.Tensor],
        encode: Callable[[torch.Tensor], torch.Tensor],
    ) -> np.ndarray:
        import torch

        if not items:
            raise ValueError("nothing to embed")
        out = []
        for start in range(0, len(items), self.batch_size):
            batch = to_tensor(items[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(encode(batch).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))

    def embed_images(self, images: Sequence[Image.Image] | Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """PIL images or uint8 H×W×3 arrays → N×D unit vectors."""
        import torch

        pil = _as_pil(images)
        return self._encode(
            pil, lambda b: torch.stack([self.preprocess(im) for im in b]), self.model.encode_image
        )

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings → N×D unit vectors (truncated to the model's context length by its tokenizer)."""
        return self._encode(list(texts), self.tokenizer, self.model.encode_text)
