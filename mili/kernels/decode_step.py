"""The engine's own kernels for a batch-1 decode step on a GPU, each doing the work of two.

At batch 1 a decode step of a small model is a chain of about ten kernels per layer, most of
them tiny: each costs its launch and a few dependent memory round trips, whatever little it
computes. `mili.engine.fused_step` runs the step with these kernels (and the fused forms of
the GEMV in linear.py), six per layer:

    qk_norm_rope_store   q/k RMSNorm + RoPE (exercise 2.4) and the K/V store (exercise 4.2)
    decode_attention     split-K decode attention (exercise 4.4) that combines its own splits:
                         the last program of a head to finish adds the splits' partial results,
                         so there is no second kernel

They give the numbers of the exercises' reference kernels they replace (the tests check it);
the exercises stay the path of every other step.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel

LOG2E = 1.4426950408889634
PROGRAMS_PER_SM = 4  # enough loads in flight to keep HBM busy
MAX_SPLITS = 32


@triton.jit
def _normed_rotated(x1, x2, weight_ptr, cos, sin, half, half_dim, eps, dtype):
    """RMSNorm over head_dim of heads given as halves [heads, D/2] x 2, then RoPE; rounded as
    rms_norm then apply_rope round (normalised value, times weight, rotated in float32)."""
    w1 = tl.load(weight_ptr + half).to(tl.float32)[None, :]
    w2 = tl.load(weight_ptr + half_dim + half).to(tl.float32)[None, :]
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half_dim) + eps)[:, None]
    n1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    n2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    return (n1 * cos - n2 * sin).to(dtype), (n2 * cos + n1 * sin).to(dtype)


@triton.jit
def _qk_norm_rope_store_kernel(
    qkv_ptr,                                        # reads qkv [1, (Hq + 2·Hkv)·D]; writes q back in place
    q_weight_ptr, k_weight_ptr,                     # reads [D] each
    positions_ptr, slot_ptr,                        # reads positions [1], slot_mapping [1]
    cos_sin_ptr, cos_sin_stride,                    # reads cos_sin_cache [P, D]
    k_cache_ptr, v_cache_ptr,                       # writes one slot of each [N, S, Hkv, D] (contiguous)
    eps,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    dtype = qkv_ptr.dtype.element_ty
    half = tl.arange(0, HALF)
    head_dim = 2 * HALF
    q_offs = tl.arange(0, NUM_Q_HEADS)[:, None] * head_dim + half[None, :]
    kv_offs = tl.arange(0, NUM_KV_HEADS)[:, None] * head_dim + half[None, :]
    k_ptr = qkv_ptr + NUM_Q_HEADS * head_dim
    v_ptr = k_ptr + NUM_KV_HEADS * head_dim
    row = cos_sin_ptr + tl.load(positions_ptr).to(tl.int64) * cos_sin_stride
    cos = tl.load(row + half)[None, :]
    sin = tl.load(row + HALF + half)[None, :]
    q1, q2 = _normed_rotated(tl.load(qkv_ptr + q_offs).to(tl.float32), tl.load(qkv_ptr + q_offs + HALF).to(tl.float32),
                             q_weight_ptr, cos, sin, half, HALF, eps, dtype)
    k1, k2 = _normed_rotated(tl.load(k_ptr + kv_offs).to(tl.float32), tl.load(k_ptr + kv_offs + HALF).to(tl.float32),
                             k_weight_ptr, cos, sin, half, HALF, eps, dtype)
    tl.store(qkv_ptr + q_offs, q1)
    tl.store(qkv_ptr + q_offs + HALF, q2)
    slot = tl.load(slot_ptr)
    if slot >= 0:  # -1: a padding row, nothing stored
        at = slot * (NUM_KV_HEADS * head_dim) + kv_offs
        tl.store(k_cache_ptr + at, k1.to(k_cache_ptr.dtype.element_ty))
        tl.store(k_cache_ptr + at + HALF, k2.to(k_cache_ptr.dtype.element_ty))
        v = tl.load(v_ptr + kv_offs)
        tl.store(v_cache_ptr + at, v.to(v_cache_ptr.dtype.element_ty))
        tl.store(v_cache_ptr + at + HALF, tl.load(v_ptr + kv_offs + HALF).to(v_cache_ptr.dtype.element_ty))


def qk_norm_rope_store(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, positions: Tensor,
                       cos_sin_cache: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> Tensor:
    """One token's attention inputs from its qkv projection, in one launch.

    qkv: [1, (Hq + 2·Hkv)·D], contiguous (q heads, then k heads, then v heads) · q_weight, k_weight: [D]
    positions [1], slot_mapping [1] (-1: store nothing) · cos_sin_cache [P, D] float32 ·
    k_cache, v_cache: [N, S, Hkv, D], contiguous. Normalises and rotates q in place (qk_norm_rope),
    and writes the normalised, rotated k and the v of the token into its slot (store_kvcache).
    Hq and Hkv must be powers of two and D even. Returns q as a [1, Hq, D] view of qkv.
    Memory: reads and writes (Hq + 2·Hkv)·D elements.
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    if qkv.dim() != 2 or qkv.shape[0] != 1 or not qkv.is_contiguous() or num_q_heads < 1:
        raise ValueError(f"qkv must be one contiguous row [1, (Hq + 2·Hkv)·D] with D={head_dim}, "
                         f"Hkv={num_kv_heads}, got {tuple(qkv.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("qk_norm_rope_store needs contiguous caches")
    if any(n & (n - 1) for n in (num_q_heads, num_kv_heads, head_dim // 2)):
        raise ValueError(f"qk_norm_rope_store needs power-of-two head counts and D/2, got Hq={num_q_heads}, "
                         f"Hkv={num_kv_heads}, D={head_dim}")
    _qk_norm_rope_store_kernel[(1,)](
        qkv, q_weight, k_weight, positions, slot_mapping, cos_sin_cache, cos_sin_cache.stride(0), k_cache, v_cache,
        eps, NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_dim // 2,
        num_warps=4, **dependent_launch_options(qkv.device))
    return qkv[:, :num_q_heads * head_dim].view(1, num_q_heads, head_dim)


@triton.jit(do_not_specialize=["stride_bt"])  # the block table's width changes from step to step
def _decode_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, context_lens_ptr, block_tables_ptr,   # reads
    out_ptr, partial_out_ptr, partial_lse_ptr, arrivals_ptr,              # writes (arrivals: back to 0)
    stride_qb, stride_qh, stride_ob, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, page_size, qk_scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    """One program: one sequence, one KV head, one split of its context, all GROUP query heads.

    The lengths and block tables are the step's inputs, copied in before its first kernel, so they
    are read before waiting for the previous kernel: the first page ids are at hand when q is.
    Each program writes its split's normalised partial output and log-sum-exp (base 2), then
    counts itself in arrivals[sequence, KV head]; the program that arrives last reads every
    split's partials, writes the combined output and sets the count back to 0 for the next launch.
    """
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    context_len = tl.load(context_lens_ptr + seq)
    tokens_per_split = tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    splits_used = tl.cdiv(context_len, tokens_per_split)
    lo = split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, context_len)
    table = block_tables_ptr + seq * stride_bt
    n = lo + tl.arange(0, BLOCK_N)
    page = tl.load(table + n // page_size, mask=n < hi, other=0).to(tl.int64)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)

    r = tl.arange(0, GROUP_PAD)  # rows: the query heads of this KV head (padded for tl.dot)
    d = tl.arange(0, HEAD_DIM)
    head = kv_head * GROUP + r
    row_ok = r < GROUP
    q = tl.load(q_ptr + seq * stride_qb + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        in_ctx = n < hi
        slot = n % page_size
        k = tl.load(k_cache_ptr + (page * stride_kb + slot * stride_kt + kv_head * stride_kh)[:, None] + d[None, :],
                    mask=in_ctx[:, None], other=0.0)
        v = tl.load(v_cache_ptr + (page * stride_vb + slot * stride_vt + kv_head * stride_vh)[:, None] + d[None, :],
                    mask=in_ctx[:, None], other=0.0)
        n += BLOCK_N  # the next tile's page ids load while this tile is computed
        page = tl.load(table + n // page_size, mask=n < hi, other=0).to(tl.int64)
        s = tl.where(in_ctx[None, :], tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    out_rows = out_ptr + seq * stride_ob + head[:, None] * stride_oh + d[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_rows, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        parts = (seq * num_kv_heads * GROUP + head) * NUM_SPLITS  # [B, Hq, NUM_SPLITS] row of each head
        if split < splits_used:
            tl.store(partial_out_ptr + (parts + split)[:, None] * HEAD_DIM + d[None, :], acc / l_i[:, None],
                     mask=row_ok[:, None])
            tl.store(partial_lse_ptr + parts + split, m_i + tl.math.log2(l_i), mask=row_ok)
        tl.debug_barrier()  # every thread's partials are written before the count says so
        arrivals = arrivals_ptr + seq * num_kv_heads + kv_head
        if tl.atomic_add(arrivals, 1, sem="acq_rel", scope="gpu") == NUM_SPLITS - 1:
            s = tl.arange(0, NUM_SPLITS)
            used = s < splits_used
            for g in tl.static_range(GROUP):
                first = (seq * num_kv_heads * GROUP + kv_head * GROUP + g) * NUM_SPLITS
                lse = tl.load(partial_lse_ptr + first + s, mask=used, other=float("-inf"), cache_modifier=".cg")
                weight = tl.math.exp2(lse - tl.max(lse, 0))
                part = tl.load(partial_out_ptr + (first + s)[:, None] * HEAD_DIM + d[None, :],
                               mask=used[:, None], other=0.0, cache_modifier=".cg")
                combined = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)
                tl.store(out_ptr + seq * stride_ob + (kv_head * GROUP + g) * stride_oh + d,
                         combined.to(out_ptr.dtype.element_ty))
            tl.atomic_xchg(arrivals, 0)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, context_lens: Tensor, block_tables: Tensor,
                     arrivals: Tensor, *, softmax_scale: float | None = None) -> Tensor:
    """paged_decode_attention (exercise 4.4) in one launch: the splits combine themselves.

    q: [B, Hq, D] · k_cache, v_cache: [N, S, Hkv, D] · context_lens [B] int32 (each >= 1) ·
    block_tables [B, M] int32 · arrivals: int32, at least B·Hkv zeros, owned by the caller and
    left zero by every launch (one buffer serves every layer: the launches run one after another).
    Returns [B, Hq, D] in q's dtype.
    Memory: reads 2·ΣL·Hkv·D elements of K/V; writes B·Hq·D (and the float32 partials).
    """
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    if arrivals.dtype != torch.int32 or arrivals.numel() < batch * num_kv_heads:
        raise ValueError(f"arrivals must be at least {batch * num_kv_heads} int32 zeros, got "
                         f"{arrivals.numel()} {arrivals.dtype}")
    if head_dim & (head_dim - 1):
        raise ValueError(f"decode_attention needs a power-of-two head_dim, got {head_dim}")
    scale = float(softmax_scale) if softmax_scale is not None else head_dim ** -0.5
    max_context = block_tables.shape[1] * page_size
    if q.device.type == "cuda":
        tile = dict(BLOCK_N=64, num_warps=4, num_stages=2)
        target = PROGRAMS_PER_SM * _num_sms(q.device.index if q.device.index is not None else 0)
    else:  # the interpreter: tiny tiles, so that small tests cross several splits
        tile, target = dict(BLOCK_N=16, num_warps=4, num_stages=1), 1 << 30
    num_splits = max(1, min(triton.cdiv(target, batch * num_kv_heads), MAX_SPLITS,
                            triton.cdiv(max_context, tile["BLOCK_N"])))
    num_splits = triton.next_power_of_2(num_splits)  # the combine reads the splits as one tile
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    partial_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
    partial_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    _decode_attention_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, context_lens, block_tables, out, partial_out, partial_lse, arrivals,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), page_size, scale * LOG2E,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        NUM_SPLITS=num_splits, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **dependent_launch_options(q.device), **tile,
    )
    return out
