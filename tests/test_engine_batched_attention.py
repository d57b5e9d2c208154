"""The engine's batched attention ops give the torch backend's per-sequence results."""

import pytest
import torch

from mili.backends import torch_ops
from mili.engine import batched_attention
from mili.model.metadata import pad_block_tables
from mili.testing import assert_close, randn

BLOCK, KV_HEADS, HEADS, DIM = 4, 2, 8, 16


def paged(name: str, lengths: list[int]):
    num_blocks = sum(-(-n // BLOCK) for n in lengths) + 3
    k_cache, v_cache = randn(num_blocks, BLOCK, KV_HEADS, DIM, name=name + "k"), randn(num_blocks, BLOCK, KV_HEADS, DIM, name=name + "v")
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(len(lengths))).tolist()
    tables, start = [], 0
    for n in lengths:
        count = -(-n // BLOCK)
        tables.append(order[start:start + count])
        start += count
    return k_cache, v_cache, pad_block_tables(tables, "cpu")


@pytest.mark.parametrize("lengths", [[1, 5, 13, 8, 32], [3 * i % 41 + 1 for i in range(37)]])
def test_decode_matches_the_per_sequence_loop(lengths):
    k_cache, v_cache, tables = paged("decode", lengths)
    q = randn(len(lengths), HEADS, DIM)
    context = torch.tensor(lengths, dtype=torch.int32)
    got = batched_attention.paged_decode_attention(q, k_cache, v_cache, context, tables)
    assert_close(got, torch_ops.paged_decode_attention(q, k_cache, v_cache, context, tables), what="batched decode")


@pytest.mark.parametrize("paged_prefix", [False, True])
def test_varlen_prefill_matches_the_per_sequence_loop(paged_prefix):
    q_lens = [3, 1, 7, 2]
    k_lens = [5, 1, 13, 2] if paged_prefix else q_lens
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = randn(sum(q_lens), HEADS, DIM)
    if paged_prefix:
        k, v, tables = paged("prefill", k_lens)
    else:
        k, v, tables = randn(sum(k_lens), KV_HEADS, DIM, name="k"), randn(sum(k_lens), KV_HEADS, DIM, name="v"), None
    args = (q, k, v, cu_q, cu_k, max(q_lens), max(k_lens))
    got = batched_attention.flash_attn_varlen(*args, block_table=tables)
    assert_close(got, torch_ops.flash_attn_varlen(*args, block_table=tables), what="batched varlen prefill")


def test_engine_backend_swaps_only_the_torch_attention():
    backend = batched_attention.engine_backend("torch", "cpu")
    assert backend.paged_decode_attention is batched_attention.paged_decode_attention
    assert backend.rms_norm is torch_ops.rms_norm
