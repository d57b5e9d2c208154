"""The `torch` backend: every op in plain PyTorch, built on chapter 01's exercises.

Runs anywhere (CPU, CUDA, MPS). Attention gathers each sequence's keys and values and calls
exercise 1.3 once per sequence: simple and exact, and the baseline the Triton kernels beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mili.model.attention import gqa_causal_attention
from mili.model.norm import rms_norm
from mili.model.rope import apply_rope

__all__ = ["linear", "rms_norm", "fused_add_rms_norm", "apply_rope", "qk_norm_rope", "silu_and_mul", "store_kvcache",
           "flash_attn_varlen", "paged_decode_attention"]


def linear(x: Tensor, weight: Tensor) -> Tensor:
    return F.linear(x, weight)


def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    residual_out = x + residual
    return rms_norm(residual_out, weight, eps), residual_out


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, positions: Tensor,
                 cos_sin_cache: Tensor) -> tuple[Tensor, Tensor]:
    return apply_rope(rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps), positions, cos_sin_cache)


def silu_and_mul(x: Tensor) -> Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def store_kvcache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write k, v [T, Hkv, D] to the flat slots `slot_mapping` [T] of the paged caches (-1: skip)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def gather_paged(cache: Tensor, block_table: Tensor, length: int) -> Tensor:
    """The first `length` tokens of one sequence from a paged cache [N, S, Hkv, D] -> [length, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = (length + block_size - 1) // block_size
    # index_select copies whole blocks: several times faster on the CPU than cache[block_table]
    return cache.index_select(0, block_table[:num_blocks].long()).flatten(0, 1)[:length]


def _scale(q: Tensor, softmax_scale: float | None) -> float:
    return softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      causal=True, softmax_scale=None, block_table=None) -> Tensor:
    if not causal:
        raise NotImplementedError("the torch backend implements causal attention only")
    scale = _scale(q, softmax_scale)
    out = torch.empty_like(q)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(starts_q) - 1):
        q_lo, q_hi = starts_q[i], starts_q[i + 1]
        k_len = starts_k[i + 1] - starts_k[i]
        if block_table is None:
            ks, vs = k[starts_k[i]:starts_k[i + 1]], v[starts_k[i]:starts_k[i + 1]]
        else:
            ks, vs = gather_paged(k, block_table[i], k_len), gather_paged(v, block_table[i], k_len)
        out[q_lo:q_hi] = gqa_causal_attention(q[q_lo:q_hi], ks, vs, scale)
    return out


def paged_decode_attention(q, k_cache, v_cache, context_lens, block_tables, *, softmax_scale=None) -> Tensor:
    scale = _scale(q, softmax_scale)
    out = torch.empty_like(q)
    for i, length in enumerate(context_lens.tolist()):
        ks = gather_paged(k_cache, block_tables[i], length)
        vs = gather_paged(v_cache, block_tables[i], length)
        out[i : i + 1] = gqa_causal_attention(q[i : i + 1], ks, vs, scale)
    return out
