"""A tiled matrix product with tl.dot (chapter 02, exercise 2.5): the first rung towards FlashAttention.

The kernels of exercises 2.1-2.4 move bytes and do almost no arithmetic. A matrix product is the
opposite: C = A @ B does 2·M·N·K flops on M·K + K·N + M·N elements, so a kernel that reuses each
tile it loads can keep the GPU's matrix units busy. One program owns a [BLOCK_M, BLOCK_N] tile of
C, walks K in steps of BLOCK_K, and multiplies a [BLOCK_M, BLOCK_K] tile of A by a
[BLOCK_K, BLOCK_N] tile of B with `tl.dot`, accumulating in float32 registers. FlashAttention
(exercise 4.1) is this loop with a softmax (exercise 2.6) between two such products.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._checks import check_matmul_args  # noqa: F401
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.5", "Tiled matrix product with tl.dot")
def tiled_matmul(a: Tensor, b: Tensor) -> Tensor:
    """C = a @ b in one Triton launch: one program per [BLOCK_M, BLOCK_N] tile of C.

    a: [M, K], b: [K, N]: same dtype (float16, bfloat16 or float32) and device, any strides (b may
    be a transposed view such as `weight.t()`: address element (k, n) as k·stride(0) + n·stride(1)).
    Returns a new contiguous [M, N] tensor in a's dtype. Each program walks K in BLOCK_K steps and
    accumulates tl.dot products in float32; float32 inputs are multiplied at full precision
    (`tl.dot(..., input_precision="ieee")`: a GPU's default, TF32, keeps 10 mantissa bits).
    Any M, N, K >= 1, multiples of the block sizes or not: lanes past an edge are masked and load 0,
    so they add nothing to the sum. Block sizes are at least 16 (tl.dot's smallest tile).
    Bad input raises (`check_matmul_args` in mili/kernels/_checks.py does it): TypeError for a
    non-tensor or a wrong or mismatched dtype; ValueError for a wrong number of dimensions, inner
    dimensions that differ, an empty dimension, or a wrong device.
    Memory: reads every tile of a N / BLOCK_N times and every tile of b M / BLOCK_M times, writes M·N.
    """
    raise NotImplementedError("Exercise 2.5: see chapters/02_kernels.ipynb, section 9")
