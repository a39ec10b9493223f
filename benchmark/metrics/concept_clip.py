"""Gen4Gen's CP-CLIP and TI-CLIP on CLIP embeddings (numpy float64; no torch): functional forms only.

Gen4Gen (Yeh et al., "Gen4Gen: Generative Data Pipeline for Generative Multi-Concept Composition", arXiv
2402.15504) proposes the two scores for multi-concept personalisation (the MyCanvas benchmark). Its repository
(github.com/louisYen/Gen4Gen, the pipeline scripts s1-s3) holds no code of either metric, so the definitions below
are those of issue 12 and the paper's description, with every choice the description leaves open stated:

CP-CLIP (composition + personalisation), of one generated image with concepts ``c = 1..C``:

- the detector step finds the region of each concept in the image (Gen4Gen: an open-vocabulary detector queried
  with the concept's class name; choosing the region, e.g. the highest-scoring box above a threshold as
  `benchmark.metrics.visor` does, is that step's job) and embeds the cropped region with CLIP's image encoder,
  giving ``r_c``, or nothing when the concept is not detected;
- ``s_c = (1 / n_c) * sum_j cos(r_c, e_cj)`` over the ``n_c`` reference images of the concept (embeddings
  ``e_cj``): the *mean* over reference images, as DreamBooth's and Custom Diffusion's CLIP-I average over
  (generated, reference) pairs (not the cosine with the mean reference embedding, nor the best reference);
- ``s_c = 0`` when the concept is not detected: a missing concept costs its whole share;
- ``CP-CLIP = (1 / C) * sum_c s_c``: every concept weighs the same, whatever its number of reference images.
  A set's CP-CLIP is the mean over its images.

TI-CLIP (text-image alignment) of a generated image and its composition prompt: ``cos(image, prompt)``, CLIP's
image embedding of the whole image against the text embedding of the prompt; a set's TI-CLIP is the mean over
its (image, prompt) pairs.

Scale: both are plain cosines, within [-1, 1] (CLIP embeddings of images and of image-text pairs are positive in
practice). No CLIPScore rescaling (``w = 2.5``), no ``x 100`` and no clamp at 0, so the two scores share CLIP-I's
scale in this repository; this repository's CLIP-T, ``100 * max(cos, 0)``, equals ``100 * TI-CLIP`` on every pair
with a non-negative cosine. A detected concept whose region has a negative mean cosine therefore scores below an
undetected one (0); the cosine is not clamped because the clamp is not part of either definition.

Embeddings need not be unit vectors (they are normalised here); a zero vector, a NaN or an infinity, mismatched
dimensions or counts, a concept without reference images and empty input raise ValueError.

Their torchmetrics classes are in `benchmark.metrics.concept_clip_score`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmark.metrics.clip_embedding import cosine_scores, l2_normalize
from benchmark.metrics.validation import require_finite

__all__ = ["cp_clip", "cp_clip_scores", "ti_clip", "ti_clip_scores"]


def _rows(values: np.ndarray, what: str, metric: str) -> np.ndarray:
    """`values` as float64 rows of non-zero, finite vectors (a 1-D vector is one row)."""
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows[None, :]
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ValueError(f"{metric}: {what} must be one or more non-empty vectors, got shape {rows.shape}")
    require_finite(metric, **{what.replace(" ", "_"): rows})
    if (np.linalg.norm(rows, axis=1) == 0).any():
        raise ValueError(f"{metric}: {what} holds a zero vector, which has no direction")
    return rows


def cp_clip_scores(regions: Sequence[np.ndarray | None], references: Sequence[np.ndarray]) -> np.ndarray:
    """Per-concept CP-CLIP scores ``s_c`` of one image (float64, one per concept, in order).

    ``regions[c]`` is the CLIP image embedding (a D-vector) of concept c's detected region, or None when the
    concept was not detected; ``references[c]`` is the n_c x D embeddings of its reference images (n_c >= 1, a
    single D-vector is one reference). ``s_c`` is the mean cosine of the region with the references, 0 when
    not detected (module docstring)."""
    if len(regions) != len(references):
        raise ValueError(f"CP-CLIP: {len(regions)} concept regions but {len(references)} reference sets")
    if not len(regions):
        raise ValueError("CP-CLIP: no concepts")
    scores = np.zeros(len(regions), dtype=np.float64)
    dims = set()
    for c, (region, refs) in enumerate(zip(regions, references, strict=True)):
        ref_rows = _rows(refs, f"reference embeddings of concept {c}", "CP-CLIP")
        dims.add(ref_rows.shape[1])
        if region is None:
            continue
        region_row = _rows(region, f"region embedding of concept {c}", "CP-CLIP")
        if region_row.shape[0] != 1:
            raise ValueError(
                f"CP-CLIP: concept {c} must have one region embedding, got {region_row.shape[0]}"
            )
        dims.add(region_row.shape[1])
        if len(dims) > 1:
            break
        scores[c] = float(np.mean(l2_normalize(ref_rows) @ l2_normalize(region_row)[0]))
    if len(dims) > 1:
        raise ValueError(f"CP-CLIP: embeddings of different dimensions {sorted(dims)}")
    return scores


def cp_clip(regions: Sequence[np.ndarray | None], references: Sequence[np.ndarray]) -> float:
    """CP-CLIP of one image: the mean over its concepts of `cp_clip_scores` (an undetected concept counts 0)."""
    return float(np.mean(cp_clip_scores(regions, references)))


def ti_clip_scores(image_embeddings: np.ndarray, prompt_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair TI-CLIP: ``cos(image_i, prompt_i)`` for N x D image and prompt embeddings (row i with row i)."""
    images = _rows(image_embeddings, "image embeddings", "TI-CLIP")
    prompts = _rows(prompt_embeddings, "prompt embeddings", "TI-CLIP")
    if images.shape != prompts.shape:
        raise ValueError(
            f"TI-CLIP: image embeddings {images.shape} and prompt embeddings {prompts.shape} differ"
        )
    return cosine_scores(images, prompts)


def ti_clip(image_embeddings: np.ndarray, prompt_embeddings: np.ndarray) -> float:
    """TI-CLIP of a set: the mean over its (image, prompt) pairs of `ti_clip_scores`."""
    return float(np.mean(ti_clip_scores(image_embeddings, prompt_embeddings)))
