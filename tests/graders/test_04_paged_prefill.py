"""Grader for exercise 4.3 (prefill whose keys and values come from the paged cache).

Oracle: gather each sequence's context from the cache in Python, then per-sequence attention in
float32 with an explicit causal mask aligned to the end of the context.
"""

import pytest
import torch

from mili.kernels.flash_attn import flash_attn_varlen
from mili.testing import assert_close, randn

from .attention_oracle import (
    DEVICE,
    cumulative,
    fill_paged_cache,
    random_block_tables,
    varlen_oracle,
)

pytestmark = pytest.mark.exercise("4.3")

HINT = ("key position j of sequence b is at block block_table[b, j // block_size], offset j % block_size; "
        "the new queries are the last Lq of the Lk context positions")


def run_paged(query_lens, context_lens, hq, hkv, head_dim, block_size, dtype, name):
    ks = [randn(n, hkv, head_dim, dtype=dtype, name=f"{name}/k{i}", device=DEVICE) for i, n in enumerate(context_lens)]
    vs = [randn(n, hkv, head_dim, dtype=dtype, name=f"{name}/v{i}", device=DEVICE) for i, n in enumerate(context_lens)]
    tables, num_blocks = random_block_tables(context_lens, block_size, name)
    k_cache = fill_paged_cache(ks, tables, num_blocks, block_size, name + "/k")
    v_cache = fill_paged_cache(vs, tables, num_blocks, block_size, name + "/v")
    q = randn(sum(query_lens), hq, head_dim, dtype=dtype, name=name + "/q", device=DEVICE)
    cu_q, cu_k = cumulative(query_lens), cumulative(context_lens)
    got = flash_attn_varlen(q, k_cache, v_cache, cu_q, cu_k, max(query_lens), max(context_lens), block_table=tables)
    return got, varlen_oracle(q, ks, vs, cu_q)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (8, 2), (8, 1)])
def test_new_tokens_attend_to_cached_prefix(hq, hkv, dtype):
    query_lens, context_lens = [1, 12, 5, 20], [1, 45, 30, 20]  # no prefix, long prefix, short prefix, none
    got, expected = run_paged(query_lens, context_lens, hq, hkv, 64, 16, dtype, f"paged/{hq}/{hkv}/{dtype}")
    assert_close(got, expected.to(dtype), dtype=dtype, scale=4.0,
                 what=f"paged prefill, queries {query_lens} over contexts {context_lens}, {hq}/{hkv} heads", hint=HINT)


@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_any_block_size(block_size):
    got, expected = run_paged([6, 17], [30, 17], 4, 2, 64, block_size, torch.float32, f"bs{block_size}")
    assert_close(got, expected, dtype=torch.float32, scale=4.0,
                 what=f"paged prefill with block_size {block_size}", hint=HINT + "; do not assume a tile fits one block")


def test_head_dim_128_with_single_token_sequences():
    got, expected = run_paged([1, 1, 3], [1, 25, 3], 4, 4, 128, 16, torch.float16, "d128")
    assert_close(got, expected.half(), dtype=torch.float16, scale=4.0,
                 what="paged prefill at head_dim 128 with one-token sequences", hint=HINT)
