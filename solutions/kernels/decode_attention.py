"""Reference for exercise 4.4 (mirrors mili/kernels/decode_attention.py)."""

import functools

import torch
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel
from mili.kernels.attention_checks import check_decode_args

LOG2E = 1.4426950408889634
PROGRAMS_PER_SM = 4  # enough loads in flight to keep HBM busy
MAX_SPLITS = 32  # past this, combining the partial results costs more than the parallelism wins
DECODE_TILE = dict(BLOCK_N=64, num_warps=4, num_stages=2)  # per program: BLOCK_N tokens of K and V per step
# num_stages=2 beat 3 on every decode shape swept on an H200 (benchmarks/attention-h200-tuning.json)


@triton.jit(do_not_specialize=["stride_bt"])  # the block table's width changes from step to step
def _paged_decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, context_lens_ptr, block_tables_ptr,
    out_ptr, partial_out_ptr, partial_lse_ptr,
    stride_qb, stride_qh, stride_ob, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_bt, page_size, qk_scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    """One program: one sequence, one KV head, one split of its context, all GROUP query heads.

    The splits divide this sequence's own context (read here, not fixed at launch: a launch
    recorded in a CUDA graph serves every context length), whole BLOCK_N tiles each; splits past
    the context are empty. Reads the split's K/V tiles once (shared by the group's heads); writes
    the normalised output directly when there is one split, else a float32 partial output and its
    log-sum-exp (base 2).
    """
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    tokens_per_split = tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * tokens_per_split
    hi = tl.minimum(lo + tokens_per_split, context_len)

    r = tl.arange(0, GROUP_PAD)  # rows: the query heads of this KV head (padded for tl.dot)
    d = tl.arange(0, HEAD_DIM)
    head = kv_head * GROUP + r
    row_ok = r < GROUP
    q = tl.load(q_ptr + seq * stride_qb + head[:, None] * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    table = block_tables_ptr + seq * stride_bt
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        in_ctx = n < hi
        n = tl.where(in_ctx, n, lo)  # keep block-table reads in range
        page = tl.load(table + n // page_size).to(tl.int64)
        slot = n % page_size
        k = tl.load(k_cache_ptr + (page * stride_kb + slot * stride_kt + kv_head * stride_kh)[:, None] + d[None, :],
                    mask=in_ctx[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(in_ctx[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + (page * stride_vb + slot * stride_vt + kv_head * stride_vh)[:, None] + d[None, :],
                    mask=in_ctx[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new

    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + seq * stride_ob + head[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        part = (seq * GROUP * tl.num_programs(1) + head) * NUM_SPLITS + split  # [B, Hq, NUM_SPLITS]
        tl.store(partial_out_ptr + part[:, None] * HEAD_DIM + d[None, :], out, mask=row_ok[:, None])
        lse = m_i + tl.math.log2(tl.where(nonempty, l_i, 1.0))
        tl.store(partial_lse_ptr + part, tl.where(nonempty, lse, float("-inf")), mask=row_ok)


@triton.jit
def _combine_splits_kernel(partial_out_ptr, partial_lse_ptr, out_ptr, num_q_heads, stride_ob, stride_oh,
                           NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                           DEPENDENT_LAUNCH: tl.constexpr):
    """One program per (sequence, query head): reads its NUM_SPLITS partials, writes one output row.

    Each split's output is already normalised by its own sum; weighting it by 2^(lse - max lse)
    and dividing by the weights' sum gives the softmax over the whole context.
    """
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    row = tl.program_id(0)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    ok = s < NUM_SPLITS
    lse = tl.load(partial_lse_ptr + row * NUM_SPLITS + s, mask=ok, other=float("-inf"))
    weight = tl.math.exp2(lse - tl.max(lse, 0))
    parts = tl.load(partial_out_ptr + (row * NUM_SPLITS + s)[:, None] * HEAD_DIM + d[None, :],
                    mask=ok[:, None], other=0.0)
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
    seq, head = row // num_q_heads, row % num_q_heads
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _decode_launch_config(q: Tensor, num_kv_heads: int, max_context: int) -> dict:
    """Split each context so that B·Hkv·splits programs fill the GPU (at most MAX_SPLITS splits)."""
    if q.device.type != "cuda":  # the interpreter: tiny tiles and a few splits, so small tests cross both
        tile, target = dict(BLOCK_N=16, num_warps=4, num_stages=1), 1 << 30
        most = min(MAX_SPLITS, triton.cdiv(max_context, 32))
    else:
        tile = DECODE_TILE
        target = PROGRAMS_PER_SM * _num_sms(q.device.index if q.device.index is not None else 0)
        most = min(MAX_SPLITS, triton.cdiv(max_context, tile["BLOCK_N"]))
    splits = max(1, min(triton.cdiv(target, q.shape[0] * num_kv_heads), most))
    return dict(num_splits=splits, **tile)


def paged_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, context_lens: Tensor,
                           block_tables: Tensor, *, softmax_scale: float | None = None) -> Tensor:
    """Attention of one new query token per sequence over its paged context (split-K decode).

    q: [B, Hq, D] (fp16/bf16/fp32) · k_cache, v_cache: [num_blocks, block_size, Hkv, D], same dtype
    context_lens: [B] int32, each >= 1 (the tokens each query attends to, its own included)
    block_tables: [B, max_blocks] int32, -1 padded: key position j of sequence b is slot
    j % block_size of block block_tables[b, j // block_size].
    softmax_scale defaults to 1/sqrt(D). Returns a new [B, Hq, D] tensor in q's dtype:
        out[b, h] = softmax(q[b, h] · K_bᵀ · scale) · V_b with K_b, V_b the first context_lens[b]
        keys/values of KV head h // (Hq // Hkv) (no causal mask: the query is the last position).
    Design: one program per (sequence, KV head, split of the context) computes all Hq // Hkv query
    heads of that KV head from one read of its K/V; a second pass combines the splits' partial
    outputs through their log-sum-exp. The number of splits is fixed at launch; each program
    divides its own sequence's context_len among them (so a CUDA graph serves every length). Bad input raises: call check_decode_args first.
    Memory: reads the KV of every context token once, 2·ΣL·Hkv·D elements; that is the floor.
    """
    check_decode_args(q, k_cache, v_cache, context_lens, block_tables)
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads, page_size = k_cache.shape[2], k_cache.shape[1]
    scale = float(softmax_scale) if softmax_scale is not None else head_dim ** -0.5
    out = torch.empty_like(q)
    if batch == 0:
        return out
    config = _decode_launch_config(q, num_kv_heads, block_tables.shape[1] * page_size)
    num_splits = config.pop("num_splits")
    group = num_q_heads // num_kv_heads
    launch = dependent_launch_options(q.device)
    partial_out = partial_lse = out  # unused when there is a single split
    if num_splits > 1:
        partial_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        partial_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    _paged_decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, context_lens, block_tables, out, partial_out, partial_lse,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), page_size, scale * LOG2E,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        NUM_SPLITS=num_splits, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **launch, **config,
    )
    if num_splits > 1:
        _combine_splits_kernel[(batch * num_q_heads,)](
            partial_out, partial_lse, out, num_q_heads, out.stride(0), out.stride(1),
            NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits), HEAD_DIM=head_dim,
            **launch,
        )
    return out
