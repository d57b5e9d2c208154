"""Chapter 04 attention kernels at real Qwen3 shapes in bfloat16, on CUDA (run it on a machine with a CUDA GPU).

Oracle: per-sequence float32 attention with an explicit causal mask, computed on the GPU.
"""

import pytest
import torch

from mili.kernels import flash_attn_varlen, paged_decode_attention, store_kvcache

pytestmark = pytest.mark.gpu

QWEN3_HEADS = {"0.6B": (16, 8), "8B": (32, 8)}  # (query heads, key/value heads), head_dim 128


def oracle(q, k, v, causal=True, scale=None):
    lq, hq, d = q.shape
    lk, hkv, _ = k.shape
    scale = scale if scale is not None else d ** -0.5
    kf = k.float().repeat_interleave(hq // hkv, 1)
    vf = v.float().repeat_interleave(hq // hkv, 1)
    s = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale
    if causal:
        visible = torch.arange(lk, device=q.device)[None, :] <= torch.arange(lq, device=q.device)[:, None] + (lk - lq)
        s = s.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), vf)


def cu(lengths):
    return torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)


def relative_error(got, expected):
    return ((got.float() - expected).norm() / expected.norm()).item()


def paged(ks, vs, block_size, gen):
    """Scatter each sequence's K and V [L, Hkv, D] into shuffled paged caches: (k_cache, v_cache, block_tables)."""
    needed = [-(-x.shape[0] // block_size) for x in ks]
    num_blocks = sum(needed) + 2
    order = torch.randperm(num_blocks, generator=gen).cuda()
    tables = torch.full((len(ks), max(needed)), -1, dtype=torch.int32, device="cuda")
    hkv, d = ks[0].shape[1:]
    k_cache, v_cache = (torch.randn(num_blocks, block_size, hkv, d, device="cuda", dtype=ks[0].dtype) for _ in "kv")
    used = 0
    for b, (k, v) in enumerate(zip(ks, vs)):
        blocks = order[used:used + needed[b]]
        used += needed[b]
        tables[b, : needed[b]] = blocks.to(torch.int32)
        pos = torch.arange(k.shape[0], device="cuda")
        k_cache[blocks[pos // block_size], pos % block_size] = k
        v_cache[blocks[pos // block_size], pos % block_size] = v
    return k_cache, v_cache, tables


@pytest.mark.parametrize("model", list(QWEN3_HEADS))
def test_prefill_matches_oracle_bf16(model):
    hq, hkv = QWEN3_HEADS[model]
    lengths = [1, 2048, 77, 513, 128]
    torch.manual_seed(0)
    q = torch.randn(sum(lengths), hq, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(sum(lengths), hkv, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(sum(lengths), hkv, 128, device="cuda", dtype=torch.bfloat16)
    c = cu(lengths)
    got = flash_attn_varlen(q, k, v, c, c, max(lengths), max(lengths))
    bounds = c.tolist()
    expected = torch.cat([oracle(q[a:b], k[a:b], v[a:b]) for a, b in zip(bounds, bounds[1:])])
    assert torch.isfinite(got).all()
    assert relative_error(got, expected) < 1e-2


@pytest.mark.parametrize("head_dim,dtype", [(64, torch.bfloat16), (64, torch.float16), (128, torch.float32),
                                            (256, torch.bfloat16)])
def test_prefill_other_head_dims_and_dtypes(head_dim, dtype):
    lengths = [300, 1, 64]
    torch.manual_seed(1)
    q, k, v = (torch.randn(sum(lengths), h, head_dim, device="cuda", dtype=dtype) for h in (8, 2, 2))
    c = cu(lengths)
    got = flash_attn_varlen(q, k, v, c, c, max(lengths), max(lengths))
    bounds = c.tolist()
    expected = torch.cat([oracle(q[a:b], k[a:b], v[a:b]) for a, b in zip(bounds, bounds[1:])])
    assert relative_error(got, expected) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("block_size", [16, 256])
def test_paged_prefill_over_cached_prefix_bf16(block_size):
    hq, hkv = QWEN3_HEADS["8B"]
    query_lens, context_lens = [1, 700, 64, 1000], [1, 1500, 3000, 1000]
    gen = torch.Generator().manual_seed(2)
    ks = [torch.randn(n, hkv, 128, device="cuda", dtype=torch.bfloat16) for n in context_lens]
    vs = [torch.randn(n, hkv, 128, device="cuda", dtype=torch.bfloat16) for n in context_lens]
    k_cache, v_cache, tables = paged(ks, vs, block_size, gen)
    q = torch.randn(sum(query_lens), hq, 128, device="cuda", dtype=torch.bfloat16)
    got = flash_attn_varlen(q, k_cache, v_cache, cu(query_lens), cu(context_lens), max(query_lens),
                            max(context_lens), block_table=tables)
    bounds = cu(query_lens).tolist()
    expected = torch.cat([oracle(q[a:b], k, v) for a, b, k, v in zip(bounds, bounds[1:], ks, vs)])
    assert relative_error(got, expected) < 1e-2


@pytest.mark.parametrize("model", list(QWEN3_HEADS))
@pytest.mark.parametrize("batch,max_context", [(64, 4096), (3, 32768), (256, 600)])
def test_decode_matches_oracle_bf16(model, batch, max_context):
    hq, hkv = QWEN3_HEADS[model]
    gen = torch.Generator().manual_seed(batch)
    lengths = torch.randint(1, max_context + 1, (batch,), generator=gen).tolist()
    lengths[0] = max_context
    ks = [torch.randn(n, hkv, 128, device="cuda", dtype=torch.bfloat16) for n in lengths]
    vs = [torch.randn(n, hkv, 128, device="cuda", dtype=torch.bfloat16) for n in lengths]
    k_cache, v_cache, tables = paged(ks, vs, 16, gen)
    q = torch.randn(batch, hq, 128, device="cuda", dtype=torch.bfloat16)
    got = paged_decode_attention(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32, device="cuda"), tables)
    expected = torch.cat([oracle(q[i:i + 1], k, v) for i, (k, v) in enumerate(zip(ks, vs))])
    assert relative_error(got, expected) < 1e-2


def test_store_kvcache_bf16_with_skipped_slots():
    t, hkv, d, block_size, num_blocks = 4096, 8, 128, 16, 300
    qkv = torch.randn(t, (32 + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16)
    k = qkv[:, 32 * d:(32 + hkv) * d].view(t, hkv, d)
    v = qkv[:, (32 + hkv) * d:].view(t, hkv, d)
    slots = torch.randperm(num_blocks * block_size, device="cuda")[:t]
    slots[::7] = -1
    k_cache = torch.randn(num_blocks, block_size, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    keep = slots >= 0
    expected_k.view(-1, hkv, d)[slots[keep]] = k[keep]
    expected_v.view(-1, hkv, d)[slots[keep]] = v[keep]
    store_kvcache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
