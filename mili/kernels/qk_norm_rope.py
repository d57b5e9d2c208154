"""Per-head q/k RMSNorm and RoPE fused in one pass (chapter 02, exercise 2.4, stretch).

Qwen3 normalises every query and key head (q_norm, k_norm over head_dim) right before the
rotary embedding. Done separately that is three passes over q and k (norm q, norm k, rotate
both); fused, each head is read once, normalised and rotated in registers, and written back
in place: (Hq + Hkv)·D elements read and written per token, the same bytes as RoPE alone.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
# the launch checks and Triton, for your kernel and launcher
from mili.kernels._checks import (  # noqa: F401
    check_rope_args, check_same_device, check_same_dtype, check_shape, check_tensor,
)
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.4", "Fused q/k RMSNorm + RoPE in Triton (stretch)")
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
    raise NotImplementedError("Exercise 2.4: see chapters/02_kernels.ipynb, section 6")
