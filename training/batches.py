"""SDXL-SG training batches (`TrainBatch`), and `RowCollator`, which makes them from raw dataset rows.

Two sources, one batch type:

- Raw rows (`schemas.row_schema()`): `RowCollator` decodes the image, resizes and crops it, optionally flips it,
  computes SDXL's micro-conditioning and tokenizes the scene graph. The frozen encoders run in the training step.
- Cache rows (written by `training.precompute`): `training.cache.CacheCollator` rebuilds the VAE latents and the
  frozen text-encoder outputs from bytes; no frozen encoder runs in the training step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from schemas import SceneGraph, flip_graph
from training.bad_rows import Decoded, _short
from training.image_transforms import ImageConfig, is_flipped, load_image, transform_image
from training.rows import _error, _key_of, row_problem, scene_graph_of
from training.sg_features import SGFeatures
from training.sg_graphs import GraphInputs, prepare_graphs

__all__ = ["RowCollator", "TrainBatch"]


@dataclass
class TrainBatch:
    """One batch: either raw (`pixel_values` + `graphs`) or cached (`latents` + `features`)."""

    keys: list[str]
    time_ids: torch.Tensor  # (B, 6)
    pixel_values: torch.Tensor | None = None  # (B, 3, R, R) in [-1, 1]
    graphs: GraphInputs | None = None
    latents: torch.Tensor | None = None  # (B, 4, R/8, R/8), scaled
    features: SGFeatures | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of the rows left out

    @property
    def size(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str) -> TrainBatch:
        """Move the tensors the training step reads directly (graph tokens move inside `encode_graphs`)."""
        return replace(
            self,
            time_ids=self.time_ids.to(device),
            pixel_values=None if self.pixel_values is None else self.pixel_values.to(device),
            latents=None if self.latents is None else self.latents.to(device),
            features=None if self.features is None else self.features.to(device),
        )


class RowCollator:
    """Raw rows -> `TrainBatch`. Thread-safe (Ray Data collates in a prefetch thread).

    Fast tokenizers raise "Already borrowed" when two threads use one instance, so each collator should get its
    own tokenizers; `with_epoch` views share them and the lock.
    """

    def __init__(self, tokenizers: Sequence[Any], config: ImageConfig, epoch: int = 0):
        self.tokenizers = list(tokenizers)
        self.config = config
        self.epoch = epoch
        self._lock = threading.Lock()

    def with_epoch(self, epoch: int) -> RowCollator:
        view = object.__new__(RowCollator)
        view.__dict__.update(self.__dict__, epoch=epoch)
        return view

    def decode(self, rows: Sequence[Mapping[str, Any]]) -> Decoded:
        """Decode, resize and crop (and maybe flip) every row; a row that cannot train is skipped with its reason
        (`row_problem`, or the decoder's error). Needs no tokenizer, so any thread may call it."""
        out = Decoded(rows=len(rows))
        for index, row in enumerate(rows):
            key = _key_of(row)
            if problem := row_problem(row):
                out.skip(index, key, problem)
                continue
            flip = self.config.flip and is_flipped(self.config.seed, self.epoch, key)
            try:
                image, ids = transform_image(load_image(row["image"]), self.config, flip)
            except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
                out.skip(index, key, f"undecodable image ({_error(exc)})")
                continue
            graph = scene_graph_of(row)
            out.keep(index, (key, image, ids, flip_graph(graph) if flip else graph))
        return out

    def assemble(self, samples: Sequence[tuple[str, torch.Tensor, list[float], SceneGraph]]) -> TrainBatch:
        """Decoded samples -> a batch (tokenizes the graphs)."""
        keys, pixels, time_ids, graphs = (list(column) for column in zip(*samples, strict=True))
        with self._lock:
            inputs = prepare_graphs(graphs, self.tokenizers)
        return TrainBatch(keys=keys, time_ids=torch.tensor(time_ids), pixel_values=torch.stack(pixels), graphs=inputs)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TrainBatch:
        """The batch of the usable rows (`TrainBatch.skipped` names the others); ValueError when none is usable."""
        decoded = self.decode(rows)
        return _assembled(self.assemble, decoded)


def _assembled(assemble: Callable[[list[Any]], TrainBatch], decoded: Decoded) -> TrainBatch:
    skipped = [(s.key, s.reason) for s in decoded.skipped]
    if not decoded.samples:
        first = "; ".join(f"{k} ({_short(r)})" for k, r in skipped[:5])
        raise ValueError(f"none of the {decoded.rows} rows is usable: {first}")
    return replace(assemble(decoded.samples), skipped=skipped)
