"""Score a compositing output with Gen4Gen's CP-CLIP and TI-CLIP.

    python -m benchmark.compositing --input COMPOSE_OUT --output SCORES_DIR [--concepts INPUT] \\
        [--num-actors 0 --chunk-size 8 --device cuda --config scores.yaml \\
         --detector.model google/owlv2-base-patch16-ensemble --detector.threshold 0.1 \\
         --detector.query-template "a photo of a {}" --clip.model ViT-L-14 --clip.pretrained openai]

Input. COMPOSE_OUT is what the compositing job writes: ``run.json`` (its ``input`` is the concept folder INPUT,
Gen4Gen's ``INPUT/<scene>/<concept>/*.jpg|png``; ``--concepts`` overrides it) and ``data/*.parquet``, one row per
composite (``key``, ``scene``, ``concepts`` in composition order, ``caption``, ``image`` {bytes, path},
``compositing`` {status, stage, error}, ...). The layout's ``boxes`` are not used: CP-CLIP detects.

Definitions: those of `benchmark.metrics.concept_clip` (exactly; its docstring states every choice):

- CP-CLIP of an image with concepts c = 1..C: ``(1/C) * sum_c s_c`` with ``s_c = (1/n_c) * sum_j cos(r_c, e_cj)``,
  ``r_c`` the CLIP image embedding of concept c's detected region, ``e_cj`` those of its n_c reference images,
  and ``s_c = 0`` when c is not detected (`benchmark.metrics.concept_clip.cp_clip_scores`);
- TI-CLIP of an image: ``cos(CLIP image embedding of the whole image, CLIP text embedding of its caption)``;
- the reported scores are the means over the scored images (`CPCLIPScore`, `TICLIPScore`), plain cosines
  (no x100, no clamp).

Detection. Each composite is decoded as the spatial track's detector decodes images
(`benchmark.spatial.detect`; EXIF orientation, RGB) and given to the open-vocabulary detector (``--detector.*``,
`benchmark.spatial.detect.DetectorSettings`; OWLv2 ``google/owlv2-base-patch16-ensemble`` by default) in one
pass whose queries are its concepts' phrases (`pipelines.compositing.plan.concept_phrase` of the folder name:
``red_teapot`` -> ``red teapot``), each written into ``--detector.query-template`` (``"a photo of a {}"``). Every
predicted box takes the query it scores highest on; boxes scoring at most ``--detector.threshold`` (0.1) are
dropped. A concept's region is the highest-scoring remaining box with its phrase, cropped as the smallest
whole-pixel box holding it (`benchmark.compositing.workers.crop_box`); no box: the concept is undetected and
scores 0. Concepts of one composite sharing a phrase share the box.

References. Every image of ``INPUT/<scene>/<concept>/`` (the files the compositing job draws from,
`pipelines.compositing.plan.scan_scenes`) is a reference image, embedded once per file (not per composite) with
the same CLIP model. CLIP is open_clip (`benchmark.metrics.clip_embedding.CLIPEmbedder`, ViT-L-14 / openai by
default, as the rest of the benchmark).

Excluded rows. A row whose ``compositing.status`` is not ``"ok"`` (or that has no image bytes: stage
``"no image"``) is counted in ``n_failed`` and ``failed_by_stage`` and left out of both means; an image that
does not decode likewise (``n_undecodable``).

Output. SCORES_DIR holds ``embeddings/`` (Parquet chunks of the reference embeddings and of each composite's
detections and embeddings, `benchmark.compositing.workers.STORED_SCHEMA`, written as they finish by
`benchmark.chunks.map_stored`, references and composites in one pass: a re-run resumes and recomputes nothing
already stored, and
refuses to reuse them for other settings (``run.json``) or changed image bytes), ``per_image.parquet`` (every
row: status, CP-CLIP, each concept's ``s_c``, detected flags and boxes, TI-CLIP) and ``scores.json`` (``cp_clip``,
``ti_clip``, ``n_images``, ``n_failed``, ``failed_by_stage``, per-concept ``detection_rate``, the metric details,
settings, provenance). ``--num-actors N`` runs the detector and CLIP on N Ray actors, 0 in this process; each
image is detected and embedded alone, so the numbers do not depend on N or on ``--chunk-size``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["CompositingScoreSettings", "main", "score_compositing"]


def __getattr__(name: str) -> Any:  # the job's module imports torchmetrics; the workers' module does not
    if name in __all__:
        return getattr(importlib.import_module("benchmark.compositing.score"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
