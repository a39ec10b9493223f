"""Counts and per-image graph statistics of an export, accumulated batch by batch (``stats.json``).

Memory grows with the number of distinct values (names, predicates, attributes, models, error reasons) and with
the largest per-image count, not with the number of rows: per-image counts are kept as histograms, from which
the mean, median, 95th percentile and maximum are exactly the figures numpy gives on the values themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.export.splits import SPLITS

__all__ = ["TOP_K", "ExportStats", "failure_reason"]

TOP_K = 50
# The provenance fields of `annotation` that tell how a row was made, in the order the card lists them.
PROVENANCE_FIELDS = ("model", "engine", "task", "prompt_version")


def failure_reason(error: str | None) -> str:
    """The reason a failed row is counted under: its error text up to the first colon."""
    return (error or "").split(":", 1)[0].strip() or "unknown"


def _order_statistic(cumulative: np.ndarray, index: int) -> int:
    """The value at position `index` of the sorted values whose histogram has the running sums `cumulative`."""
    return int(np.searchsorted(cumulative, index, side="right"))


def _percentile(cumulative: np.ndarray, percent: float) -> float:
    """`np.percentile(values, percent)` (method "linear") from the histogram of integer `values`: the same virtual
    index, neighbours and interpolation as numpy's, so the same float."""
    n = int(cumulative[-1])
    quantile = np.true_divide(percent, 100)
    virtual = (n - 1) * quantile  # numpy's virtual index for method "linear"
    if virtual >= n - 1:
        return float(_order_statistic(cumulative, n - 1))
    previous = int(np.floor(virtual))
    gamma = np.float64(virtual - previous)
    low = np.int64(_order_statistic(cumulative, previous))
    high = np.int64(_order_statistic(cumulative, previous + 1))
    difference = high - low
    if gamma >= 0.5:  # numpy's _lerp
        return float(high - difference * (1 - gamma))
    return float(low + difference * gamma)


def _summary(histogram: np.ndarray) -> dict[str, float]:
    """Mean, median, 95th percentile and maximum of the integer values counted by `histogram` (count of value v at
    index v): the figures numpy gives on the values themselves."""
    n = int(histogram.sum())
    if n == 0:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    cumulative = np.cumsum(histogram)
    total = int(np.dot(np.arange(histogram.size, dtype=np.int64), histogram.astype(np.int64)))
    middle = (_order_statistic(cumulative, (n - 1) // 2) + _order_statistic(cumulative, n // 2)) / 2
    return {
        "mean": round(total / n, 4),
        "median": float(middle),
        "p95": _percentile(cumulative, 95),
        "max": float(np.flatnonzero(histogram)[-1]),
    }


def _add_counts(histogram: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`histogram` (count of value v at index v) with the non-negative integer `values` added; grows as needed."""
    counts = np.bincount(values, minlength=histogram.size)
    if counts.size > histogram.size:
        counts[: histogram.size] += histogram
        return counts
    return histogram + counts


PER_IMAGE = ("objects", "relations", "attributes", "graph_length", "graph_length_with_attributes")


@dataclass
class ExportStats:
    """Counts and per-image graph statistics, accumulated batch by batch over the exported rows."""

    by_status: Counter[str] = field(default_factory=Counter)
    by_split: Counter[str] = field(default_factory=Counter)
    left_out: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    provenance: Counter[tuple[str, ...]] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    predicates: Counter[str] = field(default_factory=Counter)
    attributes: Counter[str] = field(default_factory=Counter)
    moved_to_fill: int = 0
    # per-image counts as histograms (index = value, entry = images), so memory grows with the largest count only
    per_image: dict[str, np.ndarray] = field(
        default_factory=lambda: {name: np.zeros(0, np.int64) for name in PER_IMAGE}
    )

    def add_graphs(self, graphs: pa.Array) -> None:
        """Count one batch of `scene_graph` cells (null cells count as empty graphs)."""
        objects = pc.struct_field(graphs, "objects")
        relations = pc.struct_field(graphs, "relations")
        flat_objects = pc.list_flatten(objects)
        attribute_lists = pc.struct_field(flat_objects, "attributes")
        per_object = pc.fill_null(pc.list_value_length(attribute_lists), 0).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(objects).to_numpy(zero_copy_only=False)
        counts = {
            "objects": pc.fill_null(pc.list_value_length(objects), 0).to_numpy(zero_copy_only=False),
            "relations": pc.fill_null(pc.list_value_length(relations), 0).to_numpy(zero_copy_only=False),
            "attributes": np.bincount(parents, weights=per_object, minlength=len(graphs)),
        }
        counts = {name: values.astype(np.int64) for name, values in counts.items()}
        counts["graph_length"] = counts["objects"] + counts["relations"]
        counts["graph_length_with_attributes"] = counts["graph_length"] + counts["attributes"]
        for name, values in counts.items():
            self.per_image[name] = _add_counts(self.per_image[name], values)
        for counter, values in (
            (self.names, pc.struct_field(flat_objects, "name")),
            (self.predicates, pc.struct_field(pc.list_flatten(relations), "predicate")),
            (self.attributes, pc.list_flatten(attribute_lists)),
        ):
            for item in pc.value_counts(pc.drop_null(values)).to_pylist():
                counter[item["values"]] += item["counts"]

    def add_annotations(self, annotations: pa.Array) -> None:
        """Count one batch of exported `annotation` cells by model and prompt, and by full provenance."""
        if not len(annotations):
            return
        table = pa.table({name: pc.struct_field(annotations, name) for name in PROVENANCE_FIELDS})
        # one thread: the groups come in order of first appearance, as counting row by row would insert them
        grouped = table.group_by(list(PROVENANCE_FIELDS), use_threads=False).aggregate([([], "count_all")])
        columns = [grouped.column(name).to_pylist() for name in (*PROVENANCE_FIELDS, "count_all")]
        for model, engine, task, version, n in zip(*columns, strict=True):
            self.models[f"{model} (prompt {version})"] += n
            self.provenance[(model, engine, task, version)] += n

    def per_image_histograms(self) -> dict[str, np.ndarray]:
        """Per image statistic (objects, relations, attributes, graph_length = objects + relations,
        graph_length_with_attributes = graph_length + attributes): the number of exported images with each value
        (entry v counts the images with value v)."""
        return {name: self.per_image[name].copy() for name in PER_IMAGE}

    def to_dict(self, proportions: Sequence[float], seed: int) -> dict[str, Any]:
        def top(counter: Counter[str]) -> list[dict[str, Any]]:
            return [{"value": value, "count": n} for value, n in counter.most_common(TOP_K)]

        return {
            "rows": {
                "total": sum(self.by_status.values()),
                "by_status": dict(sorted(self.by_status.items())),
                "exported": sum(self.by_split.values()),
                "by_split": {split: self.by_split[split] for split in SPLITS},
            },
            "left_out": {"rows": sum(self.left_out.values()), "by_reason": dict(self.left_out.most_common())},
            "split": {
                "proportions": dict(zip(SPLITS, proportions, strict=True)),
                "seed": seed,
                # rows moved out of their keyed split so that no split with a positive proportion is empty
                "moved_to_fill_empty_splits": self.moved_to_fill,
            },
            "annotation": dict(self.models.most_common()),
            "provenance": [
                {**dict(zip(PROVENANCE_FIELDS, fields, strict=True)), "rows": n}
                for fields, n in sorted(self.provenance.items(), key=lambda item: (-item[1], str(item[0])))
            ],
            # graph_length = nodes + edges (objects + relations); ..._with_attributes counts attributes as nodes.
            "per_image": {name: _summary(counts) for name, counts in self.per_image_histograms().items()},
            "distinct": {
                "names": len(self.names),
                "predicates": len(self.predicates),
                "attributes": len(self.attributes),
            },
            "top_names": top(self.names),
            "top_predicates": top(self.predicates),
            "top_attributes": top(self.attributes),
        }
