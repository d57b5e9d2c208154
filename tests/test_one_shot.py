"""The all-reduce switch of tensor parallelism: `TensorParallelGroup.all_reduce` takes the fast
path where one is installed and it takes the tensor, NCCL/gloo otherwise; the one-shot kernel's
choice depends only on what every rank sees alike (dtype, size). The kernel itself needs GPUs
(benchmarks/probes/all_reduce_probe.py and tests/test_tensor_parallel_gpu.py)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from mili.distributed import one_shot
from mili.model import parallel
from mili.model.parallel import TensorParallelGroup


@pytest.fixture
def fast(monkeypatch):
    """Install a fake fast all-reduce (doubles what it takes: two ranks holding the same tensor)."""
    taken = []

    def fake(t):
        if t.numel() > 4:
            return None
        taken.append(t)
        return t * 2

    monkeypatch.setattr(parallel, "_fast_all_reduce", fake)
    return taken


def test_the_fast_path_takes_what_it_can_and_the_rest_goes_to_dist(fast, monkeypatch):
    sent = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, group=None: sent.append(t))
    group = TensorParallelGroup(0, 2)
    small, large = torch.ones(4), torch.ones(8)
    assert torch.equal(group.all_reduce(small), torch.full((4,), 2.0)), "use the tensor the fast path returns"
    assert fast == [small] and sent == []
    assert group.all_reduce(large) is large and sent == [large], "a tensor the fast path leaves goes to dist.all_reduce"


def test_a_group_of_its_own_never_takes_the_fast_path(fast, monkeypatch):
    """The fast path serves the default group only (its buffer was set up for it)."""
    sent = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, group=None: sent.append(group))
    own = object()
    TensorParallelGroup(0, 2, process_group=own).all_reduce(torch.ones(2))
    assert fast == [] and sent == [own]


def _one_shot_on(device: str, max_bytes: int) -> one_shot.OneShotAllReduce:
    """A OneShotAllReduce without symmetric memory, to check which tensors it takes."""
    kernel = one_shot.OneShotAllReduce.__new__(one_shot.OneShotAllReduce)
    kernel.buffer, kernel.max_bytes, kernel.group_name = torch.empty(max_bytes, dtype=torch.uint8, device=device), \
        max_bytes, "0"
    return kernel


@pytest.mark.parametrize("tensor, why", [
    (torch.ones(4, dtype=torch.int64), "an integer tensor"),
    (torch.ones(1024, dtype=torch.float32), "larger than the buffer"),
    (torch.ones(3, dtype=torch.bfloat16), "6 bytes: not a multiple of 16"),
    (torch.ones(0, dtype=torch.float32), "empty"),
])
def test_one_shot_leaves_what_it_cannot_sum(tensor, why):
    assert _one_shot_on("cpu", 512)(tensor) is None, why


def test_one_shot_is_for_gpus_once_per_process_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(one_shot, "_installed_once", False)
    assert not one_shot.usable(torch.device("cpu"))
    assert one_shot.usable(torch.device("cuda", 0))
    monkeypatch.setenv("MILI_ALL_REDUCE", "nccl")
    assert not one_shot.usable(torch.device("cuda", 0))
    monkeypatch.delenv("MILI_ALL_REDUCE")
    monkeypatch.setattr(one_shot, "_installed_once", True)
    assert not one_shot.usable(torch.device("cuda", 0)), "a second group in one process sums with NCCL"
