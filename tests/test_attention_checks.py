"""The chapter 04 ops reject what their kernels cannot run, naming the argument (plumbing, not graded)."""

import pytest
import torch

from mili.kernels.attention_checks import check_decode_args, check_store_args, check_varlen_args


def cu(*lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def varlen(hq=4, hkv=2, d=64, dtype=torch.float16, t=10):
    return (torch.randn(t, hq, d).to(dtype), torch.randn(t, hkv, d).to(dtype), torch.randn(t, hkv, d).to(dtype),
            cu(4, 6), cu(4, 6), 6, 6)


def test_valid_arguments_pass():
    check_varlen_args(*varlen(), None)
    check_varlen_args(*varlen(d=128, dtype=torch.bfloat16), None)


@pytest.mark.parametrize("d", [48, 96, 512])
def test_unsupported_head_dim(d):
    with pytest.raises(ValueError, match=f"head_dim={d}"):
        check_varlen_args(*varlen(d=d), None)


def test_heads_must_group():
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        check_varlen_args(*varlen(hq=6, hkv=4), None)


def test_int64_cu_seqlens_rejected():
    q, k, v, cq, ck, mq, mk = varlen()
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        check_varlen_args(q, k, v, cq.long(), ck, mq, mk, None)


def test_mixed_dtypes_rejected():
    q, k, v, cq, ck, mq, mk = varlen()
    with pytest.raises(TypeError, match="k has dtype"):
        check_varlen_args(q, k.float(), v, cq, ck, mq, mk, None)


def test_integer_inputs_rejected():
    q, k, v, cq, ck, mq, mk = varlen()
    with pytest.raises(TypeError, match="q has dtype"):
        check_varlen_args(q.to(torch.int8), k, v, cq, ck, mq, mk, None)


def test_paged_prefill_needs_a_cache_and_a_table_per_sequence():
    q, _, _, cq, ck, mq, mk = varlen()
    cache = torch.randn(5, 16, 2, 64).half()
    with pytest.raises(ValueError, match="block_table needs one row per sequence"):
        check_varlen_args(q, cache, cache, cq, ck, mq, mk, torch.zeros(3, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="k_cache must have 4 dimensions"):
        check_varlen_args(q, cache[0], cache[0], cq, ck, mq, mk, torch.zeros(2, 2, dtype=torch.int32))


def test_store_rejects_a_cache_of_another_shape():
    k = torch.randn(3, 2, 64)
    cache = torch.randn(4, 8, 4, 64)
    with pytest.raises(ValueError, match=r"cache holds \[Hkv, D\]"):
        check_store_args(k, k, cache, cache, torch.tensor([0, 1, 2]))


def test_store_rejects_a_non_contiguous_cache():
    k = torch.randn(3, 2, 64)
    cache = torch.randn(8, 4, 2, 64).transpose(0, 1)
    with pytest.raises(ValueError, match="k_cache must be contiguous"):
        check_store_args(k, k, cache, cache.contiguous(), torch.tensor([0, 1, 2]))


def test_decode_rejects_lengths_of_another_batch():
    q = torch.randn(2, 4, 64)
    cache = torch.randn(4, 8, 2, 64)
    tables = torch.zeros(2, 3, dtype=torch.int32)
    check_decode_args(q, cache, cache, torch.tensor([3, 5], dtype=torch.int32), tables)
    with pytest.raises(ValueError, match="context_lens needs one length per sequence"):
        check_decode_args(q, cache, cache, torch.tensor([3], dtype=torch.int32), tables)
    with pytest.raises(TypeError, match="block_tables has dtype"):
        check_decode_args(q, cache, cache, torch.tensor([3, 5], dtype=torch.int32), tables.long())
