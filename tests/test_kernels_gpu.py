"""Chapter 02 kernels on CUDA at real Qwen3 sizes (0.6B and 8B), against float32 PyTorch math.

Marked gpu: skipped without CUDA; run it on a machine with a CUDA GPU. bf16, the engine's dtype (the CPU
graders cover all three dtypes, and the same graders also run on CUDA). Outputs are checked
element by element against float32 math, so an unwritten or NaN element fails.
"""

import pytest
import torch

from mili.kernels import apply_rope, fused_add_rms_norm, qk_norm_rope, rms_norm, silu_and_mul
from mili.model.rope import rope_cos_sin_cache
from mili.testing import assert_close, randn

pytestmark = pytest.mark.gpu

# (hidden, intermediate, q heads, kv heads, head_dim) of Qwen3-0.6B and Qwen3-8B
SIZES = {"0.6B": (1024, 3072, 16, 8, 128), "8B": (4096, 12288, 32, 8, 128)}
TOKENS = [1, 4103]  # one token, and many with a ragged last block of rows
EPS = 1e-6


def norm_oracle(x, w):
    x32 = x.float()
    return ((x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype).float() * w.float()).to(x.dtype)


def rope_oracle(x, positions, cache):
    half = x.shape[-1] // 2
    cos, sin = cache[positions, :half][:, None], cache[positions, half:][:, None]
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


@pytest.mark.parametrize("model", SIZES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_norms(model, tokens, dtype):
    hidden = SIZES[model][0]
    x = randn(tokens, hidden, dtype=dtype, device="cuda", scale=3.0)
    residual = randn(tokens, hidden, dtype=dtype, device="cuda", name="residual")
    w = (randn(hidden, name="w") + 1.0).to(dtype=dtype, device="cuda")
    assert_close(rms_norm(x, w, EPS), norm_oracle(x, w), dtype=dtype, scale=2.0, what="rms_norm")
    out, residual_out = fused_add_rms_norm(x, residual, w, EPS)
    summed = (x.float() + residual.float()).to(dtype)
    assert_close(residual_out, summed, dtype=dtype, what="residual_out")
    assert_close(out, norm_oracle(summed, w), dtype=dtype, scale=2.0, what="fused out")


@pytest.mark.parametrize("model", SIZES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_silu_and_mul(model, tokens, dtype):
    inter = SIZES[model][1]
    x = randn(tokens, 2 * inter, dtype=dtype, device="cuda", scale=3.0)
    gate, up = x.float().chunk(2, -1)
    assert_close(silu_and_mul(x), (torch.nn.functional.silu(gate) * up).to(dtype), dtype=dtype, what="silu_and_mul")


@pytest.mark.parametrize("model", SIZES)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_rope_and_qk_norm_rope_on_qkv_views(model, tokens, dtype):
    _, _, hq, hkv, d = SIZES[model]
    cache = rope_cos_sin_cache(d, 40960, 1_000_000.0).cuda()
    positions = torch.randint(0, 40960, (tokens,), device="cuda")
    qkv = randn(tokens, (hq + 2 * hkv) * d, dtype=dtype, device="cuda", scale=2.0)
    q, k = qkv[:, : hq * d].view(tokens, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
    v_before = qkv[:, (hq + hkv) * d :].clone()
    expected_q, expected_k = rope_oracle(q, positions, cache), rope_oracle(k, positions, cache)
    apply_rope(q, k, positions, cache)
    assert_close(q, expected_q, dtype=dtype, scale=2.0, what="q after apply_rope")
    assert_close(k, expected_k, dtype=dtype, scale=2.0, what="k after apply_rope")
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before), "apply_rope touched v"

    qw, kw = (randn(d, name="qw") + 1.0).to(dtype).cuda(), (randn(d, name="kw") + 1.0).to(dtype).cuda()
    expected_q = rope_oracle(norm_oracle(q, qw), positions, cache)
    expected_k = rope_oracle(norm_oracle(k, kw), positions, cache)
    qk_norm_rope(q, k, qw, kw, EPS, positions, cache)
    assert_close(q, expected_q, dtype=dtype, scale=2.0, what="q after qk_norm_rope")
    assert_close(k, expected_k, dtype=dtype, scale=2.0, what="k after qk_norm_rope")
