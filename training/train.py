"""`python -m training.train`: fine-tune SDXL-SG (frozen SDXL, trainable `SGEncoder`) with Ray Train.

    python -m training.train --input DATA --model SDXL_DIR_OR_ID --output RUNS --max-steps 20000 \
        --num-workers 8 --use-gpu --batch-size 1 --resolution 512

`DATA` holds Parquet rows of `schemas.row_schema()`: a `pipelines.export` output (``data/train-*.parquet``,
``data/validation-*.parquet``; the test split is never read), or ``train/`` and ``val/`` directories, or just
rows (then all are training rows and there is no validation); `--cache` points at a `training.precompute` output
instead. Every worker runs `training.loop.run_worker` in a `training.contexts.RayContext` (`training.jobs`): the frozen SDXL in eval
mode without gradients (not wrapped), the SG encoder under DDP (`ray.train.torch.prepare_model`), AdamW + warmup
+ cosine, bf16 autocast on GPU, gradient clipping, and a checkpoint with its metrics reported to Ray Train
(`ray.train.report`) every `--checkpoint-every` steps and at the end.

Checkpoints (``RUNS/<name>/checkpoint_*``, `training.checkpoints`): ``sg_encoder/`` (safetensors),
``trainer_state.pt`` (optimizer and LR scheduler, loaded with ``weights_only=True``), ``state.json`` (step, epoch,
batch within the epoch) and ``rng_rank<r>.pt`` per worker. Running the same command again (same `--output` and `--name`) resumes from the
latest checkpoint. The final pipeline lands in ``RUNS/final``: a complete diffusers pipeline folder (the base
SDXL given by `--model` plus the trained SG encoder, `model_index.json` naming both) that
`SDXLSGPipeline.from_pretrained(RUNS/final)` loads.

`--init-sg-encoder DIR` starts from an `SGEncoder` folder (`training.pretrain_sg`'s ``OUTPUT/final``) instead of a
random graph network (`TrainSettings.initial_encoder`): a folder saved with other widths than `--encoder.*` is
refused (exit 2, naming both), and its gate alpha is reset to 0, so training still starts from plain SDXL. The
path is part of the run's settings and of the summary `main` prints.

Metrics: rank 0 writes every step's loss, learning rate, gradient norm, samples/s, alpha and validation loss as
TensorBoard events into the run directory ``RUNS/<name>`` (`tensorboard --logdir RUNS`) and logs a progress line
every `--log-every` steps; the end of training draws ``RUNS/<name>/loss.png`` from the events
(`training.tracking`). A local run (`train_local`) writes both into ``RUNS`` itself. Only checkpoint steps go to
`ray.train.report`: in Ray 2.60 a report waits until the Ray Train controller took the previous one (polled every
2 s), so reporting every step would cap a run at about 0.5 steps/s whatever the hardware.

Unusable rows (a corrupt, truncated or missing image, a null or empty scene graph, a cache row precompute could
not encode or whose bytes are broken) are skipped where they are decoded, and batches are refilled to full size
(`training.bad_rows.rebatch`). Every step sums the workers' counts; the run fails with `BadDataError` (count,
fraction and the first keys with reasons) once the unusable rows certainly exceed `--max-bad-fraction` of the
train split, whose size comes from the Parquet metadata. The counts and the first keys are in the metrics of
every step (``bad_rows``, ``bad_fraction``, ``bad_row_examples``, ...; reported with each checkpoint), logged as
they appear, and in the summary `main` prints. Rows whose annotation failed are skipped as before and counted apart, not as faults. Before Ray
Train starts, `preflight` reads the train split until one row decodes: when none does, `main` exits with code
2 and one line naming the data path; with `--cache`, rows of `--input` missing from the cache count as unusable.

Reproducibility: noise and timesteps of step k on rank r are drawn from ``step_seed(seed, k, r)``, and flips from
(seed, epoch, row key), so they do not depend on RNG state. `LocalContext` (no Ray, one process) also fixes the
data order (a seeded permutation per epoch), so a resumed local run reproduces an uninterrupted one exactly. Under
Ray, the rows each worker receives come from Ray Data's streaming split and a seeded local shuffle buffer, which
Ray does not guarantee to be identical across runs; a resumed Ray run skips the batches already consumed in the
current epoch but may see them in another order.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from schemas.runs import log_progress
from schemas.settings import parse_settings
from training.bad_rows import BadDataError, BadRows, NoUsableRowsError, first_usable_row
from training.batches import RowCollator
from training.cache import CacheCollator
from training.checkpoints import export_final
from training.jobs import TrainingJob
from training.loop import check_cache_matches, run_worker
from training.rows import ANNOTATION_FAILED, find_splits, row_problem
from training.settings import TrainSettings

__all__ = ["JOB", "main", "parse_config", "preflight", "train", "train_local"]

log = logging.getLogger(__name__)


def _missing_from_cache(config: TrainSettings) -> BadRows:
    """Rows of the train split of `--data` (failed annotations aside) whose key the cache lacks, as bad rows."""
    import pyarrow.parquet as pq

    tally = BadRows()
    if not Path(config.input).exists():
        return tally
    cached = set()
    for f in find_splits(config.cache)["train"]:
        cached.update(pq.read_table(f, columns=["key"])["key"].to_pylist())
    for f in find_splits(config.input)["train"]:
        columns = [c for c in ("key", "annotation") if c in pq.read_schema(f).names]
        for row in pq.read_table(f, columns=columns).to_pylist():
            if row_problem(row) == ANNOTATION_FAILED:  # precompute leaves these out
                tally.add(1, [(str(row["key"]), ANNOTATION_FAILED)])
            else:
                tally.add(1, [] if row["key"] in cached else [(str(row["key"]), "missing from the cache")])
    return tally


def preflight(config: TrainSettings) -> dict[str, Any]:
    """Checks before any worker starts: the train split has at least one row that decodes (`NoUsableRowsError`
    naming the path otherwise), and, with `--cache`, that the cache was written for this model and these image
    settings and that no more than `max_bad_fraction` of the data's rows are missing from it. Reads only until the
    first usable row, and only keys for the cache comparison. Returns what the summary adds: the initial SG
    encoder, and the rows missing from the cache."""
    source = config.cache or config.input
    files = find_splits(source)["train"]
    if config.cache:
        decode = CacheCollator(check_cache_matches(config)).decode
    else:
        decode = RowCollator([], dataclasses.replace(config.image_config, flip=False)).decode
    scanned = first_usable_row(files, decode)
    if scanned.bad + scanned.failed_annotation == scanned.seen:
        what = scanned.describe() if scanned.seen else "the train split has no rows"
        raise NoUsableRowsError(f"no usable training row in {source}: {what}")
    summary: dict[str, Any] = {"init_sg_encoder": config.init_sg_encoder}
    if config.cache:
        missing = _missing_from_cache(config)
        if missing.bad:
            message = f"rows of {config.input} missing from the cache {config.cache}: {missing.describe()}"
            if missing.exceeds(config.max_bad_fraction):
                raise BadDataError(f"too many {message} (over --max-bad-fraction {config.max_bad_fraction:g})")
            log.warning("%s", message)
        summary["missing_from_cache"] = missing.summary()
    return summary


# The job around the worker loop (`training.jobs`): `train_local` runs it in this process (resuming from
# ``output/checkpoints``), `train` fits it with Ray Train (resuming from ``output/name``); both export
# ``output/final`` and draw the loss plot from the TensorBoard events.
JOB = TrainingJob(TrainSettings, run_worker, preflight, export_final)
train_local = JOB.run_local
train = JOB.fit


# ---------------------------------------------------------------------------------------------- CLI


def parse_config(argv: list[str] | None = None) -> TrainSettings:
    """The run's settings: defaults < the `--config` YAML < flags (bad input exits 2 naming the flag or the file).
    Ray Train workers run in their own working directory, so local paths are made absolute; a model that is not a
    local directory is a hub id and stays as it is."""
    settings = parse_settings(TrainSettings, argv, prog="python -m training.train", description=__doc__.split("\n\n")[0])
    absolute = {}
    for key in ("input", "output", "cache", "model"):
        path = getattr(settings, key)
        if path and "://" not in path and (key != "model" or Path(path).exists()):
            absolute[key] = str(Path(path).resolve())
    if settings.init_sg_encoder:
        absolute["init_sg_encoder"] = settings.init_sg_encoder.resolve()
    return settings.model_copy(update=absolute)


def main(argv: list[str] | None = None) -> int:
    """Exit code 2 with one line on stderr when the data is unusable (`TrainingJob.main`)."""
    log_progress()
    return JOB.main(parse_config(argv))


if __name__ == "__main__":
    raise SystemExit(main())
