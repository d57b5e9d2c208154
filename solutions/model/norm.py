"""Reference for exercise 1.1 (mirrors mili/model/norm.py)."""

import torch
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square normalisation over the last dimension.

    x: [..., H] (bf16/fp16/fp32) · weight: [H] · returns [..., H] in x's dtype.
    out = x / sqrt(mean(x², -1) + eps) * weight, computed in float32 and cast back at the end
    (as Hugging Face's Qwen3RMSNorm does: normalise in float32, cast to x's dtype, then scale).
    """
    x32 = x.to(torch.float32)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)
