"""The format of the precompute cache, and `CacheCollator`, which makes training batches from it.

`CACHE_SCHEMA`: one Parquet row per image under ``CACHE/<split>/``. Tensors are raw bytes (row-major, the cache
dtype); fixed shapes are in ``CACHE/cache.json`` (latents, 77 x text_dim token states, pooled), node and relation
features have ``num_nodes`` and ``len(edges) / 2`` rows of ``text_dim``; the graph index (edges, token positions,
token sources) is int32 lists; ``problem`` is null, or why the row could not be encoded (then the tensors are
null). Latents are the VAE posterior mean times the VAE scaling factor. A cache row that precompute could not
encode carries its reason in ``problem`` and is skipped like any unusable row (`training.bad_rows`), as is a
cache row whose bytes do not decode.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from training.bad_rows import Decoded
from training.batches import TrainBatch, _assembled
from training.rows import _error, _key_of
from training.sg_features import SGFeatures
from training.sg_graphs import GraphIndex

__all__ = [
    "CACHE_DTYPES",
    "CACHE_FORMAT",
    "CACHE_META",
    "CACHE_SCHEMA",
    "CacheCollator",
    "bytes_to_tensor",
    "read_cache_meta",
    "tensor_to_bytes",
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
