"""Reference for exercise 2.2 (mirrors mili/kernels/rope.py)."""

from __future__ import annotations

from torch import Tensor

from mili.kernels._checks import check_rope_args
from mili.kernels._triton import tl, triton


@triton.jit
def _head_offsets(head_stride, num_heads, half, half_mask, BLOCK_HEADS: tl.constexpr):
    """Offsets of the first halves of one token's heads [BLOCK_HEADS, BLOCK_HALF], and their mask."""
    heads = tl.arange(0, BLOCK_HEADS)
    return heads[:, None] * head_stride + half[None, :], (heads[:, None] < num_heads) & half_mask[None, :]


@triton.jit
def _rope_kernel(
    q_ptr, q_token_stride, q_head_stride, num_q_heads,      # reads and writes q [T, Hq, D]
    k_ptr, k_token_stride, k_head_stride, num_kv_heads,     # reads and writes k [T, Hkv, D]
    positions_ptr,                                          # reads positions [T]
    cache_ptr, cache_stride, max_position,                  # reads cos_sin_cache [P, D]
    half_dim,
    BLOCK_Q_HEADS: tl.constexpr, BLOCK_KV_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # one program per token: its cos/sin row is loaded once and serves every q and k head
    token = tl.program_id(0).to(tl.int64)
    half = tl.arange(0, BLOCK_HALF)
    half_mask = half < half_dim
    q_ptr += token * q_token_stride
    k_ptr += token * k_token_stride
    q_offs, q_mask = _head_offsets(q_head_stride, num_q_heads, half, half_mask, BLOCK_Q_HEADS)
    k_offs, k_mask = _head_offsets(k_head_stride, num_kv_heads, half, half_mask, BLOCK_KV_HEADS)
    # issue every load before the first store: q and k may alias as far as the compiler knows,
    # so a store between them would hold the k loads back until it is done
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
    tl.store(q_ptr + q_offs, (q1 * cos - q2 * sin).to(dtype), mask=q_mask)
    tl.store(q_ptr + q_offs + half_dim, (q2 * cos + q1 * sin).to(dtype), mask=q_mask)
    tl.store(k_ptr + k_offs, (k1 * cos - k2 * sin).to(dtype), mask=k_mask)
    tl.store(k_ptr + k_offs + half_dim, (k2 * cos + k1 * sin).to(dtype), mask=k_mask)


def apply_rope(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate every head of q and k by its token's position, in place, in one launch.

    q: [T, Hq, D] · k: [T, Hkv, D] — same dtype (bf16/fp16/fp32) and device; each may be a
    strided view (e.g. slices of a fused qkv projection) whose last dimension is contiguous.
    positions: [T] int32/int64, each in [0, max_position) · cos_sin_cache: [max_position, D] float32.
    For each head x with halves x1 = x[..., :D/2], x2 = x[..., D/2:], cos/sin the row of its position:
        x1, x2 <- x1*cos - x2*sin, x2*cos + x1*sin        (computed in float32)
    Writes the result into q and k and returns (q, k), the same tensor objects.
    A position outside [0, max_position) must not make the kernel read outside the table (and
    checking positions on the host would cost a GPU sync per launch): that token's q and k heads
    come back as NaN.
    Bad input raises TypeError/ValueError naming the argument (see mili/kernels/_checks.py).
    """
    num_tokens, head_dim, max_position = check_rope_args(q, k, positions, cos_sin_cache)
    if num_tokens == 0:
        return q, k
    half_dim = head_dim // 2
    block_q, block_kv = triton.next_power_of_2(q.shape[1]), triton.next_power_of_2(k.shape[1])
    num_warps = 4 if (block_q + block_kv) * half_dim <= 2048 else 8
    _rope_kernel[(num_tokens,)](
        q, q.stride(0), q.stride(1), q.shape[1],
        k, k.stride(0), k.stride(1), k.shape[1],
        positions, cos_sin_cache, cos_sin_cache.stride(0), max_position, half_dim,
        BLOCK_Q_HEADS=block_q, BLOCK_KV_HEADS=block_kv, BLOCK_HALF=triton.next_power_of_2(half_dim),
        num_warps=num_warps,
    )
    return q, k
