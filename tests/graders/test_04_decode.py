"""Grader for exercise 4.4 (paged decode attention, split over the context).

Oracle: gather each sequence's context from the cache in Python, then float32 attention of its
single query over all of it (the query is the last position, so nothing is masked).
"""

import pytest
import torch

from mili.kernels.decode_attention import paged_decode_attention
from mili.testing import assert_close, randn

from .attention_oracle import DEVICE, attention_oracle, fill_paged_cache, random_block_tables

pytestmark = pytest.mark.exercise("4.4")

HINT = ("key j of sequence b is at block block_tables[b, j // block_size], offset j % block_size; when you "
        "split the context, combine the splits' outputs weighted by exp(lse_split - lse_max)")


def run_decode(context_lens, hq, hkv, head_dim, block_size, dtype, name, scale=None):
    ks = [randn(n, hkv, head_dim, dtype=dtype, name=f"{name}/k{i}", device=DEVICE) for i, n in enumerate(context_lens)]
    vs = [randn(n, hkv, head_dim, dtype=dtype, name=f"{name}/v{i}", device=DEVICE) for i, n in enumerate(context_lens)]
    tables, num_blocks = random_block_tables(context_lens, block_size, name)
    k_cache = fill_paged_cache(ks, tables, num_blocks, block_size, name + "/k")
    v_cache = fill_paged_cache(vs, tables, num_blocks, block_size, name + "/v")
    q = randn(len(context_lens), hq, head_dim, dtype=dtype, name=name + "/q", device=DEVICE)
    lens = torch.tensor(context_lens, dtype=torch.int32, device=DEVICE)
    got = paged_decode_attention(q, k_cache, v_cache, lens, tables, softmax_scale=scale)
    scale = scale if scale is not None else head_dim ** -0.5
    expected = torch.cat([attention_oracle(q[i:i + 1], k, v, causal=True, scale=scale) for i, (k, v) in enumerate(zip(ks, vs))])
    return got, expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (4, 1), (8, 1)])
def test_mixed_context_lengths(hq, hkv, dtype):
    context_lens = [1, 100, 17, 64]
    got, expected = run_decode(context_lens, hq, hkv, 64, 16, dtype, f"decode/{hq}/{hkv}/{dtype}")
    assert_close(got, expected.to(dtype), dtype=dtype, scale=4.0,
                 what=f"decode over contexts {context_lens}, {hq} query / {hkv} kv heads", hint=HINT)


@pytest.mark.parametrize("block_size", [1, 8, 64])
def test_any_block_size(block_size):
    got, expected = run_decode([70, 5], 4, 2, 64, block_size, torch.float32, f"bs{block_size}")
    assert_close(got, expected, dtype=torch.float32, scale=4.0,
                 what=f"decode with block_size {block_size}", hint=HINT + "; do not assume a tile fits one block")


def test_long_context_head_dim_128_and_custom_scale():
    got, expected = run_decode([300, 2], 8, 2, 128, 16, torch.float16, "long", scale=0.05)
    assert_close(got, expected.half(), dtype=torch.float16, scale=4.0,
                 what="decode over a 300-token context at head_dim 128 with softmax_scale=0.05",
                 hint=HINT + "; use the softmax_scale you are given")
