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


def test_one_shot_is_for_gpus_once_per_process_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(one_shot, "_installed_once", False)
    assert not one_shot.usable(torch.device("cpu"))
    assert one_shot.usable(torch.device("cuda", 0))
    monkeypatch.setenv("MILI_ALL_REDUCE", "nccl")
    assert not one_shot.usable(torch.device("cuda", 0))
    monkeypatch.delenv("MILI_ALL_REDUCE")
    monkeypatch.setattr(one_shot, "_installed_once", True)
    assert not one_shot.usable(torch.device("cuda", 0)), "a second group in one process sums with NCCL"


def _simulated_group(world: int, region: int) -> list[one_shot.OneShotAllReduce]:
    """`world` ranks in one process, on the CPU: their buffers are plain tensors, each rank's kernel
    writes into the others' through their addresses, as on GPUs through symmetric memory."""
    buffers = [torch.full((one_shot.SLOTS * world * region,), one_shot.EMPTY_BITS, dtype=torch.int16)
               for _ in range(world)]
    addresses = [b.data_ptr() for b in buffers]
    return [one_shot.OneShotAllReduce(rank, world, buffers[rank], addresses) for rank in range(world)]


def _all_reduce(group, tensors):
    """One call on every rank: every rank sends, then every rank receives (on GPUs one kernel does
    both, each rank waiting for the others' data; the interpreter runs one program at a time)."""
    outs = [torch.empty_like(t) for t in tensors]
    for phase in (one_shot.SEND, one_shot.RECEIVE):
        for rank, t in enumerate(tensors):
            group[rank].launch(t, outs[rank], phase)
    return outs


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates ranks in Triton's interpreter on the CPU")
@pytest.mark.parametrize("world", [2, 3])
def test_one_shot_kernel_sums_over_the_ranks_call_after_call(world, monkeypatch):
    """The kernel's sum is the float32 sum rounded once, the same on every rank, over calls of
    changing sizes (one chunk, several chunks per program, a ragged tail, fewer programs than
    before); -0.0 (the empty marker) arrives as 0; after every call the buffers are empty again
    and every slot bit flipped."""
    monkeypatch.setattr(one_shot, "MAX_PROGRAMS", 4)
    monkeypatch.setattr(one_shot, "BLOCK", 16)
    group = _simulated_group(world, region=80)
    generator = torch.Generator().manual_seed(0)
    for call, n in enumerate([5, 16, 80, 37, 1, 64]):  # programs: 1, 1, 4 (two chunks each for some), 3, 1, 4
        dtype = torch.bfloat16 if call % 2 == 0 else torch.float16
        tensors = [torch.randn(n, generator=generator).to(dtype) for _ in range(world)]
        tensors[0][0] = -0.0
        outs = _all_reduce(group, tensors)
        expected = torch.stack([t.float() for t in tensors]).sum(0).to(dtype)
        for rank, out in enumerate(outs):
            assert torch.equal(out, outs[0]), f"call {call}: rank {rank}'s sum differs from rank 0's"
            if dtype == torch.float16:
                assert torch.equal(out, expected), f"call {call} (n={n}): rank {rank} got {out}, expected {expected}"
            else:  # the interpreter truncates float32 to bfloat16 (a GPU rounds): one bfloat16 step apart at most
                torch.testing.assert_close(out, expected, rtol=2 ** -7, atol=0)
        for member in group:
            assert member.buffer.eq(one_shot.EMPTY_BITS).all(), "a receiver empties what it read"
            assert member.slot_bits.tolist() == [(call + 1) % 2] * 4, \
                "each call flips every program's slot, those of programs it did not launch included"


@pytest.mark.parametrize("tensor, why", [
    (torch.ones(4, dtype=torch.float32), "float32: only 2-byte floats have the empty marker"),
    (torch.ones(4, dtype=torch.int16), "an integer tensor"),
    (torch.ones(81, dtype=torch.bfloat16), "larger than a region"),
    (torch.ones(0, dtype=torch.bfloat16), "empty"),
])
def test_one_shot_leaves_what_it_cannot_sum(tensor, why):
    assert _simulated_group(2, region=80)[0](tensor) is None, why
