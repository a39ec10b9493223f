"""`python -m training.precompute`: encode the frozen parts of SDXL-SG once (Ray Data), so training skips them.

    python -m training.precompute --input DATA --model SDXL --output CACHE [--resolution 512] [--crop center]
        [--dtype float16] [--num-actors N] [--use-gpu] [--batch-size 16]

For every row of the train and validation splits (`training.rows.find_splits`; the test split and rows whose
annotation failed are left out), an actor pool runs the
same collation as training (resize/crop, micro-conditioning, graph tokenization; no flips) and then the frozen VAE
(scaled posterior mean) and both frozen text encoders (SG-text token states, pooled embedding, phrase embeddings
of every node and relation). The result is ``CACHE/<split>/*.parquet`` in `training.cache.CACHE_SCHEMA` plus
``CACHE/cache.json`` with the dtype and shapes; `python -m training.train --cache CACHE` reads it.

A row that cannot train (corrupt, truncated or missing image, null or empty scene graph: `RowCollator.decode`)
never stops the job: it is written as a cache row with only its key and its reason in ``problem``, so training
from the cache skips and counts it exactly as training from raw rows would. `precompute` returns the usable rows
per split, logs the unusable ones (count and first keys) and records them in ``cache.json`` (``unusable_rows``).

Size per row at 512² and full SDXL in float16: latents 32 KiB, token states 77×2048 (308 KiB), pooled 2.5 KiB,
4 KiB per node or relation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import torch
from pydantic import Field

from schemas.runs import init_ray
from schemas.settings import JobSettings, parse_settings
from training.bad_rows import BadRows
from training.batches import RowCollator, TrainBatch
from training.cache import CACHE_DTYPES, CACHE_FORMAT, CACHE_META, CACHE_SCHEMA, tensor_to_bytes
from training.image_transforms import ImageConfig
from training.rows import ANNOTATION_FAILED, find_splits, row_problem
from training.sg_features import SGFeatures
from training.step import FrozenSDXL

__all__ = ["CacheEncoder", "PrecomputeSettings", "cache_meta", "cache_table", "main", "precompute"]

log = logging.getLogger(__name__)


def cache_table(batch: TrainBatch, latents: torch.Tensor, features: SGFeatures, dtype: torch.dtype) -> pa.Table:
    """Cache rows of one encoded batch."""
    rows = []
    for b, part in enumerate(features.split_rows()):
        index = part["graph_index"]
        rows.append(
            {
                "key": batch.keys[b],
                "sg_text": batch.graphs.texts[b],
                "time_ids": batch.time_ids[b].tolist(),
                "latents": tensor_to_bytes(latents[b], dtype),
                "token_embeds": tensor_to_bytes(part["token_embeds"], dtype),
                "pooled": tensor_to_bytes(part["pooled"], dtype),
                "node_feats": tensor_to_bytes(part["node_feats"], dtype),
                "edge_feats": tensor_to_bytes(part["edge_feats"], dtype),
                "num_nodes": index.num_nodes,
                "edges": index.edges.reshape(-1).tolist(),
                "token_pos": index.token_pos.tolist(),
                "token_source": index.token_source.tolist(),
            }
        )
    return pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)


class CacheEncoder:
    """Ray Data actor: raw rows (a pyarrow batch) -> cache rows. Loads the frozen VAE and text encoders once."""

    def __init__(self, model: str, resolution: int, crop: str, dtype: str, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.frozen = FrozenSDXL.load(model, self.device, torch.float32, unet=False)
        self.collate = RowCollator(self.frozen.tokenizers, ImageConfig(resolution=resolution, crop=crop, flip=False))
        self.dtype = CACHE_DTYPES[dtype]

    def __call__(self, table: pa.Table) -> pa.Table:
        """Cache rows of the usable rows, then one ``problem`` row (key and reason only) per unusable row."""
        decoded = self.collate.decode(table.to_pylist())
        splits = table["split"].to_pylist()
        parts = []
        if decoded.samples:
            batch = self.collate.assemble(decoded.samples)
            latents, features = self.frozen.encode(batch.to(self.device))
            parts.append(cache_table(batch, latents, features, self.dtype))
        problems = [{"key": s.key, "problem": s.reason} for s in decoded.skipped]
        parts.append(pa.Table.from_pylist(problems, schema=CACHE_SCHEMA))
        split = [splits[i] for i in decoded.kept] + [splits[s.index] for s in decoded.skipped]
        return pa.concat_tables(parts).append_column("split", pa.array(split, pa.string()))


def cache_meta(model: str, resolution: int, crop: str, dtype: str) -> dict[str, Any]:
    """``cache.json``: shapes read from the model configs (no weights loaded)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig

    vae = AutoencoderKL.load_config(model, subfolder="vae")
    encoders = [CLIPTextConfig.from_pretrained(model, subfolder=s) for s in ("text_encoder", "text_encoder_2")]
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return {
        "format": CACHE_FORMAT,
        "version": 1,
        "model": str(model),
        "dtype": dtype,
        "resolution": resolution,
        "crop": crop,
        "flip": False,
        "latent_shape": [vae["latent_channels"], resolution // factor, resolution // factor],
        "text_dim": sum(c.hidden_size for c in encoders),
        "pooled_dim": encoders[-1].projection_dim,
        "sequence_length": encoders[0].max_position_embeddings,
    }


def _annotated_rows(table: pa.Table, split: str) -> pa.Table:
    """The rows of a batch whose annotation did not fail, tagged with their split (the others may still be
    unusable: the encoder decides, and keeps them as ``problem`` rows)."""
    keep = pa.array([row_problem(row) != ANNOTATION_FAILED for row in table.to_pylist()], pa.bool_())
    kept = table.filter(keep)
    return kept.append_column("split", pa.array([split] * kept.num_rows, pa.string()))


def _tally(files: list) -> BadRows:
    """The unusable (``problem``) rows of written cache files: counts and the first keys, from two columns."""
    import pyarrow.parquet as pq

    tally = BadRows()
    for f in files:
        for row in pq.read_table(f, columns=["key", "problem"]).to_pylist():
            tally.add(1, [(row["key"], row["problem"])] if row["problem"] else [])
    return tally


def precompute(
    data: str | Path,
    model: str,
    output: str | Path,
    *,
    resolution: int = 512,
    crop: str = "center",
    dtype: str = "float16",
    batch_size: int = 16,
    num_actors: int = 1,
    use_gpu: bool = False,
) -> dict[str, int]:
    """Write the cache of every split of `data` (one Ray Data pass, one actor pool); return usable rows per split
    (unusable ones are logged and recorded in ``cache.json``)."""
    import ray.data
    from ray.data import SaveMode

    if dtype not in CACHE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    out = Path(output)
    splits = [
        ray.data.read_parquet([str(f) for f in files]).map_batches(
            _annotated_rows, fn_kwargs={"split": split}, batch_format="pyarrow"
        )
        for split, files in find_splits(data).items()
    ]
    encoded = splits[0].union(*splits[1:]).map_batches(
        CacheEncoder,
        fn_constructor_kwargs={
            "model": str(model), "resolution": resolution, "crop": crop, "dtype": dtype, "use_gpu": use_gpu,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
    )  # fmt: skip
    # One directory per split; a re-run replaces the cache, never duplicates rows. Ray writes Hive-style
    # ``split=train/``, renamed to ``train/`` so that the cache reads like any dataset (`find_splits`).
    encoded.write_parquet(str(out), partition_cols=["split"], mode=SaveMode.OVERWRITE)
    for hive in out.glob("split=*"):
        hive.rename(out / hive.name.removeprefix("split="))
    tallies = {split: _tally(files) for split, files in find_splits(out).items()}
    for split, tally in tallies.items():
        if tally.bad:
            log.warning("precompute, %s split: %s (kept as problem rows)", split, tally.describe())
    meta = cache_meta(model, resolution, crop, dtype) | {
        "unusable_rows": {split: tally.summary() for split, tally in tallies.items()}
    }
    (out / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")
    return {split: tally.seen - tally.bad for split, tally in tallies.items()}


class PrecomputeSettings(JobSettings):
    """Settings of `python -m training.precompute` (its image settings must match the training run's)."""

    input: str = Field(description="Parquet dataset (as training.train --input)")
    model: str = Field(description="base SDXL: diffusers directory or hub id (as training.train --model)")
    output: str = Field(description="cache directory (training.train --cache)")
    resolution: int = Field(512, ge=8, multiple_of=8, description="square resolution in pixels (as training.train)")
    crop: Literal["center", "none"] = Field("center", description="image crop (as training.train --crop)")
    dtype: Literal[tuple(sorted(CACHE_DTYPES))] = Field(  # type: ignore[valid-type]
        "float16", description="dtype of the stored latents and text features"
    )
    batch_size: int = Field(16, ge=1, description="rows per batch of an encoding actor")
    num_actors: int = Field(1, ge=1, description="encoding actors (one GPU each with --use-gpu)")
    use_gpu: bool = Field(False, description="encode on GPUs")


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        PrecomputeSettings, argv, prog="python -m training.precompute", description=__doc__.split("\n\n")[0]
    )
    init_ray()
    counts = precompute(
        settings.input, settings.model, settings.output, resolution=settings.resolution, crop=settings.crop,
        dtype=settings.dtype, batch_size=settings.batch_size, num_actors=settings.num_actors, use_gpu=settings.use_gpu,
    )  # fmt: skip
    print(json.dumps({"cache": settings.output, "rows": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
