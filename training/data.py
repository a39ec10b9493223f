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
- Cache format (`CACHE_SCHEMA`): one Parquet row per image under ``CACHE/<split>/``. Tensors are raw bytes
  (row-major, the cache dtype); fixed shapes are in ``CACHE/cache.json`` (latents, 77 x text_dim token states,
  pooled), node and relation features have ``num_nodes`` and ``len(edges) / 2`` rows of ``text_dim``; the graph
  index (edges, token positions, token sources) is int32 lists; ``problem`` is null, or why the row could not
  be encoded (then the tensors are null). Latents are the VAE posterior mean times the VAE
  scaling factor.
- Unusable rows (hostile inputs): a row is skipped, never fatal, when its image is missing, undecodable or
  truncated, or its scene graph is null, empty or invalid (`row_problem`; the image check is the decode itself,
  in `RowCollator.decode`, where the pixels are made anyway). Rows whose annotation the pipeline marked
  ``failed`` are skipped too but are expected, not faults. Collators split into ``decode`` (per row, skips and
  names what it skips; runs in Ray's prefetch threads) and ``assemble`` (stacks and tokenizes), and `rebatch`
  refills batches to full size from what survives and counts the skipped rows into a `BadRows` tally (counts and
  the first few keys with reasons, never a list of every row). A cache row that precompute could not encode
  carries its reason in ``problem`` and is skipped the same way, as is a cache row whose bytes do not decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from schemas import SceneGraph, flip_graph, scene_graph_from_arrow
from schemas.layout import find_split_files
from training.sg_features import SGFeatures
from training.sg_graphs import GraphIndex, GraphInputs, prepare_graphs

__all__ = [
    "ANNOTATION_FAILED",
    "BadDataError",
    "BadRows",
    "CACHE_DTYPES",
    "CACHE_FORMAT",
    "CACHE_META",
    "CACHE_SCHEMA",
    "CacheCollator",
    "Decoded",
    "ImageConfig",
    "NoUsableRowsError",
    "RowCollator",
    "TrainBatch",
    "bytes_to_tensor",
    "find_splits",
    "first_usable_row",
    "is_flipped",
    "load_image",
    "read_cache_meta",
    "read_rows",
    "rebatch",
    "row_problem",
    "scene_graph_of",
    "tensor_to_bytes",
    "transform_image",
    "usable",
]

CACHE_META = "cache.json"
CACHE_FORMAT = "sdxl-sg-cache"
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

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
        ("problem", pa.string()),  # why precompute could not encode the row (tensors then null); else null
    ]
)
log = logging.getLogger(__name__)
# The reason given for rows the annotation pipeline marked failed: skipped, but expected (not counted as bad).
ANNOTATION_FAILED = "annotation failed"


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


def _key_of(row: Mapping[str, Any]) -> str:
    key = row.get("key")
    return "<no key>" if key is None or key == "" else str(key)


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a row cannot train, judged from its columns without decoding the image; None when it may.

    `ANNOTATION_FAILED` for rows whose annotation failed; otherwise a missing image (no bytes and no path), a null,
    unreadable, empty (no objects) or invalid scene graph. Graphs without relations are kept (isolated objects
    are nodes too); LAION-SG's loader dropped them. Whether the image decodes is checked where it is decoded
    (`RowCollator.decode`).
    """
    annotation = row.get("annotation") or {}
    if annotation.get("status") == "failed":
        return ANNOTATION_FAILED
    image = row.get("image") or {}
    if not (image.get("bytes") or image.get("path")):
        return "no image (bytes and path are both empty)"
    try:
        graph = scene_graph_of(row)
    except Exception as exc:  # a malformed struct (null ids or names) from a foreign writer
        return f"unreadable scene graph ({_error(exc)})"
    if graph is None:
        return "no scene graph"
    if not graph.objects:
        return "empty scene graph (no objects)"
    if problems := graph.problems():
        return f"invalid scene graph: {problems[0]}"
    return None


def usable(row: Mapping[str, Any]) -> bool:
    """A row trains if its annotation did not fail, it has an image and a valid graph with at least one object
    (`row_problem` is None; the image may still fail to decode)."""
    return row_problem(row) is None


def find_splits(root: str | Path) -> dict[str, list[Path]]:
    """``{"train": [files], "val": [files]}``: the train and validation splits of the Parquet files under `root`,
    found by `schemas.layout.find_split_files` (``data/train-*.parquet``, ``train/``, ``validation/``, ``val/``,
    ...); a ``test`` split is never used. When no file carries a split name, every file is training data and
    there is no validation split."""
    splits = find_split_files(root)
    if "train" not in splits:
        raise FileNotFoundError(f"{root} has split-named Parquet files but none of the train split")
    return {"train": splits["train"], **({"val": splits["validation"]} if "validation" in splits else {})}


def read_rows(files: Sequence[str | Path]) -> list[dict[str, Any]]:
    """All rows of the given Parquet files, in order (for training without Ray)."""
    import pyarrow.parquet as pq

    return [row for f in files for row in pq.read_table(f).to_pylist()]


# ---------------------------------------------------------------------------------------------- unusable rows


class BadDataError(ValueError):
    """The training data has too many unusable rows (or none usable); the message names counts and keys."""


class NoUsableRowsError(BadDataError):
    """Not a single row of the train split can train."""


def _error(exc: BaseException) -> str:
    """``Type: message``, without object addresses (PIL names ``<_io.BytesIO object at 0x...>``)."""
    return f"{type(exc).__name__}: " + re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<image bytes>", str(exc))


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class BadRows:
    """A running tally of one pass over a split: rows seen, rows skipped because their annotation failed
    (expected), and unusable rows (faults: counted toward ``--max-bad-fraction``) with the first `keep` of those
    as (key, reason). Counts only: it never holds every skipped row."""

    seen: int = 0
    failed_annotation: int = 0
    bad: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    keep: int = 5

    def add(self, seen: int, skipped: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Count `seen` rows of which `skipped` (key, reason) were skipped; return the newly kept examples."""
        self.seen += seen
        new = []
        for key, reason in skipped:
            if reason == ANNOTATION_FAILED:
                self.failed_annotation += 1
                continue
            self.bad += 1
            if len(self.examples) < self.keep and all(key != k for k, _ in self.examples):
                self.examples.append((key, reason))
                new.append((key, reason))
        return new

    @property
    def fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def exceeds(self, max_fraction: float, total_rows: int = 0) -> bool:
        """Whether the bad rows are certainly more than `max_fraction` of the split: of `total_rows` (the split's
        size, known before the pass ends) or of the rows seen, whichever is larger (later epochs)."""
        return self.bad > max_fraction * max(total_rows, self.seen)

    def merge_examples(self, groups: Iterable[Iterable[Sequence[str]]]) -> None:
        """Fill `examples` (up to `keep`) from other tallies' examples, e.g. those of every worker."""
        for group in groups:
            for key, reason in group:
                if len(self.examples) < self.keep and all(key != k for k, _ in self.examples):
                    self.examples.append((str(key), str(reason)))

    def first(self) -> str:
        return "; ".join(f"{key} ({_short(reason)})" for key, reason in self.examples) or "none recorded"

    def describe(self) -> str:
        """One line: counts, fraction and the first keys with their reasons."""
        text = f"{self.bad} of {self.seen} rows unusable ({self.fraction:.2%})"
        if self.failed_annotation:
            text += f", {self.failed_annotation} skipped with a failed annotation"
        return text + (f"; first: {self.first()}" if self.bad else "")

    def summary(self) -> dict[str, Any]:
        """For metrics and summaries (JSON)."""
        return {
            "rows_seen": self.seen,
            "bad_rows": self.bad,
            "bad_fraction": self.fraction,
            "failed_annotation_rows": self.failed_annotation,
            "bad_row_examples": [f"{key}: {_short(reason)}" for key, reason in self.examples],
        }


@dataclass
class Skipped:
    index: int  # position in the decoded rows
    key: str
    reason: str


@dataclass
class Decoded:
    """What a collator's ``decode`` made of some rows: the usable ones (in order, with their positions) and the
    skipped ones with their reasons."""

    rows: int
    samples: list[Any] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, index: int, key: str, reason: str) -> None:
        self.skipped.append(Skipped(index, key, reason))

    def keep(self, index: int, sample: Any) -> None:
        self.kept.append(index)
        self.samples.append(sample)


def rebatch(
    decoded: Iterable[Decoded],
    batch_size: int,
    assemble: Callable[[list[Any]], TrainBatch],
    *,
    drop_last: bool,
    tally: BadRows | None = None,
) -> Iterator[TrainBatch]:
    """Full batches of `batch_size` usable samples out of decoded chunks (skipped rows leave no holes), counting
    every chunk into `tally` (and logging its first bad rows) as it is consumed; the last partial batch is
    dropped when `drop_last`."""
    tally = BadRows() if tally is None else tally
    buffer: list[Any] = []
    for chunk in decoded:
        for key, reason in tally.add(chunk.rows, [(s.key, s.reason) for s in chunk.skipped]):
            log.warning("skipping unusable row %s: %s", key, _short(reason, 300))
        buffer.extend(chunk.samples)
        while len(buffer) >= batch_size:
            yield assemble(buffer[:batch_size])
            buffer = buffer[batch_size:]
    if buffer and not drop_last:
        yield assemble(buffer)


def first_usable_row(files: Sequence[str | Path], decode: Callable[[list[dict]], Decoded], chunk: int = 16) -> BadRows:
    """Read `files` in chunks until one row decodes; return the tally of what was read. Cheap when the data is
    fine (one chunk); reads everything when no row is usable (then ``tally.seen`` counts every row)."""
    import pyarrow.parquet as pq

    tally = BadRows()
    for f in files:
        for record_batch in pq.ParquetFile(f).iter_batches(batch_size=chunk):
            decoded = decode(record_batch.to_pylist())
            tally.add(decoded.rows, [(s.key, s.reason) for s in decoded.skipped])
            if decoded.samples:
                return tally
    return tally


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

    def _sample(self, row: Mapping[str, Any]) -> tuple[str, torch.Tensor, dict[str, Any], list[float]]:
        m, dtype = self.meta, self.dtype
        width = m["text_dim"]
        for column in ("latents", "token_embeds", "pooled", "time_ids"):
            if not row.get(column):
                raise ValueError(f"{column} is empty")
        num_nodes = int(row["num_nodes"])
        edges = np.asarray(row["edges"] or [], dtype=np.int64).reshape(-1, 2)
        latents = bytes_to_tensor(row["latents"], dtype, m["latent_shape"])
        part = {
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
        if len(row["time_ids"]) != 6:
            raise ValueError(f"time_ids has {len(row['time_ids'])} values, not 6")
        return _key_of(row), latents, part, [float(v) for v in row["time_ids"]]

    def decode(self, rows: Sequence[Mapping[str, Any]]) -> Decoded:
        """Rebuild every row's tensors; a row that precompute could not encode (``problem``) or whose bytes do not
        decode to the shapes of ``cache.json`` is skipped with its reason."""
        out = Decoded(rows=len(rows))
        for index, row in enumerate(rows):
            if problem := row.get("problem"):
                out.skip(index, _key_of(row), problem)
                continue
            try:
                out.keep(index, self._sample(row))
            except Exception as exc:
                out.skip(index, _key_of(row), f"corrupt cache row ({_error(exc)})")
        return out

    def assemble(self, samples: Sequence[tuple[str, torch.Tensor, dict[str, Any], list[float]]]) -> TrainBatch:
        keys, latents, parts, time_ids = (list(column) for column in zip(*samples, strict=True))
        return TrainBatch(
            keys=keys,
            time_ids=torch.tensor(time_ids, dtype=torch.float32),
            latents=torch.stack(latents),
            features=SGFeatures.from_rows(parts, self.meta["sequence_length"]),
        )

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TrainBatch:
        """The batch of the usable rows (`TrainBatch.skipped` names the others); ValueError when none is usable."""
        return _assembled(self.assemble, self.decode(rows))
