"""Grader for exercise 2.4 (fused per-head q/k RMSNorm + RoPE, stretch).

Oracle: per-head RMSNorm then rotate-half RoPE in plain PyTorch float32, rounding where the
unfused path rounds.
"""

import pytest
import torch

from mili.kernels.qk_norm_rope import qk_norm_rope
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.4")

# On a CUDA machine the kernels run compiled on the GPU; on a CPU, in the Triton interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


EPS = 1e-6
MAX_POSITION = 64


def cos_sin_table(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(MAX_POSITION, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float().to(DEVICE)


def oracle(x: torch.Tensor, weight: torch.Tensor, positions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    normed = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype)
    y = (normed.float() * weight.float()).to(x.dtype).float()
    half = x.shape[-1] // 2
    cos, sin = table[positions.long(), :half][:, None, :], table[positions.long(), half:][:, None, :]
    y1, y2 = y[..., :half], y[..., half:]
    return torch.cat([y1 * cos - y2 * sin, y2 * cos + y1 * sin], dim=-1).to(x.dtype)


def inputs(num_tokens, hq, hkv, d, dtype):
    q, k = rand(num_tokens, hq, d, dtype=dtype, scale=2.0), rand(num_tokens, hkv, d, dtype=dtype, name="k")
    q_weight = (rand(d, name="q_weight") + 1.0).to(dtype)
    k_weight = (rand(d, name="k_weight") + 1.0).to(dtype)
    g = torch.Generator().manual_seed(num_tokens)
    positions = torch.randint(0, MAX_POSITION, (num_tokens,), generator=g).to(DEVICE)
    return q, k, q_weight, k_weight, positions, cos_sin_table(d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 6])
def test_matches_norm_then_rope(dtype, num_tokens):
    q, k, qw, kw, positions, table = inputs(num_tokens, 4, 2, 16, dtype)
    expected_q, expected_k = oracle(q, qw, positions, table), oracle(k, kw, positions, table)
    got_q, got_k = qk_norm_rope(q, k, qw, kw, EPS, positions, table)
    assert got_q is q and got_k is k, "qk_norm_rope works in place: return the very tensors q and k it was given"
    hint = "normalise each head over its whole head_dim (both halves count in the mean square), then rotate"
    assert_close(q, expected_q, dtype=dtype, scale=2.0, what=f"q ({dtype}, T={num_tokens})", hint=hint)
    assert_close(k, expected_k, dtype=dtype, scale=2.0, what=f"k ({dtype}, T={num_tokens})",
                 hint="k uses k_weight, not q_weight")


def test_strided_views_and_odd_sizes():
    num_tokens, hq, hkv, d = 3, 3, 1, 24
    qkv = rand(num_tokens, (hq + 2 * hkv) * d, scale=2.0)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(num_tokens, hkv, d)
    _, _, qw, kw, positions, table = inputs(num_tokens, hq, hkv, d, torch.float32)
    expected_q, expected_k = oracle(q, qw, positions, table), oracle(k, kw, positions, table)
    qk_norm_rope(q, k, qw, kw, EPS, positions, table)
    hint = "views of a fused qkv: step tokens by stride(0) and heads by stride(1); mask D/2 = 12 and 3 heads"
    assert_close(q, expected_q, what="q as a view of qkv, head_dim 24", hint=hint)
    assert_close(k, expected_k, what="k as a view of qkv, head_dim 24", hint=hint)


def test_positions_outside_the_table_give_nan_heads():
    q, k, qw, kw, _, table = inputs(3, 2, 1, 8, torch.float32)
    positions = torch.tensor([3, MAX_POSITION, -1], device=DEVICE)
    expected_q = oracle(q[:1], qw, positions[:1], table)
    qk_norm_rope(q, k, qw, kw, EPS, positions, table)
    assert_close(q[:1], expected_q, what="q of the token at position 3")
    outside = torch.cat([q[1:].flatten(), k[1:].flatten()])
    assert torch.isnan(outside).all(), (
        f"positions {MAX_POSITION} and -1 are outside the cos/sin table: their heads must be NaN, got "
        f"{outside[:4].tolist()} ... hint: mask the cos/sin loads with 0 <= position < max_position (other=nan)")


def test_bad_input_raises_clear_errors():
    q, k, qw, kw, positions, table = inputs(2, 2, 1, 8, torch.float32)
    with pytest.raises(ValueError, match="q_weight"):
        qk_norm_rope(q, k, torch.ones(16, device=DEVICE), kw, EPS, positions, table)
    with pytest.raises(TypeError, match="k_weight"):
        qk_norm_rope(q, k, qw, kw.half(), EPS, positions, table)
    with pytest.raises(TypeError, match="cos_sin_cache"):
        qk_norm_rope(q, k, qw, kw, EPS, positions, table.half())
