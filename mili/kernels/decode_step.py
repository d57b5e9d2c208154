"""q/k RMSNorm, RoPE and the K/V store of one decoding token, in one kernel (the engine's own).

At batch 1 a decode step of a small model is a chain of about ten kernels per layer, most of
them tiny: each costs its launch and a few dependent memory round trips, whatever little it
computes. `mili.engine.fused_step` runs the batch-1 step with this kernel in place of two: the
fused q/k norm + RoPE of exercise 2.4 and the K/V store of exercise 4.2. It gives their numbers
(the tests check it); the exercises stay the path of every other step.
"""

from __future__ import annotations

from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel


@triton.jit
def _normed_rotated(x1, x2, weight_ptr, cos, sin, half, half_dim, eps, dtype):
    """RMSNorm over head_dim of heads given as halves [heads, D/2] x 2, then RoPE, rounded where
    rms_norm and apply_rope round (the normalised value, its product with the weight, the rotation)."""
    w1 = tl.load(weight_ptr + half).to(tl.float32)[None, :]
    w2 = tl.load(weight_ptr + half_dim + half).to(tl.float32)[None, :]
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half_dim) + eps)[:, None]
    n1 = ((x1 * rstd).to(dtype).to(tl.float32) * w1).to(dtype).to(tl.float32)
    n2 = ((x2 * rstd).to(dtype).to(tl.float32) * w2).to(dtype).to(tl.float32)
    return (n1 * cos - n2 * sin).to(dtype), (n2 * cos + n1 * sin).to(dtype)


@triton.jit
def _qk_norm_rope_store_kernel(
    qkv_ptr,                                        # reads qkv [1, (Hq + 2·Hkv)·D]; writes q back in place
    q_weight_ptr, k_weight_ptr,                     # reads [D] each
    positions_ptr, slot_ptr,                        # reads positions [1], slot_mapping [1]
    cos_sin_ptr, cos_sin_stride,                    # reads cos_sin_cache [P, D]
    k_cache_ptr, v_cache_ptr,                       # writes one slot of each [N, S, Hkv, D] (contiguous)
    eps,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HALF: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    dtype = qkv_ptr.dtype.element_ty
    half = tl.arange(0, HALF)
    head_dim = 2 * HALF
    q_offs = tl.arange(0, NUM_Q_HEADS)[:, None] * head_dim + half[None, :]
    kv_offs = tl.arange(0, NUM_KV_HEADS)[:, None] * head_dim + half[None, :]
    k_ptr = qkv_ptr + NUM_Q_HEADS * head_dim
    v_ptr = k_ptr + NUM_KV_HEADS * head_dim
    row = cos_sin_ptr + tl.load(positions_ptr).to(tl.int64) * cos_sin_stride
    cos = tl.load(row + half)[None, :]
    sin = tl.load(row + HALF + half)[None, :]
    q1, q2 = _normed_rotated(tl.load(qkv_ptr + q_offs).to(tl.float32), tl.load(qkv_ptr + q_offs + HALF).to(tl.float32),
                             q_weight_ptr, cos, sin, half, HALF, eps, dtype)
    k1, k2 = _normed_rotated(tl.load(k_ptr + kv_offs).to(tl.float32), tl.load(k_ptr + kv_offs + HALF).to(tl.float32),
                             k_weight_ptr, cos, sin, half, HALF, eps, dtype)
    tl.store(qkv_ptr + q_offs, q1)
    tl.store(qkv_ptr + q_offs + HALF, q2)
    slot = tl.load(slot_ptr)
    if slot >= 0:  # -1: a padding row, nothing stored
        at = slot * (NUM_KV_HEADS * head_dim) + kv_offs
        tl.store(k_cache_ptr + at, k1.to(k_cache_ptr.dtype.element_ty))
        tl.store(k_cache_ptr + at + HALF, k2.to(k_cache_ptr.dtype.element_ty))
        v1, v2 = tl.load(v_ptr + kv_offs), tl.load(v_ptr + kv_offs + HALF)
        tl.store(v_cache_ptr + at, v1.to(v_cache_ptr.dtype.element_ty))
        tl.store(v_cache_ptr + at + HALF, v2.to(v_cache_ptr.dtype.element_ty))


def qk_norm_rope_store(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, eps: float, positions: Tensor,
                       cos_sin_cache: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> Tensor:
    """One token's attention inputs from its qkv projection, in one launch.

    qkv: [1, (Hq + 2·Hkv)·D], contiguous (q heads, then k heads, then v heads) · q_weight, k_weight: [D]
    positions [1] (within the cache's P positions, as the engine's are), slot_mapping [1] (-1: store
    nothing) · cos_sin_cache [P, D] float32 ·
    k_cache, v_cache: [N, S, Hkv, D], contiguous. Normalises and rotates q in place (qk_norm_rope),
    and writes the normalised, rotated k and the v of the token into its slot (store_kvcache).
    Hq and Hkv must be powers of two and D even. Returns q as a [1, Hq, D] view of qkv.
    Memory: reads and writes (Hq + 2·Hkv)·D elements.
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    num_q_heads = qkv.shape[1] // head_dim - 2 * num_kv_heads
    if qkv.dim() != 2 or qkv.shape[0] != 1 or not qkv.is_contiguous() or num_q_heads < 1:
        raise ValueError(f"qkv must be one contiguous row [1, (Hq + 2·Hkv)·D] with D={head_dim}, "
                         f"Hkv={num_kv_heads}, got {tuple(qkv.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("qk_norm_rope_store needs contiguous caches")
    if any(n & (n - 1) for n in (num_q_heads, num_kv_heads, head_dim // 2)):
        raise ValueError(f"qk_norm_rope_store needs power-of-two head counts and D/2, got Hq={num_q_heads}, "
                         f"Hkv={num_kv_heads}, D={head_dim}")
    _qk_norm_rope_store_kernel[(1,)](
        qkv, q_weight, k_weight, positions, slot_mapping, cos_sin_cache, cos_sin_cache.stride(0), k_cache, v_cache,
        eps, NUM_Q_HEADS=num_q_heads, NUM_KV_HEADS=num_kv_heads, HALF=head_dim // 2,
        num_warps=4, **dependent_launch_options(qkv.device))
    return qkv[:, :num_q_heads * head_dim].view(1, num_q_heads, head_dim)
