"""Grader for exercise 1.3 (GQA causal attention). Oracle: explicit float64 loops, one head at a time."""

import pytest
import torch

from mili.model.attention import gqa_causal_attention
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("1.3")


def oracle(q, k, v, scale):
    tq, hq, _ = q.shape
    tk, hkv, _ = k.shape
    out = torch.zeros(q.shape, dtype=torch.float64)
    for h in range(hq):
        kv = h // (hq // hkv)
        for i in range(tq):
            visible = i + (tk - tq) + 1
            scores = (k[:visible, kv].double() @ q[i, h].double()) * scale
            out[i, h] = torch.softmax(scores, 0) @ v[:visible, kv].double()
    return out


@pytest.mark.parametrize("tq,tk", [(5, 5), (1, 7), (3, 8), (1, 1)])
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (8, 2)])
def test_matches_oracle(tq, tk, hq, hkv):
    q, k, v = randn(tq, hq, 16, name="q"), randn(tk, hkv, 16, name="k"), randn(tk, hkv, 16, name="v")
    got = gqa_causal_attention(q, k, v, 0.25)
    assert_close(got, oracle(q, k, v, 0.25).float(), dtype=torch.float32, scale=10,
                 what=f"attention with Tq={tq}, Tk={tk}, Hq={hq}, Hkv={hkv}",
                 hint="queries are the LAST Tq positions (query i sees keys j <= i + Tk - Tq); "
                      "query head h reads kv head h // (Hq // Hkv), not h % Hkv")


def test_bfloat16_in_and_out():
    q, k, v = (randn(6, 4, 32, dtype=torch.bfloat16, name=n) for n in "qkv")
    got = gqa_causal_attention(q, k, v, 32 ** -0.5)
    assert_close(got, oracle(q, k, v, 32 ** -0.5).to(torch.bfloat16), dtype=torch.bfloat16,
                 what="bfloat16 attention", hint="compute the softmax in float32 and return q's dtype")


def test_first_query_sees_only_the_first_key():
    q, k, v = randn(4, 2, 8, name="q"), randn(4, 2, 8, name="k"), randn(4, 2, 8, name="v")
    got = gqa_causal_attention(q, k, v, 1.0)
    assert_close(got[0], v[0], what="output of query 0", hint="the causal mask must hide keys after the query")
