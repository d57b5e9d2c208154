"""Reference for exercise 4.2 (mirrors mili/kernels/kv_store.py)."""

from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel
from mili.kernels.attention_checks import check_store_args


@triton.jit
def _store_kvcache_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
                          stride_kt, stride_kh, stride_vt, stride_vh,
                          stride_cache_slot, stride_cache_h, num_kv_heads, head_dim,
                          HEADS_BLOCK: tl.constexpr, DIM_BLOCK: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr):
    """One program per token: reads its [Hkv, D] k and v rows, writes them to its cache slot."""
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, HEADS_BLOCK)[:, None]
    d = tl.arange(0, DIM_BLOCK)[None, :]
    mask = (h < num_kv_heads) & (d < head_dim)
    k = tl.load(k_ptr + token.to(tl.int64) * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + token.to(tl.int64) * stride_vt + h * stride_vh + d, mask=mask)
    cache_offset = slot * stride_cache_slot + h * stride_cache_h + d
    tl.store(k_cache_ptr + cache_offset, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_offset, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kvcache(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write each new token's keys and values into its slot of the paged KV cache, in place.

    k, v: [T, Hkv, D] (fp16/bf16/fp32, last dimension contiguous; rows may be strided, as when they
    are views of the fused qkv projection) · k_cache, v_cache: [num_blocks, block_size, Hkv, D],
    contiguous · slot_mapping: [T] int32/int64. Token t goes to the flat slot s = slot_mapping[t],
    i.e. k_cache[s // block_size, s % block_size] = k[t] (cast to the cache's dtype), and the same
    for v; s = -1 means "do not write" (a padding token). Returns None.
    Bad input raises a clear error: call check_store_args (mili/kernels/attention_checks.py) first.
    Memory: reads 2·T·Hkv·D elements, writes the same; it should run at copy bandwidth.
    """
    check_store_args(k, v, k_cache, v_cache, slot_mapping)
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    _store_kvcache_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2), num_kv_heads, head_dim,
        HEADS_BLOCK=triton.next_power_of_2(num_kv_heads), DIM_BLOCK=triton.next_power_of_2(head_dim),
        **dependent_launch_options(k.device),
    )
