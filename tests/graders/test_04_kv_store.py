"""Grader for exercise 4.2 (writing new K/V into the paged cache).

Oracle: a Python loop over tokens that writes each one to block slot // block_size, offset
slot % block_size, and skips slot -1.
"""

import pytest
import torch

from mili.kernels.kv_store import store_kvcache
from mili.testing import assert_close, generator_for, randn

from .attention_oracle import DEVICE

pytestmark = pytest.mark.exercise("4.2")


def oracle_store(k, v, k_cache, v_cache, slots):
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    block_size = k_cache.shape[1]
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            k_cache[s // block_size, s % block_size] = k[t].to(k_cache.dtype)
            v_cache[s // block_size, s % block_size] = v[t].to(v_cache.dtype)
    return k_cache, v_cache


def random_slots(num_tokens, num_slots, name, skip_every=0):
    slots = torch.randperm(num_slots, generator=generator_for(name))[:num_tokens]
    if skip_every:
        slots[::skip_every] = -1
    return slots.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,hkv,head_dim,block_size", [(1, 1, 64, 16), (13, 2, 64, 16), (40, 8, 128, 4)])
def test_writes_every_token_to_its_slot(num_tokens, hkv, head_dim, block_size, dtype):
    name = f"store/{num_tokens}/{hkv}/{dtype}"
    k = randn(num_tokens, hkv, head_dim, dtype=dtype, name=name + "/k", device=DEVICE)
    v = randn(num_tokens, hkv, head_dim, dtype=dtype, name=name + "/v", device=DEVICE)
    num_blocks = num_tokens // block_size + 3
    k_cache = randn(num_blocks, block_size, hkv, head_dim, dtype=dtype, name=name + "/kc", device=DEVICE)
    v_cache = randn(num_blocks, block_size, hkv, head_dim, dtype=dtype, name=name + "/vc", device=DEVICE)
    slots = random_slots(num_tokens, num_blocks * block_size, name)
    expected_k, expected_v = oracle_store(k, v, k_cache, v_cache, slots)
    assert store_kvcache(k, v, k_cache, v_cache, slots) is None
    hint = "slot s lives at block s // block_size, offset s % block_size; write all Hkv·D values of the token"
    assert_close(k_cache, expected_k, dtype=dtype, scale=0.0, what="k_cache after store_kvcache", hint=hint)
    assert_close(v_cache, expected_v, dtype=dtype, scale=0.0, what="v_cache after store_kvcache", hint=hint)


def test_slot_minus_one_is_skipped():
    k = randn(12, 2, 64, name="skip/k", device=DEVICE)
    v = randn(12, 2, 64, name="skip/v", device=DEVICE)
    k_cache = randn(4, 8, 2, 64, name="skip/kc", device=DEVICE)
    v_cache = randn(4, 8, 2, 64, name="skip/vc", device=DEVICE)
    slots = random_slots(12, 32, "skip", skip_every=3)
    expected_k, expected_v = oracle_store(k, v, k_cache, v_cache, slots)
    store_kvcache(k, v, k_cache, v_cache, slots)
    hint = "a slot of -1 marks a token that must not be written: return before storing"
    assert_close(k_cache, expected_k, scale=0.0, what="k_cache with some slots = -1", hint=hint)
    assert_close(v_cache, expected_v, scale=0.0, what="v_cache with some slots = -1", hint=hint)


def test_strided_rows_and_cast_to_cache_dtype():
    """k and v as column slices of a fused projection, stored into a float16 cache from float32."""
    qkv = randn(9, 3 * 2 * 64, name="fused", device=DEVICE)
    k = qkv[:, 128:256].view(9, 2, 64)
    v = qkv[:, 256:].view(9, 2, 64)
    k_cache = randn(3, 4, 2, 64, dtype=torch.float16, name="cast/kc", device=DEVICE)
    v_cache = randn(3, 4, 2, 64, dtype=torch.float16, name="cast/vc", device=DEVICE)
    slots = random_slots(9, 12, "cast").to(torch.int32)
    expected_k, expected_v = oracle_store(k, v, k_cache, v_cache, slots)
    store_kvcache(k, v, k_cache, v_cache, slots)
    hint = "address k and v rows with k.stride(0) (they are views, not contiguous) and cast to the cache's dtype"
    assert_close(k_cache, expected_k, dtype=torch.float16, scale=0.0, what="k_cache from strided k", hint=hint)
    assert_close(v_cache, expected_v, dtype=torch.float16, scale=0.0, what="v_cache from strided v", hint=hint)
