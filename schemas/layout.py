"""Where the jobs' files live: the names every job shares and the split layout of an exported dataset.

An export (`pipelines.export`) writes ``data/{split}-{i:05d}-of-{n:05d}.parquet``, the layout the Hugging Face
Hub and `datasets` use; readers (`training`, `benchmark`) find a split's files through `find_split_files`, which
applies `datasets`' own split-name conventions, so they also read ``train/*.parquet``, ``validation.parquet``,
``dev/`` and the other names `datasets.load_dataset` understands.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CARD_FILE",
    "DATA_DIR",
    "IMAGE_ROWS_PER_ROW_GROUP",
    "RESULT_FILE",
    "RUN_FILE",
    "STATS_FILE",
    "SUMMARY_FILE",
    "find_split_files",
    "split_file_name",
]

DATA_DIR = "data"  # the Parquet shards of an annotate output or an export
RUN_FILE = "run.json"  # a job's identity: the settings a resumed run must share
SUMMARY_FILE = "summary.json"  # an annotate run's counts
STATS_FILE = "stats.json"  # an export's statistics
CARD_FILE = "README.md"  # a dataset card
RESULT_FILE = "result.json"  # a benchmark run's result record
# Rows per Parquet row group in files that hold images (annotate shards, exports), as `datasets` writes image data:
# small enough that a reader never holds more than ~100 images of one file at once.
IMAGE_ROWS_PER_ROW_GROUP = 100


def split_file_name(split: str, index: int, count: int) -> str:
    """The name of file `index` of `count` of a split: ``train-00000-of-00004.parquet``."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def find_split_files(root: str | Path) -> dict[str, list[Path]]:
    """``{split: sorted Parquet files}`` under a dataset directory, by `datasets`' split-name conventions
    (``validation``, ``valid``, ``val`` and ``dev`` all name the validation split). A directory whose files
    carry no split name is one ``train`` split, as `datasets.load_dataset` reads it. Raises FileNotFoundError
    when `root` holds no Parquet file."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    root = Path(root)
    if not root.is_dir() or not any(root.rglob("*.parquet")):
        raise FileNotFoundError(f"no Parquet files under {root}")
    patterns = get_data_patterns(str(root))
    files = DataFilesDict.from_patterns(patterns, base_path=str(root))
    found = {
        str(split): sorted(Path(f) for f in split_files if str(f).endswith(".parquet"))
        for split, split_files in files.items()
    }
    return {split: paths for split, paths in found.items() if paths}
