"""Grader for exercise 4.1 (FlashAttention prefill over packed, variable-length sequences).

Oracle: per-sequence attention in float32 with an explicit causal mask (attention_oracle.py).
Runs in the Triton interpreter on a CPU, in float16 and float32 (tl.dot on bfloat16 is wrong there).
"""

import pytest
import torch

from mili.kernels.flash_attn import flash_attn_varlen
from mili.testing import assert_close, randn

from .attention_oracle import DEVICE, cumulative, varlen_oracle

pytestmark = pytest.mark.exercise("4.1")

HINT = ("check the online-softmax rescale (acc and l by exp(m_old - m_new)), the causal shift "
        "j <= i + (Lk - Lq), and that query head h reads key/value head h // (Hq // Hkv)")


def run_case(lengths_q, lengths_k, hq, hkv, head_dim, dtype, *, causal=True, scale=None, name="case"):
    q = randn(sum(lengths_q), hq, head_dim, dtype=dtype, name=name + "/q", device=DEVICE)
    k = randn(sum(lengths_k), hkv, head_dim, dtype=dtype, name=name + "/k", device=DEVICE)
    v = randn(sum(lengths_k), hkv, head_dim, dtype=dtype, name=name + "/v", device=DEVICE)
    cu_q, cu_k = cumulative(lengths_q), cumulative(lengths_k)
    got = flash_attn_varlen(q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal, softmax_scale=scale)
    ks = [k[lo:hi] for lo, hi in zip(cu_k[:-1].tolist(), cu_k[1:].tolist())]
    vs = [v[lo:hi] for lo, hi in zip(cu_k[:-1].tolist(), cu_k[1:].tolist())]
    expected = varlen_oracle(q, ks, vs, cu_q, causal=causal, scale=scale)
    return got, expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (4, 1), (8, 1)])
def test_causal_gqa_mixed_lengths(hq, hkv, dtype):
    lengths = [1, 45, 7, 70]
    got, expected = run_case(lengths, lengths, hq, hkv, 64, dtype, name=f"gqa{hq}/{hkv}/{dtype}")
    assert_close(got, expected.to(dtype), dtype=dtype, scale=4.0,
                 what=f"causal attention, lengths {lengths}, {hq} query / {hkv} kv heads, {dtype}", hint=HINT)


def test_head_dim_128():
    lengths = [33, 2]
    got, expected = run_case(lengths, lengths, 4, 2, 128, torch.float16, name="d128")
    assert_close(got, expected.half(), dtype=torch.float16, scale=4.0, what="causal attention at head_dim 128",
                 hint="the head dimension is a compile-time tile width: load all D columns of q, k and v")


def test_queries_are_the_last_positions():
    """Lk > Lq: the queries sit at the end of each key sequence, so query 0 sees Lk - Lq + 1 keys."""
    got, expected = run_case([3, 20], [40, 29], 4, 2, 64, torch.float32, name="suffix")
    assert_close(got, expected, dtype=torch.float32, scale=4.0, what="causal attention with Lk > Lq",
                 hint="align the causal mask to the end of the key sequence: key j is visible to query i "
                      "when j <= i + (Lk - Lq)")


def test_not_causal_and_custom_scale():
    lengths = [19, 50]
    got, expected = run_case(lengths, lengths, 4, 4, 64, torch.float32, causal=False, scale=0.3, name="full")
    assert_close(got, expected, dtype=torch.float32, scale=4.0, what="non-causal attention with softmax_scale=0.3",
                 hint="with causal=False every query sees every key of its sequence; use the scale you are given")


def test_strided_views_of_a_fused_qkv():
    """The model passes q, k, v as column slices of one [T, (Hq + 2·Hkv)·D] projection."""
    lengths, hq, hkv, d = [24, 9], 4, 2, 64
    qkv = randn(sum(lengths), (hq + 2 * hkv) * d, dtype=torch.float16, name="qkv", device=DEVICE)
    q = qkv[:, : hq * d].view(-1, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(-1, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(-1, hkv, d)
    cu = cumulative(lengths)
    got = flash_attn_varlen(q, k, v, cu, cu, max(lengths), max(lengths))
    bounds = cu.tolist()
    expected = varlen_oracle(q, [k[a:b] for a, b in zip(bounds, bounds[1:])],
                             [v[a:b] for a, b in zip(bounds, bounds[1:])], cu)
    assert_close(got, expected.half(), dtype=torch.float16, scale=4.0, what="attention on strided q, k, v views",
                 hint="use each tensor's own strides (q.stride(0), k.stride(1), ...), not its shape, to address rows")
