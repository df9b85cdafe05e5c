"""codl's launcher of local process groups (codl._launch), shared by the distributed tests and
benchmarks: ranks meet through a file store, results come back in rank order, and a failing
rank is named within the timeout."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from codl._launch import LaunchError, launch


def _sum_of_ranks(rank: int, world_size: int, scale: float) -> tuple[int, torch.Tensor]:
    value = torch.full((3,), scale * (rank + 1))
    dist.all_reduce(value)
    return dist.get_world_size(), value


def _raises_on_rank_one(rank: int, world_size: int) -> str:
    if rank == 1:
        raise ValueError("rank one refuses")
    return "fine"


def _exits_on_rank_one(rank: int, world_size: int) -> str:
    # The barrier lets rank 0 finish forming the group first: a peer that vanishes while gloo
    # is still connecting fails rank 0 too, which is not what these tests are about.
    dist.barrier()
    if rank == 1:
        os._exit(3)
    return "fine"


def test_two_ranks_all_reduce_to_the_sum() -> None:
    results = launch(_sum_of_ranks, 2, 0.5, timeout_s=60)
    for world_size, value in results:
        assert world_size == 2
        assert torch.equal(value, torch.full((3,), 0.5 * (1 + 2)))


def test_a_rank_that_raises_is_named_within_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(LaunchError, match="rank 1: Traceback") as caught:
        launch(_raises_on_rank_one, 2, timeout_s=60)
    assert caught.value.failed_ranks == [1]
    assert "ValueError: rank one refuses" in str(caught.value)
    assert time.monotonic() - start < 60


def test_a_rank_that_dies_silently_is_named() -> None:
    with pytest.raises(LaunchError, match="rank 1: exited with code 3") as caught:
        launch(_exits_on_rank_one, 2, timeout_s=60)
    assert caught.value.failed_ranks == [1]


def test_only_the_answering_ranks_are_waited_for() -> None:
    assert launch(_exits_on_rank_one, 2, timeout_s=60, answering=[0]) == ["fine"]


def test_bad_arguments_are_refused_before_spawning() -> None:
    with pytest.raises(ValueError, match="world_size"):
        launch(_sum_of_ranks, 0)
    with pytest.raises(ValueError, match="answering"):
        launch(_sum_of_ranks, 2, answering=[2])
