"""The plots of an export (``plots/*.png``): histograms of per-image counts, bars of the most frequent values.

`figures` builds them (matplotlib `Figure` objects, no pyplot state, so they can be inspected); `write_plots`
saves them. Every axis that counts something has integer ticks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.export.stats import ExportStats

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PLOT_FILES", "figures", "write_plots"]

PLOT_TOP_K = 25
# file name -> what the card says it shows
PLOT_FILES = {
    "per_image.png": "objects, relations, attributes per image",
    "graph_length.png": "graph length",
    "top_names.png": "top object names",
    "top_predicates.png": "top predicates",
    "top_attributes.png": "top attributes",
}


def _integer_ticks(axis: Axes, *which: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for name in which:
        getattr(axis, f"{name}axis").set_major_locator(MaxNLocator(integer=True))


def figures(stats: ExportStats) -> dict[str, Figure]:
    """The figures by file name (the keys of `PLOT_FILES`)."""
    from matplotlib.figure import Figure

    histograms = stats.per_image_histograms()
    out: dict[str, Figure] = {}

    figure = Figure(figsize=(12, 3.5))
    for axis, name in zip(figure.subplots(1, 3), ("objects", "relations", "attributes"), strict=True):
        counts = histograms[name]  # = np.bincount of the per-image values
        axis.bar(np.arange(counts.size), counts, width=0.8)
        axis.set(title=f"{name} per image", xlabel=name, ylabel="images")
        _integer_ticks(axis, "x", "y")
    out["per_image.png"] = figure

    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    lengths = histograms["graph_length"]
    values = np.flatnonzero(lengths)  # the lengths that occur, weighted by their counts: the same 30 bins
    axis.hist(values, bins=30, weights=lengths[values])
    axis.set(title="graph length (objects + relations)", xlabel="nodes + edges", ylabel="images")
    _integer_ticks(axis, "x", "y")
    out["graph_length.png"] = figure

    for name, counter in (
        ("names", stats.names),
        ("predicates", stats.predicates),
        ("attributes", stats.attributes),
    ):
        top = counter.most_common(PLOT_TOP_K)[::-1]
        figure = Figure(figsize=(6, 0.25 * len(top) + 1.2))
        axis = figure.subplots()
        axis.barh([value for value, _ in top], [n for _, n in top])
        axis.set(title=f"top {len(top)} {name}", xlabel="count")
        _integer_ticks(axis, "x")
        out[f"top_{name}.png"] = figure
    return out


def write_plots(stats: ExportStats, directory: Path) -> dict[str, Figure]:
    """Save `figures(stats)` as PNG files in `directory`; returns them."""
    directory.mkdir(parents=True, exist_ok=True)
    built = figures(stats)
    for name, figure in built.items():
        figure.tight_layout()
        figure.savefig(directory / name, dpi=100)
    return built
