"""Rotary position embeddings, neox style (chapter 01, exercise 1.2).

The cache holds cos and sin of every position once: `cos_sin_cache [max_position, head_dim]`,
cos in the first half of the last dimension, sin in the second. Rotation pairs element i with
element i + D/2 of each head ("rotate half"), as Hugging Face's Qwen3 does.
"""

import torch
from torch import Tensor

from mili.exercise import exercise


@exercise("1.2", "Rotary embeddings (cos/sin cache + apply)")
def rope_cos_sin_cache(head_dim: int, max_position: int, theta: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Precompute cos and sin for every position.

    inv_freq[i] = theta ** (-2i / head_dim) for i < head_dim/2; angle[p, i] = p * inv_freq[i].
    Returns [max_position, head_dim] in `dtype`: cos(angle) in [:, :D/2], sin(angle) in [:, D/2:].
    Compute the angles in float32 (positions reach 40k; fp16 would lose them).
    """
    raise NotImplementedError("Exercise 1.2: see chapters/01_project_overview.ipynb, section 4")


@exercise("1.2")
def apply_rope(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate every head of q and k by the angle of its token's position.

    q: [T, Hq, D] · k: [T, Hkv, D] · positions: [T] int · cos_sin_cache: [P, D] (see above).
    For each head x with halves x1 = x[..., :D/2], x2 = x[..., D/2:]:
        out = cat(x1*cos - x2*sin, x2*cos + x1*sin)
    Returns new (q, k) in the input dtypes (compute in float32).
    """
    raise NotImplementedError("Exercise 1.2: see chapters/01_project_overview.ipynb, section 4")
