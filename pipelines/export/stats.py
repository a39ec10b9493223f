"""Counts and per-image graph statistics of an export, accumulated batch by batch (``stats.json``)."""

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


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "mean": round(float(values.mean()), 4),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


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
    per_image: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"objects": [], "relations": [], "attributes": []}
    )

    def add_graphs(self, graphs: pa.Array) -> None:
        """Count one batch of `scene_graph` cells (null cells count as empty graphs)."""
        objects = pc.struct_field(graphs, "objects")
        relations = pc.struct_field(graphs, "relations")
        flat_objects = pc.list_flatten(objects)
        attribute_lists = pc.struct_field(flat_objects, "attributes")
        per_object = pc.fill_null(pc.list_value_length(attribute_lists), 0).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(objects).to_numpy(zero_copy_only=False)
        self.per_image["objects"].append(
            pc.fill_null(pc.list_value_length(objects), 0).to_numpy(zero_copy_only=False)
        )
        self.per_image["relations"].append(
            pc.fill_null(pc.list_value_length(relations), 0).to_numpy(zero_copy_only=False)
        )
        self.per_image["attributes"].append(np.bincount(parents, weights=per_object, minlength=len(graphs)))
        for counter, values in (
            (self.names, pc.struct_field(flat_objects, "name")),
            (self.predicates, pc.struct_field(pc.list_flatten(relations), "predicate")),
            (self.attributes, pc.list_flatten(attribute_lists)),
        ):
            for item in pc.value_counts(pc.drop_null(values)).to_pylist():
                counter[item["values"]] += item["counts"]

    def add_annotations(self, annotations: pa.Array) -> None:
        """Count one batch of exported `annotation` cells by model and prompt, and by full provenance."""
        columns = [pc.struct_field(annotations, name).to_pylist() for name in PROVENANCE_FIELDS]
        for model, engine, task, version in zip(*columns, strict=True):
            self.models[f"{model} (prompt {version})"] += 1
            self.provenance[(model, engine, task, version)] += 1

    def per_image_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            name: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            for name, parts in self.per_image.items()
        }
        arrays["graph_length"] = arrays["objects"] + arrays["relations"]
        arrays["graph_length_with_attributes"] = arrays["graph_length"] + arrays["attributes"]
        return arrays

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
            "per_image": {name: _summary(values) for name, values in self.per_image_arrays().items()},
            "distinct": {
                "names": len(self.names),
                "predicates": len(self.predicates),
                "attributes": len(self.attributes),
            },
            "top_names": top(self.names),
            "top_predicates": top(self.predicates),
            "top_attributes": top(self.attributes),
        }
