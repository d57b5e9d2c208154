"""The chapter 04 graders' oracle and inputs: attention per sequence in float32, an explicit mask.

Deliberately the slowest, plainest formulation (a [Hq, Lq, Lk] score matrix per sequence), so
it shares nothing with the kernels it grades.
"""

from __future__ import annotations

import torch

from mili.testing import generator_for, randn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels' inputs; the interpreter runs on the CPU


def attention_oracle(q, k, v, *, causal: bool, scale: float) -> torch.Tensor:
    """One sequence: q [Lq, Hq, D], k, v [Lk, Hkv, D] -> [Lq, Hq, D] float32."""
    group = q.shape[1] // k.shape[1]
    qf = q.float()
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", qf, kf) * scale
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        query_pos = torch.arange(lq, device=q.device).unsqueeze(1) + (lk - lq)  # queries are the last lq positions
        key_pos = torch.arange(lk, device=q.device).unsqueeze(0)
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), vf)


def varlen_oracle(q, k_per_seq, v_per_seq, cu_seqlens_q, *, causal=True, scale=None) -> torch.Tensor:
    """Packed queries [Tq, Hq, D] against each sequence's own keys (lists of [Lk, Hkv, D])."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    bounds = cu_seqlens_q.tolist()
    return torch.cat([attention_oracle(q[lo:hi], k, v, causal=causal, scale=scale)
                      for lo, hi, k, v in zip(bounds[:-1], bounds[1:], k_per_seq, v_per_seq)])


def cumulative(lengths: list[int]) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEVICE)


def random_block_tables(context_lens: list[int], block_size: int, name: str, spare_blocks: int = 3):
    """Shuffled, non-overlapping block lists per sequence, -1 padded: [B, max_blocks] int32 and num_blocks."""
    needed = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(needed) + spare_blocks
    order = torch.randperm(num_blocks, generator=generator_for(name + "/blocks")).tolist()
    width = max(needed)
    rows, used = [], 0
    for n in needed:
        rows.append(order[used:used + n] + [-1] * (width - n))
        used += n
    return torch.tensor(rows, dtype=torch.int32, device=DEVICE), num_blocks


def fill_paged_cache(per_seq, block_tables, num_blocks, block_size, name: str):
    """A cache [num_blocks, block_size, Hkv, D] of random values holding each sequence's tokens."""
    hkv, d = per_seq[0].shape[1:]
    cache = randn(num_blocks, block_size, hkv, d, name=name + "/cache", dtype=per_seq[0].dtype,
                  device=per_seq[0].device)
    for seq, table in zip(per_seq, block_tables.tolist()):
        for j in range(seq.shape[0]):
            cache[table[j // block_size], j % block_size] = seq[j]
    return cache
