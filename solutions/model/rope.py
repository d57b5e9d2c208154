"""Reference for exercise 1.2 (mirrors mili/model/rope.py)."""

import torch
from torch import Tensor


def rope_cos_sin_cache(head_dim: int, max_position: int, theta: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Precompute cos and sin for every position.

    inv_freq[i] = theta ** (-2i / head_dim) for i < head_dim/2; angle[p, i] = p * inv_freq[i].
    Returns [max_position, head_dim] in `dtype`: cos(angle) in [:, :D/2], sin(angle) in [:, D/2:].
    Compute the angles in float32 (positions reach 40k; fp16 would lose them).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def apply_rope(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate every head of q and k by the angle of its token's position.

    q: [T, Hq, D] · k: [T, Hkv, D] · positions: [T] int · cos_sin_cache: [P, D] (see above).
    For each head x with halves x1 = x[..., :D/2], x2 = x[..., D/2:]:
        out = cat(x1*cos - x2*sin, x2*cos + x1*sin)
    Returns new (q, k) in the input dtypes (compute in float32).
    """
    cos, sin = cos_sin_cache[positions.long()].float().unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2] each
    return _rotate(q, cos, sin), _rotate(k, cos, sin)
