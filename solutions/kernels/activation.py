"""Reference for exercise 2.3 (mirrors mili/kernels/activation.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.kernels._checks import check_same_device, check_tensor
from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel

SILU_BLOCK = 1024  # columns per program: one 16-byte vector per thread with 4 warps in bf16


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, x_row_stride,    # reads x [T, 2I]: gate in [:, :I], up in [:, I:]
    out_ptr,                # writes out [T, I] (contiguous)
    inter, blocks_per_row,
    BLOCK: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    # consecutive programs take consecutive column blocks of one row, so the GPU sweeps memory in order
    pid = tl.program_id(0)
    row = (pid // blocks_per_row).to(tl.int64)
    cols = (pid % blocks_per_row) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * inter + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: Tensor) -> Tensor:
    """out = silu(x[:, :I]) * x[:, I:] where silu(g) = g * sigmoid(g), computed in float32.

    x: [T, 2I] (bf16/fp16/fp32; rows may be strided, the last dimension must be contiguous)
    returns a new contiguous [T, I] tensor in x's dtype. Any T (1 too), any I (not only powers of two).
    Bad input raises: TypeError for a wrong dtype, ValueError for an odd last dimension, a wrong
    number of dimensions, a wrong device or stride.
    Memory: reads 2·T·I elements, writes T·I.
    """
    check_tensor("x", x, ndim=2)
    check_same_device(x=x)
    num_tokens, width = x.shape
    if width % 2:
        raise ValueError(f"x must be [T, 2I] (gate then up), but its last dimension {width} is odd")
    inter = width // 2
    out = torch.empty((num_tokens, inter), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block = min(SILU_BLOCK, triton.next_power_of_2(inter))
    blocks_per_row = triton.cdiv(inter, block)
    _silu_and_mul_kernel[(num_tokens * blocks_per_row,)](x, x.stride(0), out, inter, blocks_per_row, BLOCK=block,
                                                         num_warps=4, **dependent_launch_options(x.device))
    return out
