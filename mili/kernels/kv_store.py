"""Writing new keys and values into the paged KV cache, in Triton (chapter 04, exercise 4.2).

Every forward step first stores the K and V of its new tokens, then attention reads them back
from the cache (prefill over a cached prefix, decode). `slot_mapping` says where each token
goes: the flat slot block_id * block_size + offset, or -1 for a token that is not stored.
Memory: reads 2·T·Hkv·D elements, writes the same — a copy, so it should run at copy bandwidth.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._triton import tl, triton  # noqa: F401
from mili.kernels.attention_checks import check_store_args  # noqa: F401


@exercise("4.2", "KV write into the paged cache")
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
    raise NotImplementedError("Exercise 4.2: see chapters/04_attention.ipynb, section 5")
