"""RMSNorm as a Triton kernel, alone and fused with the residual add (chapter 02, exercise 2.1).

Every Qwen3 layer normalises twice, and each time first adds the branch output to the residual
stream. Both ops are memory-bound: a few flops per element, so the kernel's speed is the bytes
it moves over the memory bandwidth.
- rms_norm reads x [T, H] and weight [H], writes out [T, H]: 2·T·H elements.
- fused_add_rms_norm reads x, residual and weight, writes out and residual_out: 4·T·H elements,
  where the unfused add + norm would move 5·T·H (the sum is written, then read back).
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
# the launch checks and Triton, for your kernel and launcher
from mili.kernels._checks import (  # noqa: F401
    as_rows, check_block, check_same_device, check_same_dtype, check_shape, check_tensor,
)
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.1", "RMSNorm (+ fused residual add) in Triton")
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square normalisation over the last dimension, one Triton launch.

    x: [..., H] (bf16/fp16/fp32; rows may be strided, the last dimension must be contiguous)
    weight: [H], same dtype and device as x · returns a new contiguous tensor shaped like x.
    out = (x / sqrt(mean(x², -1) + eps)).to(x.dtype) * weight, with the sum of squares
    accumulated in float32 (the same rounding as chapter 01's rms_norm).
    Works for any row count (1 too) and any H up to 65536, powers of two or not.
    Bad input raises: TypeError for a wrong dtype, ValueError for a wrong shape, device or stride
    (the helpers in mili/kernels/_checks.py do this for you).
    Memory: reads T·H + H elements, writes T·H — it should run at copy bandwidth.
    """
    raise NotImplementedError("Exercise 2.1: see chapters/02_kernels.ipynb, section 3")


@exercise("2.1")
def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Add the residual, then normalise the sum, in one pass over memory.

    x, residual: [..., H], same shape, dtype (bf16/fp16/fp32) and device; weight: [H].
    Returns new tensors (out, residual_out), both shaped like x and contiguous:
        residual_out = (x + residual) rounded to x.dtype
        out = rms_norm(residual_out, weight, eps)
    The inputs are not modified. Memory: reads 2·T·H + H elements, writes 2·T·H.
    """
    raise NotImplementedError("Exercise 2.1: see chapters/02_kernels.ipynb, section 3")
