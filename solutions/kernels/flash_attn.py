"""Reference for exercises 4.1 and 4.3 (mirrors mili/kernels/flash_attn.py).

One kernel serves both: `PAGED` (a compile-time flag) says whether keys and values come from
packed [Tk, Hkv, D] tensors or from the paged cache through a block table.
"""

import torch
from torch import Tensor

from mili.kernels._triton import tl, triton

LOG2E = 1.4426950408889634  # softmax in base 2: exp(x) = exp2(x * log2(e)), and exp2 is one instruction


@triton.jit
def _kv_offsets(seq, kv_head, n, k_start, block_table_ptr, stride_bt, page_size,
                stride_kb, stride_kt, stride_kh, PAGED: tl.constexpr):
    """Element offsets of key rows `n` (positions in the sequence) of one KV head: [BLOCK_N]."""
    if PAGED:
        page = tl.load(block_table_ptr + seq * stride_bt + n // page_size).to(tl.int64)
        return page * stride_kb + (n % page_size) * stride_kt + kv_head * stride_kh
    else:
        return (k_start + n).to(tl.int64) * stride_kt + kv_head * stride_kh


@triton.jit
def _attend(acc, m_i, l_i, q, k_ptr, v_ptr, seq, kv_head, k_start, seqlen_k, shift, offs_m, lo, hi,
            block_table_ptr, stride_bt, page_size, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt,
            stride_vh, qk_scale,
            MASKED: tl.constexpr, CAUSAL: tl.constexpr, PAGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over key tiles [lo, hi): MASKED tiles check causality and the sequence end."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        in_seq = n < seqlen_k
        if MASKED:
            n = tl.where(in_seq, n, 0)  # keep block-table reads in range; these columns are masked below
        k_off = _kv_offsets(seq, kv_head, n, k_start, block_table_ptr, stride_bt, page_size,
                            stride_kb, stride_kt, stride_kh, PAGED)
        v_off = _kv_offsets(seq, kv_head, n, k_start, block_table_ptr, stride_bt, page_size,
                            stride_vb, stride_vt, stride_vh, PAGED)
        if MASKED:
            k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :], mask=in_seq[:, None], other=0.0)
        else:
            k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :])
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
        if MASKED:
            visible = in_seq[None, :]
            if CAUSAL:
                visible = visible & ((start + tl.arange(0, BLOCK_N))[None, :] <= offs_m[:, None] + shift)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=in_seq[:, None], other=0.0)
        else:
            v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


# the block table's width and the count of query tiles change from step to step: without
# do_not_specialize Triton would compile the kernel again mid-run the first time either is 1 or
# a multiple of 16 (mili.kernels._triton.watch_compiles)
@triton.jit(do_not_specialize=["stride_bt", "num_m_blocks"])
def _flash_attn_varlen_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, block_table_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,  # *_b: per cache block (paged only)
    stride_bt, page_size, num_m_blocks, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, PAGED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: BLOCK_M queries of one sequence and one query head.

    Reads its q tile once and the visible K/V tiles of its KV head; writes its out tile once.
    """
    m_block = num_m_blocks - 1 - tl.program_id(0)  # causal: the longest rows start first
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    seqlen_q = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    k_start = tl.load(cu_seqlens_k_ptr + seq)
    seqlen_k = tl.load(cu_seqlens_k_ptr + seq + 1) - k_start
    m0 = m_block * BLOCK_M
    if m0 >= seqlen_q:
        return
    shift = seqlen_k - seqlen_q  # queries are the last seqlen_q positions: query i sees keys j <= i + shift

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seqlen_q
    q_rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        full_end = (m0 + shift + 1) // BLOCK_N * BLOCK_N  # tiles every row of this block sees in full
        hi = tl.minimum(m0 + BLOCK_M + shift, seqlen_k)
    else:
        full_end = seqlen_k // BLOCK_N * BLOCK_N
        hi = seqlen_k
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_ptr, v_ptr, seq, kv_head, k_start, seqlen_k, shift, offs_m,
                            0, full_end, block_table_ptr, stride_bt, page_size, stride_kb, stride_kt,
                            stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
                            False, CAUSAL, PAGED, DOT_PRECISION, HEAD_DIM, BLOCK_N)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_ptr, v_ptr, seq, kv_head, k_start, seqlen_k, shift, offs_m,
                            full_end, hi, block_table_ptr, stride_bt, page_size, stride_kb, stride_kt,
                            stride_kh, stride_vb, stride_vt, stride_vh, qk_scale,
                            True, CAUSAL, PAGED, DOT_PRECISION, HEAD_DIM, BLOCK_N)
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _prefill_launch_config(q: Tensor) -> dict:
    """Tile sizes: big tiles feed the tensor cores on a GPU; small ones exercise every loop on a CPU."""
    head_dim = q.shape[2]
    if q.device.type != "cuda":
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)
    if q.dtype == torch.float32 or head_dim > 128:
        return dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    if head_dim == 128:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)


def _launch_flash_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, block_table, causal, softmax_scale):
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    paged = block_table is not None
    out = torch.empty_like(q)
    config = _prefill_launch_config(q)
    num_m_blocks = triton.cdiv(max_seqlen_q, config["BLOCK_M"])
    grid = (num_m_blocks, cu_seqlens_q.shape[0] - 1, num_q_heads)
    # contiguous k, v [Tk, Hkv, D] are addressed like a paged cache made of one block
    kb, kt, kh = (k.stride(0), k.stride(1), k.stride(2)) if paged else (0, k.stride(0), k.stride(1))
    vb, vt, vh = (v.stride(0), v.stride(1), v.stride(2)) if paged else (0, v.stride(0), v.stride(1))
    _flash_attn_varlen_kernel[grid](
        q, k, v, out, cu_seqlens_q, cu_seqlens_k, block_table if paged else cu_seqlens_q,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        kb, kt, kh, vb, vt, vh,
        block_table.stride(0) if paged else 0, k.shape[1] if paged else 1, num_m_blocks,
        softmax_scale * LOG2E,
        GROUP=num_q_heads // k.shape[-2], HEAD_DIM=head_dim, CAUSAL=causal, PAGED=paged,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **config,
    )
    return out


def flash_attn_varlen_contiguous(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                                 max_seqlen_q: int, max_seqlen_k: int, *, causal: bool,
                                 softmax_scale: float) -> Tensor:
    """FlashAttention forward over a packed batch of variable-length sequences (exercise 4.1).

    q: [Tq, Hq, D] · k, v: [Tk, Hkv, D] (fp16/bf16/fp32, last dimension contiguous, any row stride)
    cu_seqlens_q, cu_seqlens_k: [B+1] int32 prefix sums: sequence b owns query rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1] and key rows cu_seqlens_k[b]:cu_seqlens_k[b+1]
    (Lq <= Lk; max_seqlen_q/k bound them and size the launch grid).
    Returns a new [Tq, Hq, D] tensor in q's dtype:
        out[i, h] = softmax(q[i, h] · k[:, h // (Hq // Hkv)]ᵀ · softmax_scale) · v[:, h // (Hq // Hkv)]
    over the keys of i's own sequence; with `causal`, query i of a sequence sees key j only when
    j <= i + (Lk - Lq) (the queries are the last Lq positions). Online softmax in float32; never
    materialise the [Lq, Lk] score matrix. The arguments are already checked by flash_attn_varlen.
    Memory: reads q and, per query tile, the K/V tiles it sees; writes out once.
    """
    return _launch_flash_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, None, causal, softmax_scale)


def flash_attn_varlen_paged(q: Tensor, k_cache: Tensor, v_cache: Tensor, cu_seqlens_q: Tensor,
                            cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, block_table: Tensor,
                            *, causal: bool, softmax_scale: float) -> Tensor:
    """FlashAttention forward whose keys and values live in the paged KV cache (exercise 4.3).

    As exercise 4.1, except that k_cache, v_cache are [num_blocks, block_size, Hkv, D] and
    block_table [B, max_blocks] (int32, -1 padded) lists each sequence's cache blocks in order:
    key position j of sequence b is slot j % block_size of block block_table[b, j // block_size].
    cu_seqlens_k counts each sequence's whole context (cached prefix + the new tokens, whose K/V
    store_kvcache has already written), so Lk - Lq is the cached prefix length and query i
    sees keys j <= i + (Lk - Lq). Returns a new [Tq, Hq, D] tensor in q's dtype.
    """
    return _launch_flash_attn(q, k_cache, v_cache, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, block_table,
                              causal, softmax_scale)

