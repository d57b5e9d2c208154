"""Reference for exercise 2.4 (mirrors mili/kernels/qk_norm_rope.py)."""

from __future__ import annotations

from torch import Tensor

from mili.kernels._checks import check_rope_args, check_same_device, check_same_dtype, check_shape, check_tensor
from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel


@triton.jit
def _head_offsets(head_stride, num_heads, half, half_mask, BLOCK_HEADS: tl.constexpr):
    """Offsets of the first halves of one token's heads [BLOCK_HEADS, BLOCK_HALF], and their mask."""
    heads = tl.arange(0, BLOCK_HEADS)
    return heads[:, None] * head_stride + half[None, :], (heads[:, None] < num_heads) & half_mask[None, :]


@triton.jit
def _rms_norm_halves(x1, x2, weight_ptr, half, half_mask, half_dim, eps):
    """RMSNorm of heads split in halves [heads, D/2] x 2, rounding where the unfused path rounds."""
    dtype = weight_ptr.dtype.element_ty  # the launcher checks that q, k and the weights share it
    w1 = tl.load(weight_ptr + half, mask=half_mask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(weight_ptr + half_dim + half, mask=half_mask, other=0.0).to(tl.float32)[None, :]
    # the head's mean square spans both halves
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half_dim) + eps)[:, None]
    n1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    n2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    return n1, n2


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr, q_token_stride, q_head_stride, num_q_heads, q_weight_ptr,    # q [T, Hq, D] in place; reads q_weight [D]
    k_ptr, k_token_stride, k_head_stride, num_kv_heads, k_weight_ptr,   # k [T, Hkv, D] in place; reads k_weight [D]
    positions_ptr,                                                      # reads positions [T]
    cache_ptr, cache_stride, max_position,                              # reads cos_sin_cache [P, D]
    half_dim, eps,
    BLOCK_Q_HEADS: tl.constexpr, BLOCK_KV_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    # one program per token, as in apply_rope; every load is issued before the first store
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    token = tl.program_id(0).to(tl.int64)
    half = tl.arange(0, BLOCK_HALF)
    half_mask = half < half_dim
    q_ptr += token * q_token_stride
    k_ptr += token * k_token_stride
    q_offs, q_mask = _head_offsets(q_head_stride, num_q_heads, half, half_mask, BLOCK_Q_HEADS)
    k_offs, k_mask = _head_offsets(k_head_stride, num_kv_heads, half, half_mask, BLOCK_KV_HEADS)
    q1 = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0).to(tl.float32)
    q2 = tl.load(q_ptr + q_offs + half_dim, mask=q_mask, other=0.0).to(tl.float32)
    k1 = tl.load(k_ptr + k_offs, mask=k_mask, other=0.0).to(tl.float32)
    k2 = tl.load(k_ptr + k_offs + half_dim, mask=k_mask, other=0.0).to(tl.float32)
    position = tl.load(positions_ptr + token).to(tl.int64)
    in_table = (position >= 0) & (position < max_position)  # outside: read row 0, and give NaN
    row = cache_ptr + tl.where(in_table, position, 0) * cache_stride
    cos = tl.where(in_table, tl.load(row + half, mask=half_mask, other=0.0), float("nan"))[None, :]
    sin = tl.where(in_table, tl.load(row + half_dim + half, mask=half_mask, other=0.0), float("nan"))[None, :]
    dtype = q_ptr.dtype.element_ty
    q1, q2 = _rms_norm_halves(q1, q2, q_weight_ptr, half, half_mask, half_dim, eps)
    k1, k2 = _rms_norm_halves(k1, k2, k_weight_ptr, half, half_mask, half_dim, eps)
    tl.store(q_ptr + q_offs, (q1 * cos - q2 * sin).to(dtype), mask=q_mask)
    tl.store(q_ptr + q_offs + half_dim, (q2 * cos + q1 * sin).to(dtype), mask=q_mask)
    tl.store(k_ptr + k_offs, (k1 * cos - k2 * sin).to(dtype), mask=k_mask)
    tl.store(k_ptr + k_offs + half_dim, (k2 * cos + k1 * sin).to(dtype), mask=k_mask)


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float,
                 positions: Tensor, cos_sin_cache: Tensor) -> tuple[Tensor, Tensor]:
    """RMSNorm each head of q and k over head_dim, then rotate it by RoPE, in place, in one launch.

    q: [T, Hq, D], k: [T, Hkv, D], positions, cos_sin_cache: as in apply_rope (exercise 2.2), a
    position out of range giving NaN heads there too.
    q_weight, k_weight: [D], the same dtype as q. Gives the same result as
        apply_rope(rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps), positions, cos_sin_cache)
    with the same roundings (normalised value rounded to q's dtype, times weight rounded again,
    rotated in float32). Writes into q and k and returns (q, k), the same tensor objects.
    Bad input raises TypeError/ValueError naming the argument.
    """
    num_tokens, head_dim, max_position = check_rope_args(q, k, positions, cos_sin_cache)
    check_tensor("q_weight", q_weight, ndim=1)
    check_tensor("k_weight", k_weight, ndim=1)
    check_shape("q_weight", q_weight, (head_dim,))
    check_shape("k_weight", k_weight, (head_dim,))
    check_same_device(q=q, q_weight=q_weight, k_weight=k_weight)
    check_same_dtype(q=q, q_weight=q_weight, k_weight=k_weight)
    if num_tokens == 0:
        return q, k
    half_dim = head_dim // 2
    block_q, block_kv = triton.next_power_of_2(q.shape[1]), triton.next_power_of_2(k.shape[1])
    num_warps = 4 if (block_q + block_kv) * half_dim <= 2048 else 8
    _qk_norm_rope_kernel[(num_tokens,)](
        q, q.stride(0), q.stride(1), q.shape[1], q_weight,
        k, k.stride(0), k.stride(1), k.shape[1], k_weight,
        positions, cos_sin_cache, cos_sin_cache.stride(0), max_position, half_dim, eps,
        BLOCK_Q_HEADS=block_q, BLOCK_KV_HEADS=block_kv, BLOCK_HALF=triton.next_power_of_2(half_dim),
        num_warps=num_warps, **dependent_launch_options(q.device),
    )
    return q, k
