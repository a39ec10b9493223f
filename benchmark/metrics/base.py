"""What the CompSG-Bench metric classes share: they are `torchmetrics.Metric` subclasses.

Each class keeps its per-item data (features, embeddings, per-pair scores) in list states reduced by ``"cat"`` and
its counts in states reduced by ``"sum"``, so torchmetrics' ``update`` / ``compute`` / ``reset``, ``forward``,
``merge_state`` and the distributed sync work as for any torchmetrics metric. ``compute()`` turns the states into
numpy arrays (float64 where the metric computes in float64) and calls the functional form of the metric.

Besides torchmetrics' ``higher_is_better``, ``plot_lower_bound`` and ``plot_upper_bound``, every class names what
it writes to a result record (`schemas.BenchmarkResult`): ``labels`` maps each key it writes to
``BenchmarkResult.metrics`` to its display label, and ``details_key`` names its group in
``BenchmarkResult.metric_details``. ``count_key``, where set, is the detail holding the number of items the
metric averages over (the leaderboard shows a confidence interval of such a mean). ``track`` names the
leaderboard table its columns are shown in (``compsg``: CompSG-Bench's; ``questions``: the question track's;
``spatial``: VISOR's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics import Metric

__all__ = ["BenchmarkMetric", "split_metric_kwargs", "state_array", "to_state"]

# The keyword arguments of `torchmetrics.Metric.__init__`; any other keyword goes to the metric's feature model.
METRIC_KWARGS = (
    "compute_on_cpu",
    "dist_sync_on_step",
    "process_group",
    "dist_sync_fn",
    "distributed_available_fn",
    "sync_on_compute",
    "compute_with_cache",
)


def split_metric_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(torchmetrics `Metric` keyword arguments, the others)."""
    metric = {k: v for k, v in kwargs.items() if k in METRIC_KWARGS}
    return metric, {k: v for k, v in kwargs.items() if k not in METRIC_KWARGS}


def to_state(values: Any, dtype: np.dtype | type, device: torch.device) -> torch.Tensor:
    """A numpy array (or array-like, or tensor) as a tensor of `dtype` on `device`: an exact copy, so later changes
    to the caller's array do not reach the metric's state."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return torch.from_numpy(np.array(values, dtype=dtype)).to(device)


def state_array(state: list[torch.Tensor] | torch.Tensor, dtype: np.dtype | type) -> np.ndarray | None:
    """A list state (or the tensor a distributed sync turned it into) as one new numpy array of `dtype`, rows
    concatenated, never a view of the state (a caller may write to it); None when nothing was added."""
    if isinstance(state, torch.Tensor):
        return np.array(state.detach().cpu(), dtype=dtype)
    if not state:
        return None
    return np.asarray(torch.cat([part.detach().cpu() for part in state]), dtype=dtype)  # cat made a new tensor


class BenchmarkMetric(Metric):
    """A `torchmetrics.Metric` that writes keys of a CompSG-Bench result record."""

    is_differentiable = False
    full_state_update = False
    labels: ClassVar[dict[str, str]] = {}
    details_key: ClassVar[str] = ""
    count_key: ClassVar[str | None] = None
    track: ClassVar[str] = "compsg"
