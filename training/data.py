"""Dataset rows -> SDXL-SG training batches.

Two sources, one batch type (`TrainBatch`):

- Raw rows (`schemas.row_schema()`): `RowCollator` decodes the image, resizes and crops it, optionally flips it,
  computes SDXL's micro-conditioning and tokenizes the scene graph. The frozen encoders run in the training step.
- Cache rows (written by `training.precompute`): `CacheCollator` rebuilds the VAE latents and the frozen
  text-encoder outputs from bytes; no frozen encoder runs in the training step.

Decisions:

- Crop: ``crop="center"`` (default) resizes the shorter side to the resolution and center-crops, as SDXL was
  trained; ``crop="none"`` squashes the whole image to a square, as LAION-SG trained at 512² "without crop" (the
  aspect ratio is lost, and SDXL's conditioning has no term for it). Either way the micro-conditioning is
  ``(original height, original width, crop top, crop left, target height, target width)`` (SDXL's `add_time_ids`),
  crop coordinates in the resized image.
- Flip: off by default. When on, an image is mirrored with probability 1/2, decided by a hash of
  (seed, epoch, row key), and the words "left" and "right" are swapped in every name, attribute and predicate of
  its graph, so that "cup left of plate" stays true. The cache is written without flips; training from a cache
  with flips on is refused (the mirrored latents and texts would have to be cached too).
- Cache format (`CACHE_SCHEMA`): one Parquet row per image under ``CACHE/split=<split>/``. Tensors are raw bytes
  (row-major, the cache dtype); fixed shapes are in ``CACHE/cache.json`` (latents, 77 x text_dim token states,
  pooled), node and relation features have ``num_nodes`` and ``len(edges) / 2`` rows of ``text_dim``; the graph
  index (edges, token positions, token sources) is int32 lists. Latents are the VAE posterior mean times the VAE
  scaling factor.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from schemas import SceneGraph, SGObject, SGRelation, scene_graph_from_arrow
from training.sg_encoder import GraphIndex, GraphInputs, SGFeatures, prepare_graphs

__all__ = [
    "CACHE_DTYPES",
    "CACHE_FORMAT",
    "CACHE_META",
    "CACHE_SCHEMA",
    "CacheCollator",
    "ImageConfig",
    "RowCollator",
    "TrainBatch",
    "bytes_to_tensor",
    "find_splits",
    "flip_graph",
    "is_flipped",
    "load_image",
    "read_cache_meta",
    "read_rows",
    "scene_graph_of",
    "tensor_to_bytes",
    "transform_image",
    "usable",
]

CACHE_META = "cache.json"
CACHE_FORMAT = "sdxl-sg-cache"
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# split -> the names it goes by: `pipelines.export` writes ``data/train-00000-of-00001.parquet`` and
# ``data/validation-...``; directories ``train/`` and ``val/`` (or ``validation/``) work too, and the cache of
# `training.precompute` has ``split=train/`` and ``split=val/``.
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val")}
_TAGGED = re.compile(r"^(train|validation|val|test)-")

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sg_text", pa.string()),
        ("time_ids", pa.list_(pa.float32())),
        ("latents", pa.binary()),
        ("token_embeds", pa.binary()),
        ("pooled", pa.binary()),
        ("node_feats", pa.binary()),
        ("edge_feats", pa.binary()),
        ("num_nodes", pa.int32()),
        ("edges", pa.list_(pa.int32())),
        ("token_pos", pa.list_(pa.int32())),
        ("token_source", pa.list_(pa.int32())),
    ]
)


@dataclass(frozen=True)
class ImageConfig:
    """How images become training inputs (see the module docstring for the crop and flip decisions)."""

    resolution: int = 512
    crop: str = "center"  # "center" | "none"
    flip: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop not in {"center", "none"}:
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE factor), got {self.resolution}")


# ---------------------------------------------------------------------------------------------- rows


def scene_graph_of(row: Mapping[str, Any]) -> SceneGraph | None:
    """The row's graph (the nested `scene_graph` column), or None."""
    return scene_graph_from_arrow(row.get("scene_graph"))


def usable(row: Mapping[str, Any]) -> bool:
    """A row trains if its annotation did not fail, it has an image and a valid graph with at least one object.

    Graphs without relations are kept (isolated objects are nodes too); LAION-SG's loader dropped them.
    """
    annotation = row.get("annotation") or {}
    if annotation.get("status") == "failed":
        return False
    image = row.get("image") or {}
    if not (image.get("bytes") or image.get("path")):
        return False
    graph = scene_graph_of(row)
    return graph is not None and bool(graph.objects) and graph.is_valid()


def _split_names(file: Path, root: Path) -> set[str]:
    """The split names a file is tagged with: its name prefix (``train-...``) and its directories."""
    names = {part.removeprefix("split=") for part in file.relative_to(root).parts[:-1]}
    if match := _TAGGED.match(file.name):
        names.add(match.group(1))
    return names


def find_splits(root: str | Path) -> dict[str, list[Path]]:
    """``{"train": [files], "val": [files]}`` of the Parquet files under `root`.

    Files are assigned by name prefix or directory (see `SPLIT_NAMES`); a ``test`` split is never used. When no
    file carries a split name, every file is training data and there is no validation split.
    """
    root = Path(root)
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {root}")
    tags = {f: _split_names(f, root) for f in files}
    if not any(tag & {"train", "validation", "val", "test"} for tag in tags.values()):
        return {"train": files}
    splits = {}
    for split, names in SPLIT_NAMES.items():
        chosen = [f for f in files if tags[f] & set(names)]
        if chosen:
            splits[split] = chosen
    if "train" not in splits:
        raise FileNotFoundError(f"{root} has split-named Parquet files but none of the train split")
    return splits


def read_rows(files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """All rows of the given Parquet files, in order (for training without Ray)."""
    import pyarrow.parquet as pq

    return [row for f in files for row in pq.read_table(f).to_pylist()]


def load_image(cell: Mapping[str, Any]):
    """The image of an `image` struct cell (bytes, else path) as an RGB PIL image, EXIF orientation applied."""
    from PIL import Image, ImageOps

    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]
    with Image.open(source) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def transform_image(image, config: ImageConfig, flip: bool) -> tuple[torch.Tensor, list[float]]:
    """Resize (+ center crop) to the square resolution, optionally mirror; pixels in [-1, 1] and SDXL's time ids."""
    from PIL import Image, ImageOps

    size = config.resolution
    width, height = image.size
    if config.crop == "center":
        scale = size / min(width, height)
        new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        new_w = size
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        top = left = 0
    if flip:
        image = ImageOps.mirror(image)
        left = new_w - size - left
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    return pixels, [float(height), float(width), float(top), float(left), float(size), float(size)]


_LEFT_RIGHT = re.compile(r"\b(left|right)\b")


def _swap_left_right(text: str) -> str:
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(1) == "left" else "left", text)


def flip_graph(graph: SceneGraph) -> SceneGraph:
    """The graph of the mirrored image: "left" and "right" swapped as whole words everywhere."""
    return SceneGraph(
        [SGObject(o.id, _swap_left_right(o.name), [_swap_left_right(a) for a in o.attributes]) for o in graph.objects],
        [SGRelation(r.subject, _swap_left_right(r.predicate), r.object) for r in graph.relations],
    )


def is_flipped(seed: int, epoch: int, key: str) -> bool:
    """The flip decision of one row in one epoch: independent of worker count, batch size and data order."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()
    return bool(digest[0] & 1)


# ---------------------------------------------------------------------------------------------- batches


@dataclass
class TrainBatch:
    """One batch: either raw (`pixel_values` + `graphs`) or cached (`latents` + `features`)."""

    keys: list[str]
    time_ids: torch.Tensor  # (B, 6)
    pixel_values: torch.Tensor | None = None  # (B, 3, R, R) in [-1, 1]
    graphs: GraphInputs | None = None
    latents: torch.Tensor | None = None  # (B, 4, R/8, R/8), scaled
    features: SGFeatures | None = None

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

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TrainBatch:
        pixels, time_ids, graphs, keys = [], [], [], []
        for row in rows:
            key = str(row["key"])
            flip = self.config.flip and is_flipped(self.config.seed, self.epoch, key)
            graph = scene_graph_of(row)
            if graph is None:
                raise ValueError(f"row {key} has no scene graph (filter rows with training.data.usable)")
            image, ids = transform_image(load_image(row["image"]), self.config, flip)
            pixels.append(image)
            time_ids.append(ids)
            graphs.append(flip_graph(graph) if flip else graph)
            keys.append(key)
        with self._lock:
            inputs = prepare_graphs(graphs, self.tokenizers)
        return TrainBatch(keys=keys, time_ids=torch.tensor(time_ids), pixel_values=torch.stack(pixels), graphs=inputs)


# ---------------------------------------------------------------------------------------------- cache format


def tensor_to_bytes(tensor: torch.Tensor, dtype: torch.dtype) -> bytes:
    """Row-major bytes of `tensor` in `dtype`."""
    return tensor.detach().to("cpu", dtype).contiguous().view(torch.uint8).numpy().tobytes()


def bytes_to_tensor(data: bytes, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of `tensor_to_bytes` (a float32 copy)."""
    if not data:
        return torch.zeros(tuple(shape), dtype=torch.float32)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(tuple(shape)).float()


def read_cache_meta(cache_dir: str | Path) -> dict[str, Any]:
    meta = json.loads((Path(cache_dir) / CACHE_META).read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{cache_dir} is not an SDXL-SG cache (format {meta.get('format')!r})")
    return meta


class CacheCollator:
    """Cache rows (see `CACHE_SCHEMA` and ``cache.json``) -> `TrainBatch` with latents and features."""

    def __init__(self, meta: Mapping[str, Any]):
        self.meta = dict(meta)
        self.dtype = CACHE_DTYPES[self.meta["dtype"]]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TrainBatch:
        m, dtype = self.meta, self.dtype
        width = m["text_dim"]
        latents, parts, time_ids, keys = [], [], [], []
        for row in rows:
            num_nodes = int(row["num_nodes"])
            edges = np.asarray(row["edges"], dtype=np.int64).reshape(-1, 2)
            latents.append(bytes_to_tensor(row["latents"], dtype, m["latent_shape"]))
            parts.append(
                {
                    "token_embeds": bytes_to_tensor(row["token_embeds"], dtype, (m["sequence_length"], width)),
                    "pooled": bytes_to_tensor(row["pooled"], dtype, (m["pooled_dim"],)),
                    "node_feats": bytes_to_tensor(row["node_feats"], dtype, (num_nodes, width)),
                    "edge_feats": bytes_to_tensor(row["edge_feats"], dtype, (len(edges), width)),
                    "graph_index": GraphIndex(
                        num_nodes=num_nodes,
                        edges=edges,
                        token_pos=np.asarray(row["token_pos"], dtype=np.int64),
                        token_source=np.asarray(row["token_source"], dtype=np.int64),
                    ),
                }
            )
            time_ids.append(row["time_ids"])
            keys.append(str(row["key"]))
        return TrainBatch(
            keys=keys,
            time_ids=torch.tensor(time_ids, dtype=torch.float32),
            latents=torch.stack(latents),
            features=SGFeatures.from_rows(parts, m["sequence_length"]),
        )
