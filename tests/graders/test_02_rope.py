"""Grader for exercise 2.2 (RoPE in Triton, in place on q and k).

Oracle: the rotate-half formula in plain PyTorch float32, with the cos/sin table built here
from the angles (independent of chapter 01's code).
"""

import pytest
import torch

from mili.kernels.rope import apply_rope
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.2")

# On a CUDA machine the kernels run compiled on the GPU; on a CPU, in the Triton interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


MAX_POSITION = 64


def cos_sin_table(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(MAX_POSITION, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float().to(DEVICE)


def oracle_rope(x: torch.Tensor, positions: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    cos, sin = table[positions.long(), :half][:, None, :], table[positions.long(), half:][:, None, :]
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def positions_for(num_tokens: int, dtype=torch.int64) -> torch.Tensor:
    g = torch.Generator().manual_seed(num_tokens)
    return torch.randint(0, MAX_POSITION, (num_tokens,), generator=g, dtype=dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", [1, 7])
def test_matches_float32_math_in_place(dtype, num_tokens):
    q, k = rand(num_tokens, 4, 16, dtype=dtype), rand(num_tokens, 2, 16, dtype=dtype, name="k")
    positions, table = positions_for(num_tokens), cos_sin_table(16)
    expected_q, expected_k = oracle_rope(q, positions, table), oracle_rope(k, positions, table)
    got_q, got_k = apply_rope(q, k, positions, table)
    assert got_q is q and got_k is k, "apply_rope works in place: return the very tensors q and k it was given"
    hint = "pair element i with i + D/2 (rotate half), not with i + 1; cos and sin come from row positions[t]"
    assert_close(q, expected_q, dtype=dtype, scale=2.0, what=f"q after apply_rope ({dtype}, T={num_tokens})", hint=hint)
    assert_close(k, expected_k, dtype=dtype, scale=2.0, what=f"k after apply_rope ({dtype}, T={num_tokens})",
                 hint="k has fewer heads than q: loop or mask over its own head count")


def test_head_dim_not_a_power_of_two():
    q, k = rand(3, 3, 24), rand(3, 1, 24, name="k")  # D/2 = 12, 3 heads
    positions, table = positions_for(3, torch.int32), cos_sin_table(24)
    expected_q, expected_k = oracle_rope(q, positions, table), oracle_rope(k, positions, table)
    apply_rope(q, k, positions, table)
    assert_close(q, expected_q, what="q with head_dim 24 and 3 heads",
                 hint="mask the half-dimension (BLOCK_HALF is a power of two, D/2 may not be) and the heads")
    assert_close(k, expected_k, what="k with head_dim 24")


def test_strided_views_of_a_fused_qkv():
    num_tokens, hq, hkv, d = 5, 4, 2, 16
    qkv = rand(num_tokens, (hq + 2 * hkv) * d)
    v_before = qkv[:, (hq + hkv) * d:].clone()
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(num_tokens, hkv, d)
    positions, table = positions_for(num_tokens), cos_sin_table(d)
    expected_q, expected_k = oracle_rope(q, positions, table), oracle_rope(k, positions, table)
    apply_rope(q, k, positions, table)
    hint = "q and k are views into one [T, (Hq+2Hkv)*D] buffer: step tokens by stride(0), heads by stride(1)"
    assert_close(q, expected_q, what="q as a view of qkv", hint=hint)
    assert_close(k, expected_k, what="k as a view of qkv", hint=hint)
    assert torch.equal(qkv[:, (hq + hkv) * d:], v_before), "apply_rope wrote into v: it must touch q and k only"


def test_position_zero_is_the_identity():
    q, k = rand(2, 2, 8), rand(2, 2, 8, name="k")
    expected_q, expected_k = q.clone(), k.clone()
    apply_rope(q, k, torch.zeros(2, dtype=torch.int64, device=DEVICE), cos_sin_table(8))
    assert_close(q, expected_q, what="q rotated at position 0",
                 hint="at position 0 cos = 1 and sin = 0: read cos from the first half of the row, sin from the second")
    assert_close(k, expected_k, what="k rotated at position 0")


def test_positions_outside_the_table_are_not_read():
    """The docstring's range: a position outside [0, max_position) reads nothing and gives NaN heads."""
    q, k = rand(3, 2, 8), rand(3, 1, 8, name="k")
    positions, table = torch.tensor([5, MAX_POSITION, -1], device=DEVICE), cos_sin_table(8)
    expected_q, expected_k = oracle_rope(q[:1], positions[:1], table), oracle_rope(k[:1], positions[:1], table)
    apply_rope(q, k, positions, table)
    assert_close(q[:1], expected_q, what="q of the token at position 5")
    assert_close(k[:1], expected_k, what="k of the token at position 5")
    outside = torch.cat([q[1:].flatten(), k[1:].flatten()])
    assert torch.isnan(outside).all(), (
        f"the tokens at positions {MAX_POSITION} and -1 lie outside the {MAX_POSITION}-row cos/sin table, so their "
        f"heads must come back as NaN; got {outside[:4].tolist()} ... hint: mask the cos/sin loads with "
        "0 <= position < max_position (other=nan): an unmasked load reads memory outside the table")


def test_bad_input_raises_clear_errors():
    q, k, positions, table = rand(2, 2, 8), rand(2, 1, 8, name="k"), positions_for(2), cos_sin_table(8)
    with pytest.raises(TypeError, match="cos_sin_cache"):
        apply_rope(q, k, positions, table.half())
    with pytest.raises(TypeError, match="positions"):
        apply_rope(q, k, positions.float(), table)
    with pytest.raises(ValueError, match="head_dim"):
        apply_rope(q, rand(2, 1, 16), positions, table)
    with pytest.raises(ValueError, match="cos_sin_cache"):
        apply_rope(q, k, positions, cos_sin_table(16))
    with pytest.raises(ValueError, match="token"):
        apply_rope(q, k, positions_for(3), table)
    with pytest.raises(TypeError, match="dtype"):
        apply_rope(q, k.half(), positions, table)
    with pytest.raises(ValueError, match="dimensions"):
        apply_rope(q.flatten(1), k, positions, table)
