"""Paged decode attention in Triton, split over the context (chapter 04, exercise 4.4).

At decode each sequence brings one query token and attends to its whole cached context, so the
kernel does about G = Hq / Hkv flops per byte of K/V it reads (2 to 8 for Qwen3): it is
memory-bound, and its speed is the bytes of K/V over the memory bandwidth. Two ideas get it there: every query head of a KV group is served
from one read of that group's K/V (grouped-query attention), and long contexts are split across
programs (split-K) whose partial results a second, tiny pass combines, so that even a batch of
one sequence fills the GPU.
Memory: reads 2·ΣL·Hkv·D elements of K/V and q; writes B·Hq·D (plus small float32 partials).
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._triton import tl, triton  # noqa: F401
from mili.kernels.attention_checks import check_decode_args  # noqa: F401


@exercise("4.4", "Paged decode attention (split-K)")
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
    raise NotImplementedError("Exercise 4.4: see chapters/04_attention.ipynb, section 7")
