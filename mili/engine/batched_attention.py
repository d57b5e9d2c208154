"""Attention for a whole engine batch, for the `torch` backend.

The torch backend attends sequence by sequence (a Python loop: clear, and the baseline the
Triton kernels beat); an engine step holds up to hundreds of sequences. Same signatures and
results as `mili.backends.torch_ops`, arranged for the engine:

- decode on the CPU: `DecodeKV` (decode_kv.py) keeps each decoding sequence's keys and values
  contiguous across steps, so a step reads them once instead of gathering them from the blocks;
- decode on a GPU: every sequence's keys and values gathered into one padded [B, L, Hkv, D]
  tensor and one `scaled_dot_product_attention` call with a padding mask (few launches);
- prefill: one causal SDPA per sequence (few of them per step).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from mili.backends import Backend, get_backend, torch_ops
from mili.engine.decode_kv import DecodeKV

MAX_PADDED_SCORES = 1 << 24  # B · Hq · max_q · max_k elements (64 MiB of float32) before falling back
DECODE_BUCKET = 8  # decode sequences per padded call: fewer padded keys, a few more calls


def _gather_padded(cache: Tensor, block_tables: Tensor, max_len: int) -> Tensor:
    """[B, max_len, Hkv, D] keys (or values) of B sequences from a paged cache [N, S, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-max_len // block_size)
    tables = block_tables[:, :num_blocks].clamp_min(0).long()
    # index_select copies whole blocks: several times faster on the CPU than cache[tables]
    gathered = cache.index_select(0, tables.flatten())
    return gathered.view(tables.shape[0], num_blocks * block_size, *cache.shape[2:])[:, :max_len]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D], mask [B, Lq, Lk] (True = attend) -> [B, Lq, Hq, D].

    The query heads that share a key/value head become extra query rows of that head, so keys and
    values are never repeated per query head.
    """
    batch, len_q, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    rows = q.reshape(batch, len_q, kv_heads, group, head_dim).permute(0, 2, 1, 3, 4).reshape(
        batch, kv_heads, len_q * group, head_dim)
    out = F.scaled_dot_product_attention(rows.float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
                                         attn_mask=mask.repeat_interleave(group, dim=1).unsqueeze(1), scale=scale)
    out = out.reshape(batch, kv_heads, len_q, group, head_dim).permute(0, 2, 1, 3, 4)
    return out.reshape(batch, len_q, heads, head_dim).to(q.dtype)


def paged_decode_attention(q, k_cache, v_cache, context_lens, block_tables, *, softmax_scale=None,
                           batch_rows=None) -> Tensor:
    """The GPU decode path: padded batches of sequences of similar length (batch_rows: unused)."""
    batch, _, head_dim = q.shape
    scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
    if batch < 2 * DECODE_BUCKET:
        return _decode_padded(q, k_cache, v_cache, context_lens, block_tables, scale)
    # sequences sorted by length, in buckets: each is padded to its own longest, not the batch's
    order = context_lens.argsort()
    out = torch.empty_like(q)
    for rows in order.split(DECODE_BUCKET):
        out[rows] = _decode_padded(q[rows], k_cache, v_cache, context_lens[rows], block_tables[rows], scale)
    return out


def _decode_padded(q, k_cache, v_cache, context_lens, block_tables, scale: float) -> Tensor:
    batch, heads, _ = q.shape
    max_len = int(context_lens.max())
    if batch * heads * max_len > MAX_PADDED_SCORES:
        return torch_ops.paged_decode_attention(q, k_cache, v_cache, context_lens, block_tables, softmax_scale=scale)
    k = _gather_padded(k_cache, block_tables, max_len)
    v = _gather_padded(v_cache, block_tables, max_len)
    mask = torch.arange(max_len, device=q.device).unsqueeze(0) < context_lens.unsqueeze(1)  # [B, L]
    return _attend(q.unsqueeze(1), k, v, mask.unsqueeze(1), scale).squeeze(1)


def flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                      causal=True, softmax_scale=None, block_table=None, decode=paged_decode_attention) -> Tensor:
    if not causal:
        return torch_ops.flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                           causal=causal, softmax_scale=softmax_scale, block_table=block_table)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if block_table is None:
        return _fresh_prompts(q, k, v, cu_seqlens_q.tolist(), scale)
    # a mixed step: decodes (one query each) go through the batched decode path, chunks one by one
    starts_q, k_lens = cu_seqlens_q.tolist(), cu_seqlens_k.diff().tolist()
    out = torch.empty_like(q)
    decodes = [b for b in range(len(k_lens)) if starts_q[b + 1] - starts_q[b] == 1]
    if decodes:
        rows = torch.tensor([starts_q[b] for b in decodes], device=q.device)
        chosen = torch.tensor(decodes, device=q.device)
        out[rows] = decode(q[rows], k, v, cu_seqlens_k.diff()[chosen], block_table[chosen],
                           softmax_scale=scale, batch_rows=decodes)
    for b in sorted(set(range(len(k_lens))) - set(decodes)):
        lo, hi, k_len = starts_q[b], starts_q[b + 1], k_lens[b]
        keys = _gather_padded(k, block_table[b:b + 1], k_len)
        values = _gather_padded(v, block_table[b:b + 1], k_len)
        query_pos = torch.arange(hi - lo, device=q.device).unsqueeze(1) + (k_len - (hi - lo))
        mask = torch.arange(k_len, device=q.device).unsqueeze(0) <= query_pos  # [Lq, Lk], bottom-right causal
        out[lo:hi] = _attend(q[lo:hi].unsqueeze(0), keys, values, mask.unsqueeze(0), scale).squeeze(0)
    return out


def _fresh_prompts(q: Tensor, k: Tensor, v: Tensor, starts: list[int], scale: float) -> Tensor:
    """Prompts with nothing cached: one causal SDPA per sequence (no mask tensor: its fast path)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k.shape[1]
    for lo, hi in itertools.pairwise(starts):
        qs = q[lo:hi].transpose(0, 1).float()
        ks = k[lo:hi].repeat_interleave(group, dim=1).transpose(0, 1).float()
        vs = v[lo:hi].repeat_interleave(group, dim=1).transpose(0, 1).float()
        out[lo:hi] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1)
    return out


def engine_backend(name: str, device: torch.device | str) -> Backend:
    """The backend the engine runs with: wherever it takes attention from the torch backend's
    per-sequence loop, these ops stand in (kernels, where a backend has them, stay). On the CPU
    its decode attention belongs to a fresh `DecodeKV`, which `decode_kv_of` finds again."""
    backend = get_backend(name, device)
    decode = DecodeKV().paged_decode_attention if torch.device(device).type == "cpu" else paged_decode_attention
    swaps = {}
    if backend.paged_decode_attention is torch_ops.paged_decode_attention:
        swaps["paged_decode_attention"] = decode
    if backend.flash_attn_varlen is torch_ops.flash_attn_varlen:
        def flash_attn_varlen_with_decode(*args, **kwargs):
            return flash_attn_varlen(*args, decode=decode, **kwargs)

        swaps["flash_attn_varlen"] = flash_attn_varlen_with_decode
    return replace(backend, **swaps)


def decode_kv_of(backend: Backend) -> DecodeKV | None:
    """The `DecodeKV` behind a backend made by `engine_backend`, if it has one."""
    owner = getattr(backend.paged_decode_attention, "__self__", None)
    return owner if isinstance(owner, DecodeKV) else None
