"""FlashAttention prefill in Triton: packed variable-length batches, causal, GQA, paged (chapter 04).

Exercises 4.1 (keys and values packed like the queries) and 4.3 (keys and values read from the
paged KV cache through a block table) are two launchers of one idea: each program holds a tile
of queries, streams the key/value tiles it may see through an online softmax in float32, and
writes its output tile once. The [Lq, Lk] score matrix never reaches memory.
Memory: reads q once and each visible K/V tile once per query tile; writes out once.

`flash_attn_varlen` is the op the `triton` backend exposes (signature in mili/backends): it checks
the arguments, resolves the softmax scale and calls the exercise that matches its inputs.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._triton import tl, triton  # noqa: F401
from mili.kernels.attention_checks import check_varlen_args


def flash_attn_varlen(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = True,
                      softmax_scale: float | None = None, block_table: Tensor | None = None) -> Tensor:
    """Attention of packed queries [Tq, Hq, D] over contiguous k, v [Tk, Hkv, D] (exercise 4.1) or,
    with `block_table` [B, max_blocks], over the paged caches k, v [num_blocks, block_size, Hkv, D]
    (exercise 4.3). softmax_scale defaults to 1/sqrt(D). Returns [Tq, Hq, D] in q's dtype.
    """
    check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table)
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[2] ** -0.5
    if block_table is None:
        return flash_attn_varlen_contiguous(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                            causal=causal, softmax_scale=scale)
    return flash_attn_varlen_paged(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                                   causal=causal, softmax_scale=scale)


@exercise("4.1", "FlashAttention prefill (varlen, causal, GQA)")
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
    raise NotImplementedError("Exercise 4.1: see chapters/04_attention.ipynb, section 4")


@exercise("4.3", "Paged prefill over a cached prefix")
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
    raise NotImplementedError("Exercise 4.3: see chapters/04_attention.ipynb, section 6")
