"""Rotary position embeddings as a Triton kernel, in place on q and k (chapter 02, exercise 2.2).

Neox style ("rotate half"), as chapter 01: element i of each head pairs with element i + D/2.
`cos_sin_cache [max_position, D]` float32 holds cos in [:, :D/2] and sin in [:, D/2:]
(mili.model.rope.rope_cos_sin_cache builds it). Rotating in place reads and writes q and k
once — (Hq + Hkv)·D elements per token each way — plus D floats of the cache per token.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._checks import check_rope_args  # noqa: F401
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.2", "RoPE in Triton (in place on q, k)")
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
    raise NotImplementedError("Exercise 2.2: see chapters/02_kernels.ipynb, section 4")
