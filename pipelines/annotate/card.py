"""The minimal dataset card (``OUT/README.md``) of an annotation output."""

from __future__ import annotations

import hashlib

from pipelines.annotate.writing import DATA_DIR, RUN_FILE, SHARDS_DIR, SUMMARY_FILE, ShardResult
from pipelines.tasks import Task

__all__ = ["dataset_card_yaml"]


def dataset_card_yaml(task: Task, records: list[ShardResult]) -> str:
    """A minimal dataset card whose YAML points `datasets.load_dataset(OUT)` at ``data/*.parquet`` (and not at the
    JSON files beside it).

    The config name carries a digest of the finished shards: `datasets` keys its cache by the folder's name and
    the card's config, so two outputs both called ``out`` (or one output that grew) would otherwise share a
    stale cache entry.
    """
    digest = hashlib.sha1()
    for record in sorted(records, key=lambda r: r.name):
        digest.update(f"{record.name}:{record.fingerprint}:{record.rows};".encode())
    return (
        f"---\nconfigs:\n- config_name: annotations-{digest.hexdigest()[:12]}\n  default: true\n"
        f"  data_files:\n  - split: train\n    path: {DATA_DIR}/*.parquet\n---\n\n"
        f"# Annotation output ({task.name}, prompt {task.prompt_version})\n\n"
        f"Rows in `{DATA_DIR}/`, one file per input shard; `{SHARDS_DIR}/` holds each shard's completion record, "
        f"`{RUN_FILE}` the settings and `{SUMMARY_FILE}` the counts. `python -m pipelines.export` turns this into "
        "the dataset with splits and a full card.\n"
    )
