"""CLIP embeddings (open_clip) and the CLIP-T / CLIP-I scores.

- CLIP-T: 100 · max(cos(image, text), 0) per pair, averaged (the per-pair clamp of Hessel et al.; torchmetrics
  clamps the mean instead, which differs only when some cosine is negative).
- CLIP-I: cos(generated image, reference image) per pair, averaged, reported on LAION-SG's 0..1 cosine scale.

The model is `model` + `pretrained` as open_clip names them (default ViT-L-14 / openai), or a local folder in
open_clip's hub layout (`open_clip_config.json` + weights), loaded through open_clip's `local-dir:` schema.
Embeddings holding a NaN or an infinity are refused at `update_embeddings` (ValueError naming the side).
`CLIPScore` and `CLIPImageScore` are `torchmetrics.Metric` subclasses (`update` / `compute` / `reset`, distributed
sync); the functional forms are `clip_t_scores` and `cosine_scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from benchmark.metrics.base import BenchmarkMetric, split_metric_kwargs, state_array, to_state
from benchmark.metrics.precomputed import Precomputed
from benchmark.metrics.validation import require_finite
from benchmark.provenance import weights_sha256

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLIPEmbedder",
    "CLIPImageScore",
    "CLIPScore",
    "clip_provenance",
    "clip_t_scores",
    "cosine_scores",
    "l2_normalize",
]

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


class _PairedCLIPMetric(BenchmarkMetric):
    """Mean of a per-pair score over all pairs seen by `update`.

    The per-pair score (the functional form, `score`, on float64 embeddings) is taken as pairs arrive and kept in
    a list state of float64 values (one per pair, reduced by concatenation across processes); `compute()` gives
    their mean and (population) standard deviation. So the state is 8 bytes per pair instead of two embeddings,
    and the values are exactly those of the functional form on all pairs at once.
    """

    key: ClassVar[str]
    label: ClassVar[str]
    sides: ClassVar[tuple[str, str]]  # what the rows of `a` and `b` are, for error messages
    score: Callable[[np.ndarray, np.ndarray], np.ndarray]
    count_key = "n_pairs"

    def __init__(self, embedder: CLIPEmbedder | Precomputed | None = None, **kwargs: Any) -> None:
        metric_kwargs, embedder_kwargs = split_metric_kwargs(kwargs)
        super().__init__(**metric_kwargs)
        self.embedder = embedder or CLIPEmbedder(**embedder_kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def _add_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        require_finite(self.label, **dict(zip(self.sides, (a, b), strict=True)))
        self.scores.append(to_state(self.score(a, b), np.float64, self.device))

    def update_embeddings(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add pairs given as embeddings (row i of `a` with row i of `b`); all values must be finite."""
        self.update(embeddings=(a, b))

    def per_pair(self) -> np.ndarray:
        """The score of every pair so far, in the order added (float64)."""
        scores = state_array(self.scores, np.float64)
        return np.zeros(0) if scores is None else scores

    def compute(self) -> dict[str, Any]:
        scores = self.per_pair()
        if not len(scores):
            raise RuntimeError(f"{type(self).__name__}.compute() before any update()")
        return {
            self.key: float(scores.mean()),
            f"{self.key}_std": float(scores.std()),
            "n_pairs": len(scores),
            **self.embedder.provenance,
        }


class CLIPScore(_PairedCLIPMetric):
    """CLIP-T: mean over (image, text) pairs of 100 · max(cos, 0)."""

    key = "clip_t"
    label = "CLIP-T"
    labels = {"clip_t": "CLIP-T"}
    details_key = "clip_t"
    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 100.0
    sides = ("generated_image", "text")
    score = staticmethod(clip_t_scores)

    def update(
        self,
        images: Sequence[Image.Image] | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        *,
        embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add (image, text) pairs, or (``embeddings=(image_embeddings, text_embeddings)``) their embeddings."""
        if embeddings is None:
            if len(images) != len(texts):
                raise ValueError(f"{len(images)} images but {len(texts)} texts")
            embeddings = self.embedder.embed_images(images), self.embedder.embed_texts(texts)
        self._add_pairs(*embeddings)


class CLIPImageScore(_PairedCLIPMetric):
    """CLIP-I: mean over (generated, reference) image pairs of the cosine similarity (0..1 scale)."""

    key = "clip_i"
    label = "CLIP-I"
    labels = {"clip_i": "CLIP-I"}
    details_key = "clip_i"
    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0
    sides = ("generated", "reference")
    score = staticmethod(cosine_scores)

    def update(
        self,
        images: Sequence[Image.Image] | np.ndarray | None = None,
        references: Sequence[Image.Image] | np.ndarray | None = None,
        *,
        embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Add (generated, reference) image pairs, or (``embeddings=(generated, reference)``) their embeddings."""
        if embeddings is None:
            if len(images) != len(references):
                raise ValueError(f"{len(images)} images but {len(references)} reference images")
            embeddings = self.embedder.embed_images(images), self.embedder.embed_images(references)
        self._add_pairs(*embeddings)
