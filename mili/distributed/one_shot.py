"""The all-reduce of a decode step, in one kernel that writes into the other GPUs' memory directly.

A tensor-parallel decode step at batch 1 all-reduces a few kilobytes twice per layer (73 times
per token at Qwen3-8B shapes, with the embedding's). At that size an all-reduce costs its
latency, not its bytes, and NCCL's general algorithms pass the data through several steps.
PyTorch's symmetric memory maps one buffer of every GPU into the address space of each, so one
kernel can do it all.

The kernel pushes and polls; it has no barrier (mili/kernels/pushed_sums.py says how an element
is known to have arrived). Each rank's buffer holds, for each of two slots, one region per
sender, every element of it set to a sentinel bit pattern (-0.0) while empty:

    rank r, call c (slot s = c mod 2):
      1. write x, its -0.0 made +0.0, into region [s][r] of every rank's buffer (its own included)
      2. read its own regions [s][0..W-1] as one block, again until no element is the sentinel,
         sum them in rank order in float32 (so every rank gets the same bits) and write the sum
      3. set what it read back to the sentinel

No rank writes a region that is still being read: a peer writes region [s][peer] of our
buffer again at call c+2, after it has read our data of call c+1, which we send after our
call c has finished reading and clearing. So two slots suffice, and every element that has
arrived is complete (a 2-byte store is never torn). The slot is a bit each program keeps in
device memory and flips at every call, so the kernel needs no host-side count and replays
correctly inside CUDA graphs; every rank must make the same sequence of calls, and does
(`TensorParallelGroup.all_reduce` chooses by dtype and size only). Under a dependent launch
(Hopper) the kernel launches while the product before it runs, and the kernel after it launches
while it runs. On two H200s, in a chain of all-reduces at 8 KiB, it took 4.4 us per call
against 7.6 for PyTorch's `one_shot_all_reduce` (two barriers, no dependent launch) and 8.0 for
NCCL (benchmarks/all-reduce-probe-h200.json).

A program that has waited `timeout_s()` for a peer's data aborts the kernel instead of hanging.

It reads world_size × the bytes, so it only pays for small tensors; larger ones (a prefill's)
stay on NCCL, and so do float32 tensors (only 2-byte types have the sentinel). No NVLink
multicast is used.

Rank 0 decides whether the group uses it (`usable`) and every rank installs it after joining the
group (`install`, from `worker.join_group`); `TensorParallelGroup.all_reduce` then uses it for the
tensors it takes. MILI_ALL_REDUCE=nccl turns it off. `install` also sets up the sum buffers of the batch-1
step, in which the GEMVs sum over the ranks themselves (`SumBuffers`, `sum_sites`,
mili/engine/fused_step.py). A process uses both for its first group only:
on two H200s a second group in the same process (after the first shut down) hung with
symmetric memory, most likely because PyTorch keeps a process's symmetric memory tied to the
first process group it met; so a second tensor-parallel model in one process sums with NCCL.

Memory: reads x once and world_size regions of its own buffer, writes world_size regions (one
on each GPU), the output, and the cleared regions.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel
from mili.kernels.pushed_sums import (
    EMPTY_BITS,
    SumSite,
    buffer_of,
    empty_site,
    every_buffer,
    push_to_site,
    rank_constexprs,
    site_sum,
)
from mili.model.parallel import set_fast_all_reduce

# A decode step of up to 256 sequences at hidden size 4096 in bfloat16: on two H200s the kernel beat
# NCCL at every size up to this one, the largest measured (all-reduce-probe-h200.json); with four
# ranks at every size but this one (all-reduce-probe-h200-4gpu.json: 32 against 29 us).
MAX_BYTES = 2 << 20
DTYPES = (torch.bfloat16, torch.float16)
SLOTS = 2
BLOCK = 1024  # elements per chunk: 2 KiB
MAX_PROGRAMS = 256  # one chunk per program up to 256 chunks (512 KiB), then several

SEND, RECEIVE = 1, 2  # the kernel's two halves; a call runs both (the tests run them apart)


def timeout_s() -> float:
    """How long a rank waits in the kernel for a peer's data before the kernel aborts (seconds;
    MILI_ALL_REDUCE_TIMEOUT_S as the group is set up, 60 by default): longer than any skew between
    ranks that are alive (a Triton compile on one of them takes seconds), so only a rank that is
    gone or stuck trips it."""
    return float(os.environ.get("MILI_ALL_REDUCE_TIMEOUT_S", "60"))


@triton.jit
def _one_shot_all_reduce_kernel(x_ptr, out_ptr, buffers_ptr, slot_bits_ptr, n, region, timeout_ns,
                                RANK: tl.constexpr, WORLD: tl.constexpr, SENDERS: tl.constexpr,
                                BLOCK: tl.constexpr, MAX_PROGRAMS: tl.constexpr, PHASES: tl.constexpr,
                                WATCHDOG: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr):
    """Reads x [n] (2-byte floats) and writes out [n] = their sum over the ranks.

    buffers_ptr: [WORLD] int64, the address of each rank's buffer, which holds SLOTS × WORLD
    regions of `region` elements: a slot is laid out as a sum site of that width, and is filled,
    summed and emptied with the sum sites' helpers (every sender's chunk read as one block).
    SENDERS: WORLD rounded up to a power of two.
    slot_bits_ptr: [MAX_PROGRAMS] int32, the slot of each program.
    Program p handles chunks p, p + programs, ... of BLOCK elements. All the slot bits hold the
    same value; program p flips bits p, p + programs, ..., so a call with fewer programs than
    the last one still flips every bit, and no bit is flipped while another program reads it.
    WATCHDOG (GPUs): a program that has waited timeout_ns for a peer's data aborts the kernel.
    """
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    buffers, own = every_buffer(buffers_ptr, WORLD, SENDERS), buffer_of(buffers_ptr, RANK)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    slot = tl.load(slot_bits_ptr + pid)
    dtype = out_ptr.dtype.element_ty
    if PHASES & 1:  # SEND
        for start in range(pid * BLOCK, n, programs * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            push_to_site(buffers, region, slot, offs, mask, tl.load(x_ptr + offs, mask=mask), RANK, WORLD, SENDERS)
    if PHASES & 2:  # RECEIVE
        for start in range(pid * BLOCK, n, programs * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n
            total = site_sum(own, region, slot, offs, mask, timeout_ns, dtype, WORLD, SENDERS, WATCHDOG)
            empty_site(own, region, slot, offs, mask, WORLD, SENDERS)
            tl.store(out_ptr + offs, total.to(dtype), mask=mask)
        owned = pid + programs * tl.arange(0, MAX_PROGRAMS)
        tl.store(slot_bits_ptr + owned, tl.full([MAX_PROGRAMS], 1, tl.int32) - slot, mask=owned < MAX_PROGRAMS)


class OneShotAllReduce:
    """The sum over the ranks of small 2-byte float tensors, through buffers every rank can write.

    buffer: this rank's [SLOTS × world × region] int16 buffer, all EMPTY_BITS; buffer_addresses: the
    address of every rank's buffer, in rank order (`rendezvous` makes them from symmetric memory).
    """

    def __init__(self, rank: int, world: int, buffer: Tensor, buffer_addresses: list[int]):
        self.rank, self.world, self.buffer = rank, world, buffer
        self.region = buffer.numel() // (SLOTS * world)
        self.buffers = torch.tensor(buffer_addresses, dtype=torch.int64, device=buffer.device)
        self.slot_bits = torch.zeros(MAX_PROGRAMS, dtype=torch.int32, device=buffer.device)
        self.timeout_ns = int(timeout_s() * 1e9)

    def __call__(self, t: Tensor) -> Tensor | None:
        """The sum of `t` over the ranks (a new tensor), or None where `t` is too large or not a 2-byte
        float tensor on this device. The choice depends on nothing that may differ between ranks."""
        if t.device != self.buffer.device or t.dtype not in DTYPES or not 0 < t.numel() <= self.region:
            return None
        t = t.contiguous()
        out = torch.empty_like(t)
        self.launch(t, out, SEND | RECEIVE)
        return out

    def launch(self, t: Tensor, out: Tensor, phases: int) -> None:
        programs = min(triton.cdiv(t.numel(), BLOCK), MAX_PROGRAMS)
        _one_shot_all_reduce_kernel[(programs,)](t, out, self.buffers, self.slot_bits, t.numel(), self.region,
                                                 self.timeout_ns, **rank_constexprs(self.rank, self.world),
                                                 BLOCK=BLOCK, MAX_PROGRAMS=MAX_PROGRAMS, PHASES=phases,
                                                 WATCHDOG=t.device.type == "cuda", num_warps=4,
                                                 **dependent_launch_options(t.device))


def _symmetric_buffer(device: torch.device, elements: int) -> tuple[Tensor, list[int]]:
    """This rank's int16 buffer of symmetric memory, all EMPTY_BITS, and every rank's address of
    it in rank order (collective: every rank, in the same order)."""
    import torch.distributed._symmetric_memory as symm_mem

    buffer = symm_mem.empty(elements, dtype=torch.int16, device=device).fill_(EMPTY_BITS)
    handle = symm_mem.rendezvous(buffer, dist.group.WORLD.group_name)
    torch.cuda.synchronize(device)
    dist.barrier()  # every buffer is empty before any rank sends
    return buffer, list(handle.buffer_ptrs)


def rendezvous(device: torch.device, max_bytes: int = MAX_BYTES) -> OneShotAllReduce:
    """This rank's OneShotAllReduce over symmetric memory (collective: every rank, in the same order)."""
    world = dist.get_world_size()
    buffer, addresses = _symmetric_buffer(device, SLOTS * world * (max_bytes // 2))
    return OneShotAllReduce(dist.get_rank(), world, buffer, addresses)


class SumBuffers:
    """The sum sites of the batch-1 decode step's GEMVs (`mili.kernels.pushed_sums.SumSite`).

    buffer: this rank's int16 buffer, all EMPTY_BITS; buffer_addresses: every rank's, in rank order.
    """

    def __init__(self, rank: int, world: int, buffer: Tensor, buffer_addresses: list[int]):
        self.rank, self.world, self.buffer = rank, world, buffer
        self.addresses = torch.tensor(buffer_addresses, dtype=torch.int64, device=buffer.device)
        self.timeout_ns = int(timeout_s() * 1e9)

    def sites(self, width: int, count: int) -> list[SumSite] | None:
        """`count` sites for rows of `width` elements, to be used in this order every step, or None
        where they do not fit this buffer or are fewer than two (see SumSite)."""
        if count < 2 or count * self.world * width > self.buffer.numel():
            return None
        return [SumSite(self.addresses, self.rank, self.world, width, site, self.timeout_ns) for site in range(count)]


# Sum sites for a decode step of up to 64 layers (129 sites: the embedding, every o and down) of rows of
# 8192 bfloat16 elements on 8 ranks
SUM_BUFFER_BYTES = 17 << 20

_installed_once = False
_sum_buffers: SumBuffers | None = None


def usable(device: torch.device) -> bool:
    """Whether a group that rank 0 starts now on `device` should use the one-shot all-reduce."""
    return device.type == "cuda" and not _installed_once and os.environ.get("MILI_ALL_REDUCE") != "nccl"


def install(device: torch.device) -> None:
    """Set up the one-shot all-reduce and the sum buffers on this rank (collective: every rank of
    the group calls it)."""
    global _installed_once, _sum_buffers
    _installed_once = True
    set_fast_all_reduce(rendezvous(device))
    _sum_buffers = SumBuffers(dist.get_rank(), dist.get_world_size(), *_symmetric_buffer(device, SUM_BUFFER_BYTES // 2))


def uninstall() -> None:
    global _sum_buffers
    set_fast_all_reduce(None)
    _sum_buffers = None


def empty_sum_buffers() -> None:
    """Empty every rank's sum buffer (collective; nothing may run on any rank's GPU meanwhile).

    The protocol keeps a site's region empty until its sender's next push, provided each push
    runs once a step. Autotuning a pushing GEMV runs it many times: a late run may land in a
    peer's site after that peer has read and emptied it, and the peer's next read would take it
    for a new part. So after the warm-up that autotunes, every rank empties its buffer."""
    if _sum_buffers is None:
        return
    torch.cuda.synchronize(_sum_buffers.buffer.device)
    dist.barrier()  # no rank has a push in flight
    _sum_buffers.buffer.fill_(EMPTY_BITS)
    torch.cuda.synchronize(_sum_buffers.buffer.device)
    dist.barrier()  # every buffer is empty before any rank sends


def sum_sites(width: int, count: int) -> list[SumSite] | None:
    """`count` sum sites for rows of `width` elements where this process's group has sum buffers
    and MILI_FUSED_ALL_REDUCE is not 0; None otherwise (see SumBuffers.sites)."""
    if _sum_buffers is None or os.environ.get("MILI_FUSED_ALL_REDUCE", "1") == "0":
        return None
    return _sum_buffers.sites(width, count)
