"""The metric classes synchronised across two real processes (torch.distributed, gloo, CPU): each process feeds
half of the inputs, and `compute()` on either gives the value of the functional form on all of them."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from metric_cases import cases


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        values = {}
        for case in cases():
            metric = case.make()
            case.feed(metric, rank)
            values[case.name] = case.value(metric.compute())
        results[rank] = values
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh processes import torch and torchmetrics
@pytest.mark.timeout(300)
def test_metric_classes_sync_across_two_processes() -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for case in cases():
        # the gathered state is rank 0's rows, then rank 1's: the order of feeding part 0, then part 1
        assert results[0][case.name] == case.expected, case.name
        assert results[1][case.name] == case.expected, case.name
        for part in (0, 1):  # ... which neither process's own part gives: the states were synchronised
            alone = case.make()
            case.feed(alone, part)
            assert case.value(alone.compute()) != case.expected, case.name
