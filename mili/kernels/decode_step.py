"""The attention of one decoding token, from its qkv projection to its output (the engine's own).

At batch 1 a decode step of a small model is a chain of kernels, most of them tiny: each costs
its launch and a few dependent memory round trips, whatever little it computes. For one token,
attention is four of them in the exercises: the fused q/k norm + RoPE (2.4), the K/V store
(4.2), and split decode attention with its combine (4.4). `mili.engine.fused_step` runs the
batch-1 step with `attend_new_token` instead: one kernel for the first three, and one that
merges the splits. Its attention kernel reads the context's K/V before it waits for the qkv
GEMV, since earlier steps wrote them; that took a Qwen3-0.6B step from 0.90 to 0.86 ms of GPU
time on an H100 (benchmarks/batch-1-fusions-ab-h100.json). Reading its other inputs there too
(all but q, k and v) took Qwen3-8B from 4.055 to 4.033 ms on one H200, and from 2.478 to 2.442 on
two (benchmarks/tp-summing-norm-ab-h200/attention-inputs-early/). It gives the exercises' numbers (the
tests check it); the exercises stay the path of every other step.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel


@triton.jit
def _weight_halves(weight_ptr, half, half_dim):
    """A norm's weight [D] as its two halves, each [1, D/2] in float32."""
    return (tl.load(weight_ptr + half).to(tl.float32)[None, :],
            tl.load(weight_ptr + half_dim + half).to(tl.float32)[None, :])


@triton.jit
def _normed_rotated(x1, x2, w1, w2, cos, sin, half_dim, eps, dtype):
    """RMSNorm over head_dim of heads given as halves [heads, D/2] x 2 (its weight's halves w1, w2),
    then RoPE, rounded where rms_norm and apply_rope round (the normalised value, its product with
    the weight, the rotation)."""
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half_dim) + eps)[:, None]
    n1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    n2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    return (n1 * cos - n2 * sin).to(dtype), (n2 * cos + n1 * sin).to(dtype)


@triton.jit
def _kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, page_size, kv_head, n, in_split,
             NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The keys and values of tokens n [BLOCK_N] (those in_split; zeros elsewhere) of one KV head."""
    page = tl.load(block_table_ptr + n // page_size, mask=in_split, other=0).to(tl.int64)
    at = ((page * page_size + n % page_size) * NUM_KV_HEADS + kv_head) * HEAD_DIM
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(k_cache_ptr + at[:, None] + d[None, :], mask=in_split[:, None], other=0.0)
    v = tl.load(v_cache_ptr + at[:, None] + d[None, :], mask=in_split[:, None], other=0.0)
    return k, v


@triton.jit
def _halves_joined(x1, x2, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """[ROWS, D/2] x 2 -> [ROWS, D]: the two halves of each head side by side again."""
    return tl.reshape(tl.permute(tl.join(x1, x2), (0, 2, 1)), (ROWS, HEAD_DIM))


@triton.jit
def _new_token_attention_kernel(
    qkv_ptr,                                        # reads qkv [1, (Hq + 2·Hkv)·D]
    q_weight_ptr, k_weight_ptr,                     # reads [D] each
    positions_ptr, slot_ptr,                        # reads positions [1], slot_mapping [1]
    cos_sin_ptr, cos_sin_stride,                    # reads cos_sin_cache [P, D]
    k_cache_ptr, v_cache_ptr,                       # reads the context's K/V, writes the new token's slot
    context_lens_ptr, block_table_ptr, page_size,   # reads context_lens [1], block_tables[0]
    out_ptr, partial_out_ptr, partial_lse_ptr,      # writes out [Hq, D], or partials [Hq, NUM_SPLITS, (D)]
    eps, qk_scale,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    """One program: one KV head, one split of the context, all the query heads of that KV head.

    Only the new token's q, k and v come from the kernel before it (the qkv GEMV); the step's
    inputs, the norms' weights, the RoPE table and the context's K/V come from earlier steps or
    from before the step. So before the dependent wait the program reads all of those: its
    position's cos/sin, the weights, the slot, the context length, its block-table entries and its
    first K/V tile, and the loads that make attention a chain of memory round trips overlap the
    qkv GEMV still running. After the wait it reads qkv, normalises and rotates its q heads and
    the new k (as exercise 2.4 does), stores the new k and v from the program whose split holds
    the new token, and uses them in place of that slot's stale contents.
    """
    GROUP: tl.constexpr = NUM_Q_HEADS // NUM_KV_HEADS
    HEAD_DIM: tl.constexpr = 2 * HALF
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    context_len = tl.load(context_lens_ptr)
    tokens_per_split = tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, context_len)
    n = lo + tl.arange(0, BLOCK_N)
    k, v = _kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, page_size, kv_head, n, n < hi, NUM_KV_HEADS, HEAD_DIM)
    half = tl.arange(0, HALF)
    row = cos_sin_ptr + tl.load(positions_ptr).to(tl.int64) * cos_sin_stride
    cos = tl.load(row + half)[None, :]
    sin = tl.load(row + HALF + half)[None, :]
    q_w1, q_w2 = _weight_halves(q_weight_ptr, half, HALF)
    k_w1, k_w2 = _weight_halves(k_weight_ptr, half, HALF)
    slot = tl.load(slot_ptr)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)

    dtype = qkv_ptr.dtype.element_ty
    r = tl.arange(0, GROUP_PAD)  # the query heads of this KV head, padded for tl.dot
    row_ok = r < GROUP
    q_offs = (kv_head * GROUP + r)[:, None] * HEAD_DIM + half[None, :]
    k_offs = (NUM_Q_HEADS + kv_head) * HEAD_DIM + half[None, :]
    d = tl.arange(0, HEAD_DIM)
    # q, k and v asked for together, before any of them is used
    q_x1 = tl.load(qkv_ptr + q_offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    q_x2 = tl.load(qkv_ptr + q_offs + HALF, mask=row_ok[:, None], other=0.0).to(tl.float32)
    k_x1 = tl.load(qkv_ptr + k_offs).to(tl.float32)
    k_x2 = tl.load(qkv_ptr + k_offs + HALF).to(tl.float32)
    new_v = tl.load(qkv_ptr + (NUM_Q_HEADS + NUM_KV_HEADS + kv_head) * HEAD_DIM + d)[None, :].to(v_cache_ptr.dtype.element_ty)
    q1, q2 = _normed_rotated(q_x1, q_x2, q_w1, q_w2, cos, sin, HALF, eps, dtype)
    q = _halves_joined(q1, q2, GROUP_PAD, HEAD_DIM)
    k1, k2 = _normed_rotated(k_x1, k_x2, k_w1, k_w2, cos, sin, HALF, eps, dtype)
    new_k = _halves_joined(k1, k2, 1, HEAD_DIM).to(k_cache_ptr.dtype.element_ty)
    new_token = context_len - 1
    if lo <= new_token and new_token < hi and slot >= 0:  # slot -1: a padding row, nothing stored
        at = (slot * NUM_KV_HEADS + kv_head) * HEAD_DIM + d[None, :]
        tl.store(k_cache_ptr + at, new_k)
        tl.store(v_cache_ptr + at, new_v)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):  # k, v hold the tile of tokens n = start + [0, BLOCK_N)
        is_new = (n == new_token)[:, None]
        k = tl.where(is_new, new_k, k)
        v = tl.where(is_new, new_v, v)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where((n < hi)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
        n += BLOCK_N
        k, v = _kv_tile(k_cache_ptr, v_cache_ptr, block_table_ptr, page_size, kv_head, n, n < hi,
                        NUM_KV_HEADS, HEAD_DIM)

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    head = kv_head * GROUP + r
    if NUM_SPLITS == 1:
        tl.store(out_ptr + head[:, None] * HEAD_DIM + d[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])
    else:
        part = head * NUM_SPLITS + split
        tl.store(partial_out_ptr + part[:, None] * HEAD_DIM + d[None, :], out, mask=row_ok[:, None])
        lse = m_i + tl.math.log2(tl.where(nonempty, l_i, 1.0))
        tl.store(partial_lse_ptr + part, tl.where(nonempty, lse, float("-inf")), mask=row_ok)


@triton.jit
def _merge_splits_kernel(partial_out_ptr, partial_lse_ptr, out_ptr,
                         NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                         DEPENDENT_LAUNCH: tl.constexpr):
    """One program per query head: out[h] = the splits' outputs weighted by 2^(lse - max lse)."""
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    head = tl.program_id(0)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(partial_lse_ptr + head * NUM_SPLITS + s, mask=s < NUM_SPLITS, other=float("-inf"))
    weight = tl.math.exp2(lse - tl.max(lse, 0))
    parts = tl.load(partial_out_ptr + (head * NUM_SPLITS + s)[:, None] * HEAD_DIM + d[None, :],
                    mask=(s < NUM_SPLITS)[:, None], other=0.0)
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(out_ptr + head * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))


LOG2E = 1.4426950408889634
MAX_SPLITS = 32
PROGRAMS_PER_SM = 4


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _attention_tiling(device: torch.device, num_kv_heads: int, max_context: int) -> tuple[int, dict]:
    """(splits, tile): exercise 4.4's split of a context, so the two give the same numbers."""
    if device.type != "cuda":  # the interpreter: small tiles, so tiny tests cross several splits and tiles
        tile, most = {"BLOCK_N": 16, "num_warps": 4}, triton.cdiv(max_context, 32)
        target = 1 << 30
    else:
        tile, most = {"BLOCK_N": 64, "num_warps": 4}, triton.cdiv(max_context, 64)
        target = PROGRAMS_PER_SM * _num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(triton.cdiv(target, num_kv_heads), MAX_SPLITS, most)), tile


def takes_heads(num_q_heads: int, num_kv_heads: int, head_dim: int) -> bool:
    """Whether attend_new_token takes these heads: power-of-two head counts and D/2 (the sizes of
    its tl.arange ranges), D even."""
    return head_dim % 2 == 0 and all(n > 0 and n & (n - 1) == 0 for n in (num_q_heads, num_kv_heads, head_dim // 2))


def _new_token_heads(qkv: Tensor, k_cache: Tensor, v_cache: Tensor) -> tuple[int, int, int]:
    """(Hq, Hkv, D) of one token's qkv row and the caches, or a ValueError saying what is wrong."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    if qkv.dim() != 2 or qkv.shape[0] != 1 or not qkv.is_contiguous() or num_q_heads < 1:
        raise ValueError(f"qkv must be one contiguous row [1, (Hq + 2·Hkv)·D] with D={head_dim}, "
                         f"Hkv={num_kv_heads}, got {tuple(qkv.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the new token's kernels need contiguous caches")
    if not takes_heads(num_q_heads, num_kv_heads, head_dim):
        raise ValueError(f"the new token's kernels need power-of-two head counts and D/2, got Hq={num_q_heads}, "
                         f"Hkv={num_kv_heads}, D={head_dim}")
    return num_q_heads, num_kv_heads, head_dim


def attend_new_token(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, positions: Tensor,
                     cos_sin_cache: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor,
                     context_lens: Tensor, block_tables: Tensor, softmax_scale: float) -> Tensor:
    """One decoding token's attention, from its qkv projection to its output, in two launches.

    qkv: [1, (Hq + 2·Hkv)·D], contiguous (q heads, then k heads, then v heads) · q_weight, k_weight: [D]
    positions [1], slot_mapping [1] (-1: store nothing), context_lens [1] int32 (the new token
    included), block_tables [1, max_blocks] int32 · cos_sin_cache [P, D] float32 ·
    k_cache, v_cache: [N, S, Hkv, D], contiguous.
    Does what qk_norm_rope, store_kvcache and paged_decode_attention do, with the same numbers: q
    and k normalised and rotated, the token's k and v stored in its slot, and softmax(q·Kᵀ·scale)·V
    over the context. Hq and Hkv must be powers of two and D even. Returns out [1, Hq, D] in qkv's dtype.
    Memory: reads the context's K/V once, 2·L·Hkv·D elements, and qkv; writes one slot and out
    (and the splits' float32 partials, Hq·splits·(D + 1)).
    """
    num_q_heads, num_kv_heads, head_dim = _new_token_heads(qkv, k_cache, v_cache)
    if context_lens.shape != (1,) or block_tables.dim() != 2 or block_tables.shape[0] != 1 \
            or not block_tables.is_contiguous():
        raise ValueError(f"attend_new_token takes one sequence: context_lens [1] and a contiguous block_tables "
                         f"[1, max_blocks], got {tuple(context_lens.shape)} and {tuple(block_tables.shape)}")
    page_size = k_cache.shape[1]
    splits, tile = _attention_tiling(qkv.device, num_kv_heads, block_tables.shape[1] * page_size)
    out = torch.empty(1, num_q_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    partial_out = partial_lse = out  # unused with one split
    if splits > 1:
        partial_out = torch.empty(num_q_heads, splits, head_dim, dtype=torch.float32, device=qkv.device)
        partial_lse = torch.empty(num_q_heads, splits, dtype=torch.float32, device=qkv.device)
    launch = dependent_launch_options(qkv.device)
    _new_token_attention_kernel[(num_kv_heads, splits)](
        qkv, q_weight, k_weight, positions, slot_mapping, cos_sin_cache, cos_sin_cache.stride(0), k_cache, v_cache,
        context_lens, block_tables, page_size, out, partial_out, partial_lse, eps, softmax_scale * LOG2E,
        NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_dim // 2,
        GROUP_PAD=max(16, num_q_heads // num_kv_heads), NUM_SPLITS=splits,
        DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32", **tile, **launch)
    if splits > 1:
        _merge_splits_kernel[(num_q_heads,)](partial_out, partial_lse, out, NUM_SPLITS=splits,
                                             SPLITS_PAD=triton.next_power_of_2(splits), HEAD_DIM=head_dim, **launch)
    return out
