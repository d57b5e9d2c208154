"""Launch-argument checks for the chapter 04 attention kernels (plumbing shared by stubs and references).

The kernels trust their pointers: a [T, D, H] tensor passed as [T, H, D], an int64 block table
read as int32, or a head_dim the tiles do not cover would give garbage, not an error. The public
ops call these checks first, so bad input fails loudly with the argument's name in the message.
Nothing here reads tensor *values* (that would synchronise with the GPU on every call): the
caller guarantees 0 < Lq <= Lk per sequence and block tables long enough for each context.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mili.kernels._checks import check_same_device, check_same_dtype, check_tensor

HEAD_DIMS = (16, 32, 64, 128, 256)  # tl.dot needs >= 16; one [BLOCK, D] tile per row block
SEQ_DTYPES = (torch.int32,)
SLOT_DTYPES = (torch.int32, torch.int64)


def check_head_dim(head_dim: int) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim={head_dim} is not supported by the attention kernels; "
                         f"use one of {', '.join(map(str, HEAD_DIMS))}")


def check_heads(num_q_heads: int, num_kv_heads: int) -> int:
    """Grouped-query attention: returns the group size Hq // Hkv."""
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        raise ValueError(f"the number of query heads ({num_q_heads}) must be a multiple of the number "
                         f"of key/value heads ({num_kv_heads})")
    return num_q_heads // num_kv_heads


def check_paged_cache(k_cache: Tensor, v_cache: Tensor) -> None:
    """k_cache, v_cache: [num_blocks, block_size, Hkv, D], same shape, each token's [Hkv, D] contiguous."""
    check_tensor("k_cache", k_cache, ndim=4)
    check_tensor("v_cache", v_cache, ndim=4)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have one shape")
    check_head_dim(k_cache.shape[3])


def check_block_table(name: str, block_table: Tensor, num_seqs: int) -> None:
    check_tensor(name, block_table, ndim=2, dtypes=SEQ_DTYPES)
    if block_table.shape[0] != num_seqs:
        raise ValueError(f"{name} needs one row per sequence ({num_seqs}), got shape {tuple(block_table.shape)}")
    if block_table.shape[1] == 0:
        raise ValueError(f"{name} has no columns: each sequence needs at least one block")


def check_varlen_args(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, block_table: Tensor | None) -> None:
    """The contract of flash_attn_varlen, contiguous (k, v [Tk, Hkv, D]) or paged (block_table given)."""
    check_tensor("q", q, ndim=3)
    check_tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=SEQ_DTYPES)
    check_tensor("cu_seqlens_k", cu_seqlens_k, ndim=1, dtypes=SEQ_DTYPES)
    if block_table is None:
        check_tensor("k", k, ndim=3)
        check_tensor("v", v, ndim=3)
        if k.shape != v.shape:
            raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
        check_same_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    else:
        check_paged_cache(k, v)
        check_block_table("block_table", block_table, cu_seqlens_q.shape[0] - 1)
        check_same_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                          block_table=block_table)
    check_same_dtype(q=q, k=k, v=v)
    check_head_dim(q.shape[2])
    if k.shape[-1] != q.shape[2]:
        raise ValueError(f"q and k need the same head_dim, got {q.shape[2]} and {k.shape[-1]}")
    check_heads(q.shape[1], k.shape[-2])
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.shape[0] < 2:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both be [B+1] with B >= 1, got "
                         f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}")
    if not 0 < max_seqlen_q <= max_seqlen_k:
        raise ValueError(f"need 0 < max_seqlen_q <= max_seqlen_k, got {max_seqlen_q} and {max_seqlen_k}")


def check_store_args(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """The contract of store_kvcache: k, v [T, Hkv, D] into caches [N, S, Hkv, D] at slot_mapping [T]."""
    check_tensor("k", k, ndim=3)
    check_tensor("v", v, ndim=3)
    check_tensor("k_cache", k_cache, ndim=4)
    check_tensor("v_cache", v_cache, ndim=4)
    check_tensor("slot_mapping", slot_mapping, ndim=1, dtypes=SLOT_DTYPES)
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    check_same_dtype(k=k, v=v)
    check_same_dtype(k_cache=k_cache, v_cache=v_cache)
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must have one shape")
    if tuple(k.shape[1:]) != tuple(k_cache.shape[2:]):
        raise ValueError(f"k is [T, Hkv, D] = {tuple(k.shape)} but the cache holds [Hkv, D] = "
                         f"{tuple(k_cache.shape[2:])} per token")
    if slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping needs one slot per token ({k.shape[0]}), got {slot_mapping.shape[0]}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not cache.is_contiguous():
            raise ValueError(f"{name} must be contiguous: a slot id addresses it as a flat [N*S, Hkv, D] array")


def check_decode_args(q: Tensor, k_cache: Tensor, v_cache: Tensor, context_lens: Tensor,
                      block_tables: Tensor) -> None:
    """The contract of paged_decode_attention: q [B, Hq, D], caches [N, S, Hkv, D], [B] lengths, [B, M] tables."""
    check_tensor("q", q, ndim=3)
    check_paged_cache(k_cache, v_cache)
    check_tensor("context_lens", context_lens, ndim=1, dtypes=SEQ_DTYPES)
    check_block_table("block_tables", block_tables, q.shape[0])
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, context_lens=context_lens, block_tables=block_tables)
    check_same_dtype(q=q, k_cache=k_cache, v_cache=v_cache)
    if context_lens.shape[0] != q.shape[0]:
        raise ValueError(f"context_lens needs one length per sequence ({q.shape[0]}), got {context_lens.shape[0]}")
    if k_cache.shape[3] != q.shape[2]:
        raise ValueError(f"q and the caches need the same head_dim, got {q.shape[2]} and {k_cache.shape[3]}")
    check_heads(q.shape[1], k_cache.shape[2])
