"""The dataset card (``README.md``) of an export: `huggingface_hub.DatasetCard` from the packaged template
``templates/dataset_card.md``.

The YAML metadata declares the license, task categories, language, size category and pretty name, the
``configs`` (the data files of each split) and ``dataset_info`` (the features, from the Arrow schema of the
written files, and the split sizes), so that `datasets.load_dataset(DIR)` decodes the image as PIL and the graph
as nested values. The body says how the rows were made (models, engines, tasks and prompt versions from the
rows' `annotation`), the split rule and sizes, the statistics, the license and the LAION-SG citation. The card
names no local path: a model given as a local directory appears by the directory's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from pipelines.export.plots import PLOT_FILES
from pipelines.export.splits import SPLITS
from schemas import hf_features, row_schema

__all__ = ["DEFAULT_LICENSE", "TEMPLATE", "dataset_card", "public_model_name", "size_category"]

TEMPLATE = Path(__file__).with_name("templates") / "dataset_card.md"
PRETTY_NAME = "LAION-SG style scene-graph dataset"
# LAION-SG released its annotations under MIT; `--license` changes it.
DEFAULT_LICENSE = "mit"
# The Hugging Face Hub's size categories, by the number of rows.
_SIZE_CATEGORIES = (
    "n<1K",
    "1K<n<10K",
    "10K<n<100K",
    "100K<n<1M",
    "1M<n<10M",
    "10M<n<100M",
    "100M<n<1B",
    "1B<n<10B",
    "10B<n<100B",
    "100B<n<1T",
)
# An absolute or home-relative path inside a text (not the path part of a URL).
_LOCAL_PATH = re.compile(r"(?<![\w.:/~-])~?/[^\s'\"`|:,;()\[\]]+")
_TOP_IN_TEXT = 5


def size_category(rows: int) -> str:
    """The Hub's size category of a dataset of `rows` rows (``n<1K``, ``1K<n<10K``, ..., ``n>1T``)."""
    index = max(len(str(rows)) - 3, 0)  # digits - 3: 1,000 -> 1, 999 -> 0
    return _SIZE_CATEGORIES[index] if index < len(_SIZE_CATEGORIES) else "n>1T"


def public_model_name(model: str | None) -> str:
    """A model as the card shows it: a hub id unchanged, a local directory by its last part."""
    if not model:
        return "unknown"
    text = model.rstrip("/\\")
    local = (
        text.startswith(("/", "~", "./", "../", ".\\"))
        or text.count("/") > 1
        or re.match(r"^[A-Za-z]:", text)
    )
    if local:
        return f"{PurePosixPath(text.replace(chr(92), '/')).name} (local checkpoint)"
    return text


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: no local path, no pipe, no line break."""
    text = _LOCAL_PATH.sub(lambda m: PurePosixPath(m.group(0)).name or "/", str(value))
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _task_categories(tasks: set[str]) -> list[str]:
    from pipelines.tasks import get_task

    image_tasks = False
    for name in tasks:
        try:
            image_tasks |= get_task(name).needs_image
        except (KeyError, ValueError):
            image_tasks = True  # a task this version does not know: LAION-SG's are image tasks
    return ["text-to-image", "image-to-text" if image_tasks or not tasks else "text-generation"]


def _top(items: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{_cell(item['value'])} ({item['count']})" for item in items[:_TOP_IN_TEXT]) or "none"


def dataset_card(
    schema: pa.Schema,
    split_files: Mapping[str, Sequence[str]],
    split_bytes: Mapping[str, int],
    stats: Mapping[str, Any],
    license: str = DEFAULT_LICENSE,
    include_failed: bool = False,
):
    """The card of an export whose splits were written as `split_files` (file names in ``data/``, by split, for
    the splits with rows) of `split_bytes` bytes each, with `schema` and the statistics `stats`
    (`ExportStats.to_dict` plus ``files``). Returns a `huggingface_hub.DatasetCard`; ``card.save(path)`` writes
    it."""
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    rows = stats["rows"]
    provenance = stats.get("provenance", [])
    card_data = DatasetCardData(
        license=license,
        language=["en"],
        pretty_name=PRETTY_NAME,
        size_categories=[size_category(rows["exported"])],
        task_categories=_task_categories({p["task"] for p in provenance if p.get("task")}),
        annotations_creators=["machine-generated"],
        tags=["scene-graph", "laion-sg", "compositional-generation"],
    )
    data_files = [{"split": split, "path": f"data/{split}-*.parquet"} for split in split_files]
    MetadataConfigs({"default": {"data_files": data_files}}).to_dataset_card_data(card_data)
    splits = SplitDict()
    for split in split_files:
        splits.add(SplitInfo(name=split, num_bytes=split_bytes[split], num_examples=rows["by_split"][split]))
    info = DatasetInfo(
        features=Features.from_dict(hf_features(schema)),
        splits=splits,
        dataset_size=sum(split_bytes[split] for split in split_files),
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)

    base_columns = set(row_schema().names)
    extra = [name for name in schema.names if name not in base_columns]
    template_kwargs = {
        "pretty_name": PRETTY_NAME,
        "image_note": "the image," if "image" in schema.names else "no image (fetch it from `url`),",
        "extra_columns": ", ".join(f"`{name}`" for name in extra),
        "load_files": ", ".join(f'"{split}": "data/{split}-*.parquet"' for split in split_files),
        "provenance": [
            {
                "model": _cell(public_model_name(p.get("model"))),
                **{name: _cell(p.get(name) or "unknown") for name in ("engine", "task", "prompt_version")},
                "rows": p["rows"],
            }
            for p in provenance
        ],
        "by_status": ", ".join(f"{status} {n}" for status, n in rows["by_status"].items()) or "none",
        "include_failed": include_failed,
        "left_out": [(_cell(reason), n) for reason, n in stats["left_out"]["by_reason"].items()],
        "seed": stats["split"]["seed"],
        "proportions": ", ".join(
            f"{split} {value:g}" for split, value in stats["split"]["proportions"].items()
        ),
        "moved": stats["split"].get("moved_to_fill_empty_splits", 0),
        "splits": [
            {
                "name": split,
                "rows": rows["by_split"][split],
                "pattern": f"data/{split}-*.parquet",
                "files": len(split_files.get(split, ())),
            }
            for split in SPLITS
        ],
        "exported": rows["exported"],
        "distinct": stats["distinct"],
        "per_image": [{"name": name, **values} for name, values in stats["per_image"].items()],
        "top_names": _top(stats["top_names"]),
        "top_predicates": _top(stats["top_predicates"]),
        "top_attributes": _top(stats["top_attributes"]),
        "plots": list(PLOT_FILES.items()),
        "license": _cell(license),
    }
    return DatasetCard.from_template(card_data, template_path=str(TEMPLATE), **template_kwargs)
