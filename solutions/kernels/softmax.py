"""Reference for exercise 2.6 (mirrors mili/kernels/softmax.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.kernels._checks import check_softmax_args
from mili.kernels._triton import tl, triton

# The running maximum starts at the lowest finite float32, not -inf: a block of only -inf entries
# then leaves it finite, and exp(m - m_new) stays exp(0) = 1 instead of exp(-inf + inf) = nan.
LOWEST_FLOAT32 = -3.4028234663852886e38


@triton.jit
def _online_softmax_kernel(
    x_ptr, x_row_stride,    # reads x [R, C]
    out_ptr,                # writes out [R, C] (contiguous)
    num_cols,
    LOWEST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    out_row = out_ptr + row * num_cols
    m = tl.zeros([1], dtype=tl.float32) + LOWEST     # running maximum
    l = tl.zeros([1], dtype=tl.float32)              # running sum of exp(x - m)
    for start in range(0, num_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < num_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, num_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + cols, mask=cols < num_cols, other=float("-inf")).to(tl.float32)
        tl.store(out_row + cols, (tl.exp(x - m) / l).to(out_ptr.dtype.element_ty), mask=cols < num_cols)


def online_softmax(x: Tensor, block_size: int = 1024) -> Tensor:
    """Softmax over each row of x, reading the row block by block, never whole.

    out[r, j] = exp(x[r, j] - m_r) / l_r with m_r = max_j x[r, j] and l_r = sum_j exp(x[r, j] - m_r),
    computed in float32. One program per row walks it in steps of `block_size` columns, keeping a
    running maximum m and a running sum l: a block that raises the maximum to m_new first rescales
    l by exp(m - m_new), then adds its own exp(x - m_new). A second walk writes exp(x - m) / l.
    x: [R, C] float16, bfloat16 or float32; rows may be strided, columns must be contiguous; C need
    not be a multiple of block_size (masked lanes load -inf: they add exp(-inf) = 0 to the sum).
    block_size: columns per step, a power of two from 16 to 65536.
    Returns a new contiguous [R, C] tensor in x's dtype; every row sums to 1. Large entries must not
    overflow (never exponentiate x without subtracting a maximum), very negative rows must not
    underflow to 0/0, and -inf entries (masked scores) get probability 0, even when a whole block
    is -inf; every row needs at least one finite entry.
    Bad input raises (`check_softmax_args` in mili/kernels/_checks.py does it): TypeError for a
    wrong dtype or a non-int block_size; ValueError for a wrong number of dimensions, an empty
    dimension, a block_size out of range or not a power of two, a wrong device or stride.
    Memory: reads 2·R·C elements (statistics, then output), writes R·C.
    """
    num_rows, num_cols = check_softmax_args(x, block_size)
    out = torch.empty((num_rows, num_cols), dtype=x.dtype, device=x.device)
    _online_softmax_kernel[(num_rows,)](x, x.stride(0), out, num_cols, LOWEST=LOWEST_FLOAT32, BLOCK=block_size,
                                        num_warps=4 if block_size <= 2048 else 8)
    return out
