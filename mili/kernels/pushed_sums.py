"""Sums over the GPUs of a tensor-parallel group, through buffers that every rank writes into.

Under tensor parallelism each rank computes a partial sum of a row (the o and down projections)
and the ranks add them up. At batch 1 the row is a few kilobytes, so the sum costs its latency,
not its bytes. PyTorch's symmetric memory maps one buffer of every GPU into the address space of
each: a kernel can store straight into a peer's memory. Both users of that here share the rule
of this module: an element of a buffer that holds the bit pattern of -0.0 (`EMPTY_BITS`) has
not arrived yet; a sender writes -0.0 as +0.0, and a receiver reads an element again until it
is no longer -0.0 (`arrived`). A 2-byte store is never torn, so every element that has arrived
is complete, and no barrier is needed: the receiver waits for exactly the data it reads.

- `mili.distributed.one_shot`: an all-reduce kernel of its own (push, wait, sum, empty), with
  the helpers below.
- `mili.kernels.linear` with a `SumSite`: the o/down GEMV pushes its partial products to every
  rank (`linear_to_sum`), and `site_add_rms_norm` here, one small kernel, waits for them, sums
  them, adds the residual and normalises: the next layer's pre-norm, which the batch-1 step
  needs anyway, does the all-reduce's work, and the qkv or gate_up GEMV after it reads an
  ordinary row. That GEMV once summed the parts itself, as it read its input (Qwen3-8B at TP=2
  on two H200s: 2.57-2.58 ms against 2.63-2.65 with all-reduce kernels,
  benchmarks/tp-sums-in-gemvs-ab-h200/), but each of its programs then read every rank's part
  of the row, which at Qwen3-32B shapes cost 1 ms a step: the norm kernel took 32B from 9.34 to
  8.56 ms and left 8B as it was (benchmarks/tp-32b-switches-h200/). Reading every part at once,
  rather than one rank's after another, then took 8B from 2.58 to 2.49 ms
  (benchmarks/tp-summing-norm-ab-h200/). The final norm sums the last down projection the same way.
  The norm does not wait for the pushing kernel: 2.480 to 2.462 ms over four alternating rounds
  (benchmarks/tp-summing-norm-ab-h200/reader-empties/), when it still emptied its site itself;
  the GEMV after it, which waits for it anyway, now empties the site instead (the final norm,
  which no GEMV of the step follows, still empties its own), so the one-program
  kernel that the whole step waits for stores only its outputs: 2.475 to 2.404 ms over three
  rounds (benchmarks/tp-gemv-empties-ab-h200/).
- `embedding_to_sum` here: a vocabulary-parallel embedding's lookup (the row, or zeros where
  another rank holds the token) pushed the same way, for the first layer's norm to sum.

A rank that never sends (it died, or hangs) would leave the others waiting forever, out of reach
of NCCL's abort; so a kernel that has waited `timeout_ns` aborts (a CUDA error in its process,
which the engine reports like any failed rank) instead of hanging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel

EMPTY_BITS = -32768  # 0x8000 as int16: the bits of -0.0, which no element sent carries
EMPTY = tl.constexpr(EMPTY_BITS)


@triton.jit
def abort_kernel():
    """End the kernel with an error (PTX `trap`): the process's next CUDA call raises."""
    tl.inline_asm_elementwise("trap; mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def buffer_of(addresses_ptr, rank):
    """Rank `rank`'s buffer, an int16 pointer, from the addresses [world] int64. It is 16-byte
    aligned (symmetric memory is), which the compiler cannot know of a loaded address: told so, it
    reads and writes 8 elements per instruction instead of one, which for a polling read, each
    waiting for the last, is the difference between a few and a few dozen microseconds."""
    return tl.multiple_of(tl.load(addresses_ptr + rank).to(tl.pointer_type(tl.int16)), 16)


@triton.jit
def sendable(bits):
    """The int16 bits of 2-byte floats to send: -0.0 (the empty marker) sent as +0.0."""
    return tl.where(bits == EMPTY, 0, bits)


@triton.jit
def arrived(at, mask, timeout_ns, WATCHDOG: tl.constexpr):
    """The int16 elements at `at` (where mask), a block of any shape, read again until none of
    them is empty. WATCHDOG (GPUs): abort the kernel after waiting timeout_ns."""
    bits = tl.load(at, mask=mask, other=0, volatile=True)
    if WATCHDOG:
        waiting_since = tl.extra.cuda.globaltimer()
    while tl.max((bits == EMPTY).to(tl.int32)) > 0:  # over every axis: `at` may be a block of rows
        bits = tl.load(at, mask=mask, other=0, volatile=True)
        if WATCHDOG:
            if tl.extra.cuda.globaltimer() - waiting_since > timeout_ns:
                abort_kernel()
    return bits


@dataclass(frozen=True)
class SumSite:
    """Where one row of `width` elements is summed over the ranks, in every rank's sum buffer.

    Each rank's buffer (int16, all EMPTY_BITS while nothing is in flight) holds `sites` sites of
    `world` regions of `width` elements: site s, sender r at element (s·world + r)·width.
    addresses: [world] int64 on the device, every rank's buffer address, in rank order.

    A call site of the decode step owns a site: its GEMV writes its partial products into region
    [site][rank] of every rank's buffer, and the next kernel (`site_add_rms_norm`) waits for all
    the regions of [site] in its own buffer and adds them in rank order (in float32, rounded once:
    every rank gets the same bits); it, or the GEMV after it, empties them again. The sites are
    used in a fixed order, every step, and a peer writes a site again only a step later, after
    this rank has pushed a later site, which its kernels do after the emptying kernel has
    finished (each waits for the one before): with two sites or more, a region is empty again
    before it is rewritten.
    """

    addresses: Tensor
    rank: int
    world: int
    width: int
    site: int
    timeout_ns: int

    @property
    def ranks(self) -> dict:
        """The constexprs of a kernel that pushes to or sums at the site (`rank_constexprs`)."""
        return rank_constexprs(self.rank, self.world)


def rank_constexprs(rank: int, world: int) -> dict:
    """The constexprs of a kernel that pushes to or sums over every rank's buffer: RANK, WORLD and
    SENDERS (WORLD rounded up to a power of two, the rows of a block that holds every rank's part)."""
    return {"RANK": rank, "WORLD": world, "SENDERS": triton.next_power_of_2(world)}


@triton.jit
def site_sum(own, width, site, offs, mask, timeout_ns, dtype: tl.constexpr, WORLD: tl.constexpr,
             SENDERS: tl.constexpr, WATCHDOG: tl.constexpr):
    """Elements offs (where mask) of the row summed at `site`, from this rank's buffer `own`
    (`buffer_of`): the ranks' parts added in rank order in float32 and rounded once to dtype, as
    float32. Every part is requested at once, as one block [SENDERS, len(offs)] (SENDERS: WORLD
    rounded up to a power of two), and read again until all of it has arrived: one trip to memory
    where the parts are there, where reading them one after another would wait for each in turn."""
    senders = tl.arange(0, SENDERS)[:, None]
    parts = arrived(own + (site * WORLD + senders) * width + offs[None, :], (senders < WORLD) & mask[None, :],
                    timeout_ns, WATCHDOG).to(dtype, bitcast=True).to(tl.float32)
    total = tl.sum(tl.where(senders == 0, parts, 0.0), 0)  # one part plus zeros: exact in any order
    for sender in tl.static_range(1, WORLD):
        total += tl.sum(tl.where(senders == sender, parts, 0.0), 0)
    return total.to(dtype).to(tl.float32)


@triton.jit
def every_buffer(addresses_ptr, WORLD: tl.constexpr, SENDERS: tl.constexpr):
    """Every rank's buffer, a column [SENDERS, 1] of int16 pointers in rank order (SENDERS: WORLD
    rounded up to a power of two; the rows from WORLD on are null, to be masked off), aligned as
    `buffer_of` says. The addresses never change: a kernel reads them before its dependent wait,
    so that its pushes do not wait for them after its products."""
    ranks = tl.arange(0, SENDERS)
    addresses = tl.load(addresses_ptr + ranks, mask=ranks < WORLD, other=0)
    return tl.multiple_of(addresses.to(tl.pointer_type(tl.int16)), 16)[:, None]


@triton.jit
def push_to_site(buffers, width, site, offs, mask, values, RANK: tl.constexpr, WORLD: tl.constexpr,
                 SENDERS: tl.constexpr):
    """Write values (2-byte floats, elements offs where mask) into region [site][RANK] of every
    rank's buffer (buffers: `every_buffer`). A pushing GEMV or embedding writes nothing else: the
    summing norm after it relies on that (`_site_add_rms_norm_kernel`)."""
    bits = sendable(values.to(tl.int16, bitcast=True))[None, :]
    ranks = tl.arange(0, SENDERS)[:, None]
    tl.store(buffers + (site * WORLD + RANK) * width + offs[None, :], bits, mask=(ranks < WORLD) & mask[None, :])


@triton.jit
def empty_site(own, width, site, offs, mask, WORLD: tl.constexpr, SENDERS: tl.constexpr):
    """Empty elements offs (where mask) of every region of `site` in this rank's buffer (own:
    `buffer_of`), once they have been read."""
    senders = tl.arange(0, SENDERS)[:, None]
    tl.store(own + (site * WORLD + senders) * width + offs[None, :], tl.full((SENDERS, offs.shape[0]), EMPTY, tl.int16),
             mask=(senders < WORLD) & mask[None, :])


@triton.jit(do_not_specialize=["sum_site"])
def _site_add_rms_norm_kernel(sum_addresses_ptr, sum_site, width, res_ptr, norm_w_ptr, out_ptr, res_out_ptr, eps,
                              timeout_ns, BLOCK: tl.constexpr, ADDS: tl.constexpr, EMPTIES: tl.constexpr,
                              RANK: tl.constexpr, WORLD: tl.constexpr, SENDERS: tl.constexpr,
                              WATCHDOG: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr):
    """One program: the row summed at sum_site (ADDS: plus the residual), rounded as the norm GEMV
    rounds it, into res_out, and its RMSNorm into out; EMPTIES: the site emptied again (else the
    GEMV after it empties it).

    The kernel is a chain of dependent steps on one SM, so it asks for everything it reads at
    once, and it never waits for the kernel before it (it lets the next one launch at once).
    That is safe because that kernel is the pushing one: it writes nothing but its parts, which
    carry their own arrival, and it pushes each only after all the reads it is made of, so once
    every part has arrived it reads nothing the outputs here might overwrite. Everything else
    read here (the residual, the norm's weight, the buffers' addresses) was written before it
    started: it passed its own wait, and the kernels before it had finished."""
    h = tl.arange(0, BLOCK)
    ok = h < width
    if DEPENDENT_LAUNCH:
        tl.extra.cuda.gdc_launch_dependents()
    norm_w = tl.load(norm_w_ptr + h, mask=ok, other=0.0).to(tl.float32)
    own = buffer_of(sum_addresses_ptr, RANK)
    dtype = out_ptr.dtype.element_ty
    if ADDS:
        residual = tl.load(res_ptr + h, mask=ok, other=0.0).to(tl.float32)
    row = site_sum(own, width, sum_site, h, ok, timeout_ns, dtype, WORLD, SENDERS, WATCHDOG)
    if EMPTIES:
        empty_site(own, width, sum_site, h, ok, WORLD, SENDERS)
    if ADDS:
        row = (row + residual).to(dtype).to(tl.float32)
    tl.store(res_out_ptr + h, row.to(dtype), mask=ok)
    rstd = tl.rsqrt(tl.sum(row * row, 0) / width + eps)
    tl.store(out_ptr + h, ((row * rstd).to(dtype).to(tl.float32) * norm_w).to(dtype), mask=ok)


def site_add_rms_norm(site: SumSite, residual: Tensor | None, norm_weight: Tensor,
                      eps: float, empty: bool = True) -> tuple[Tensor, Tensor]:
    """The row summed over the ranks at `site` (as the one-shot all-reduce sums it), plus the
    residual where there is one, and its RMSNorm: (out [1, H], residual_out [1, H]), what
    fused_add_rms_norm (or rms_norm, residual None) gives for the summed row, with the same
    roundings. One small kernel waits for the parts, so the GEMV after it reads an ordinary row.
    empty: the kernel empties the site once read; False leaves that to the GEMV that reads `out`
    (`linear(out, weight, empties=site)`), off this one-program kernel, which the step waits for.
    Memory: reads W·H elements of the site (+ H of the residual) and H of norm_weight, writes 2·H
    (and empties the W·H of the site)."""
    if norm_weight.shape != (site.width,) or norm_weight.element_size() != 2:
        raise ValueError(f"site_add_rms_norm: norm_weight must be [{site.width}] (the site's width) of 2-byte "
                         f"floats, got {tuple(norm_weight.shape)} {norm_weight.dtype}")
    if residual is not None and (residual.shape != (1, site.width) or residual.dtype != norm_weight.dtype
                                 or not residual.is_contiguous()):
        raise ValueError(f"site_add_rms_norm: residual must be a contiguous [1, {site.width}] row of "
                         f"{norm_weight.dtype}, got {tuple(residual.shape)} {residual.dtype}")
    out = torch.empty(1, site.width, dtype=norm_weight.dtype, device=norm_weight.device)
    residual_out = torch.empty_like(out)
    cuda = norm_weight.device.type == "cuda"
    _site_add_rms_norm_kernel[(1,)](
        site.addresses, site.site, site.width, residual if residual is not None else out, norm_weight, out,
        residual_out, eps, site.timeout_ns, BLOCK=triton.next_power_of_2(site.width), ADDS=residual is not None,
        EMPTIES=empty, **site.ranks, WATCHDOG=cuda, num_warps=8 if cuda else 1,
        **dependent_launch_options(norm_weight.device))
    return out, residual_out


@triton.jit(do_not_specialize=["sum_site"])
def _embedding_to_sum_kernel(ids_ptr, w_ptr, width, stride_w, first_row, num_rows, sum_addresses_ptr, sum_site,
                             BLOCK: tl.constexpr, RANK: tl.constexpr, WORLD: tl.constexpr,
                             SENDERS: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr):
    """One program: elements [pid·BLOCK, +BLOCK) of the embedding of token ids[0], where this rank
    holds rows [first_row, first_row + num_rows) of the table (zeros for any other token)."""
    buffers = every_buffer(sum_addresses_ptr, WORLD, SENDERS)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < width
    local = tl.load(ids_ptr) - first_row
    held = (local >= 0) & (local < num_rows)
    read = offs < tl.where(held, width, 0)  # nothing where another rank holds the token
    row = tl.load(w_ptr + tl.where(held, local, 0).to(tl.int64) * stride_w + offs, mask=read, other=0.0)
    push_to_site(buffers, width, sum_site, offs, ok, row, RANK, WORLD, SENDERS)


def embedding_to_sum(input_ids: Tensor, weight: Tensor, first_row: int, site: SumSite) -> SumSite:
    """This rank's part of the embedding of one token, input_ids [1], from its rows [first_row,
    first_row + R) of the table, weight [R, H]: the token's row if it holds it, else zeros, pushed
    into every rank's sum buffer at `site`, as `linear_to_sum` pushes a product. Returns the site:
    `site_add_rms_norm` sums it as the one-shot all-reduce would (one row plus zeros), so the
    embedding needs no all-reduce kernel.
    Memory: reads H elements (none when another rank holds the token), writes H on each of the
    W ranks."""
    if (input_ids.shape != (1,) or input_ids.dtype not in (torch.int32, torch.int64) or weight.dim() != 2
            or weight.shape[1] != site.width or weight.stride(1) != 1 or weight.element_size() != 2
            or input_ids.device != weight.device):
        raise ValueError(f"embedding_to_sum takes one token id [1] and a table [R, {site.width}] (the site's width) "
                         f"of 2-byte floats on its device, got ids {tuple(input_ids.shape)} {input_ids.dtype} "
                         f"and table {tuple(weight.shape)} {weight.dtype}")
    block = min(1024, triton.next_power_of_2(site.width))
    _embedding_to_sum_kernel[(triton.cdiv(site.width, block),)](
        input_ids, weight, site.width, weight.stride(0), first_row, weight.shape[0], site.addresses, site.site,
        BLOCK=block, **site.ranks, **dependent_launch_options(weight.device))
    return site
