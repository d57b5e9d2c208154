"""Grader for exercise 1.2 (rotary embeddings). Oracles: float64 math and Hugging Face's Qwen3 RoPE."""

import math

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from mili.model.rope import apply_rope, rope_cos_sin_cache
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("1.2")


def test_cos_sin_cache_matches_the_formula():
    d, p, theta = 16, 50, 10000.0
    got = rope_cos_sin_cache(d, p, theta)
    expected = torch.empty(p, d, dtype=torch.float64)
    for pos in range(p):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            expected[pos, i], expected[pos, d // 2 + i] = math.cos(angle), math.sin(angle)
    assert_close(got, expected.float(), dtype=torch.float32, scale=10, what="rope_cos_sin_cache(16, 50, 1e4)",
                 hint="cos in the first half, sin in the second; inv_freq[i] = theta ** (-2i / head_dim)")


def test_cos_sin_cache_is_exact_at_long_positions():
    got = rope_cos_sin_cache(128, 40960, 1_000_000.0)
    angle = torch.tensor(40959.0, dtype=torch.float64)
    assert_close(got[40959, 0:1], angle.cos().reshape(1).float(), scale=100, what="cos at position 40959, freq 0",
                 hint="compute angles in float32 (or better), never in float16/bfloat16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 64), (8, 8, 128), (2, 1, 32)])
def test_matches_hugging_face(dtype, hq, hkv, d):
    t = 9
    q, k = randn(t, hq, d, dtype=dtype, name="q"), randn(t, hkv, d, dtype=dtype, name="k")
    positions = torch.tensor([0, 1, 2, 7, 8, 100, 101, 3, 511])
    config = Qwen3Config(head_dim=d, num_attention_heads=hq, num_key_value_heads=hkv, hidden_size=hq * d,
                         rope_theta=1_000_000.0, max_position_embeddings=512)
    cos, sin = Qwen3RotaryEmbedding(config)(q.float(), positions[None])
    exp_q, exp_k = apply_rotary_pos_emb(q.float().transpose(0, 1)[None], k.float().transpose(0, 1)[None], cos, sin)
    got_q, got_k = apply_rope(q, k, positions, rope_cos_sin_cache(d, 512, 1_000_000.0))
    hint = "rotate-half pairs element i with i + D/2 (not 2i with 2i+1); index the cache by positions, not by row"
    assert_close(got_q, exp_q[0].transpose(0, 1).to(dtype), dtype=dtype, what="rotated q", hint=hint)
    assert_close(got_k, exp_k[0].transpose(0, 1).to(dtype), dtype=dtype, what="rotated k", hint=hint)


def test_rotation_preserves_norm_and_position_zero_is_identity():
    q, k = randn(3, 2, 16, name="q"), randn(3, 1, 16, name="k")
    positions = torch.tensor([0, 5, 9])
    got_q, _ = apply_rope(q, k, positions, rope_cos_sin_cache(16, 16, 10000.0))
    assert_close(got_q[0], q[0], what="q at position 0", hint="position 0 has angle 0: cos=1, sin=0")
    assert_close(got_q.norm(dim=-1), q.norm(dim=-1), scale=10, what="per-head norm after rotation",
                 hint="a rotation keeps lengths: did you mix cos and sin halves?")
