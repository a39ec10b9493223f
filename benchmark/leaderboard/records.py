"""Result records as the leaderboard reads them: the columns (`Metric`, `METRICS`, from the metric classes of
`benchmark.metrics.RECORD_METRICS`), a record with the files it links to (`Entry`), and strict reading.

A run is named by its ``--display-name`` (`benchmark.run`, kept in ``provenance.config``), or by its model id.
Records are read strictly: a file that cannot be read, is not JSON, does not have the record's shape, or holds
a metric that is not a finite real number (``true``, ``"27.5"``, NaN) raises `RecordError`, which names every
bad file and the field; `load_entries` reads every file before it reports, or skips the bad ones with a
warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from benchmark.metrics import RECORD_METRICS
from schemas import BenchmarkResult, json_kind
from schemas.layout import RESULT_FILE


@dataclass(frozen=True)
class Metric:
    """A leaderboard column: record key, header, whether higher values are better, the plot bounds, and where the
    record keeps its details (the `metric_details` group and, for a mean over items, the detail counting them).

    The known columns come from the metric classes (`benchmark.metrics.RECORD_METRICS`): their `labels`,
    `higher_is_better`, `plot_lower_bound` / `plot_upper_bound`, `details_key`, `count_key` and `track` (the
    table the column is shown in, one of `TRACKS`)."""

    key: str
    label: str
    higher_is_better: bool
    lower_bound: float | None = None
    upper_bound: float | None = None
    details_key: str | None = None
    count_key: str | None = None
    track: str = "compsg"

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def std_key(self) -> str:
        """The detail holding the standard deviation of this metric (``kid_mean`` -> ``kid_std``)."""
        return self.key.removesuffix("_mean") + "_std"

    @classmethod
    def of(cls, metric_class: type) -> tuple[Metric, ...]:
        """The columns of one metric class, one per record key it writes."""
        return tuple(
            cls(
                key,
                label,
                bool(metric_class.higher_is_better),
                metric_class.plot_lower_bound,
                metric_class.plot_upper_bound,
                metric_class.details_key,
                metric_class.count_key,
                metric_class.track,
            )
            for key, label in metric_class.labels.items()
        )


METRICS = tuple(column for metric_class in RECORD_METRICS for column in Metric.of(metric_class))

# track -> its table's title, in page order; a track's columns are those of the metric classes naming it
TRACKS = {
    "compsg": "Scene-graph IoUs and image metrics",
    "questions": "Question track: yes/no questions from each sample's graph (DSG rule)",
    "spatial": "Spatial track: VISOR (object detector, two-object prompts)",
}
if {m.track for m in METRICS} - TRACKS.keys():
    raise TypeError(f"a metric class names a track without a title: {sorted({m.track for m in METRICS} - TRACKS.keys())}")


@dataclass(frozen=True)
class Entry:
    """A record on the leaderboard, with the files it links to: the ``result.json`` it was read from and a grid of
    sample images of its run (both optional)."""

    record: BenchmarkResult
    result_file: Path | None = None
    grid_file: Path | None = None

    @property
    def display_name(self) -> str | None:
        """The run's ``--display-name`` (kept in ``provenance.config``), if it is a non-blank string."""
        name = self.record.provenance.config.get("display_name")
        return name if isinstance(name, str) and name.strip() else None

    @property
    def name(self) -> str:
        return self.display_name or self.record.model.model_id


class RecordError(ValueError):
    """Some result files could not be read as records; `problems` maps each file to what is wrong with it."""

    def __init__(self, problems: dict[Path, str]) -> None:
        self.problems = problems
        lines = [f"{path}: {problem}" for path, problem in problems.items()]
        super().__init__(f"{len(problems)} invalid result record(s):\n" + "\n".join(lines))


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "record"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def read_record(file: Path) -> BenchmarkResult:
    """One record from a JSON file; raises `RecordError` naming the file and what is wrong with it."""
    try:
        data = json.loads(file.read_bytes())
    except OSError as exc:
        raise RecordError({file: f"cannot read: {exc.strerror or exc}"}) from None
    except UnicodeDecodeError as exc:
        raise RecordError({file: f"not UTF-8 text: {exc.reason} at byte {exc.start}"}) from None
    except json.JSONDecodeError as exc:
        raise RecordError(
            {file: f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}
        ) from None
    except RecursionError:
        raise RecordError({file: "not valid JSON: nested too deeply"}) from None
    if not isinstance(data, dict):
        raise RecordError({file: f"not a result record: {json_kind(data)}, not an object"})
    try:
        return BenchmarkResult.model_validate(data)
    except ValidationError as exc:
        raise RecordError({file: f"not a valid result record: {_validation_message(exc)}"}) from None


def load_entries(paths: Sequence[str | Path], *, skip_invalid: bool = False) -> list[Entry]:
    """Result records from JSON files, or from run directories holding ``result.json``, each with the file it was
    read from.

    Every file is read before anything is reported: if some are invalid, `RecordError` lists them all (file and
    reason). With `skip_invalid`, they are left out instead and each one is printed to stderr as a warning."""
    entries, problems = [], {}
    for path in map(Path, paths):
        file = path / RESULT_FILE if path.is_dir() else path
        try:
            entries.append(Entry(read_record(file), result_file=file))
        except RecordError as exc:
            problems.update(exc.problems)
    if problems and not skip_invalid:
        raise RecordError(problems)
    for file, problem in problems.items():
        print(f"warning: skipped {file}: {problem}", file=sys.stderr)
    return entries


def load_records(paths: Sequence[str | Path], *, skip_invalid: bool = False) -> list[BenchmarkResult]:
    """The records of `load_entries` (same arguments, same errors and warnings)."""
    return [entry.record for entry in load_entries(paths, skip_invalid=skip_invalid)]
