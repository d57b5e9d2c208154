"""Reference for exercise 2.5 (mirrors mili/kernels/matmul.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.kernels._checks import check_matmul_args
from mili.kernels._triton import tl, triton

# (BLOCK_M, BLOCK_N, BLOCK_K): 64x64 tiles keep a GPU's tensor cores fed without spilling registers;
# under the CPU interpreter the smallest tiles tl.dot takes run fastest.
GPU_BLOCKS = (64, 64, 32)
INTERPRETER_BLOCKS = (16, 16, 16)


@triton.jit
def _matmul_kernel(
    a_ptr, stride_am, stride_ak,    # reads a [M, K]
    b_ptr, stride_bk, stride_bn,    # reads b [K, N]
    c_ptr,                          # writes c [M, N] (contiguous)
    M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(rows[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks[:, None] < K) & (cols[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rows[:, None] < M) & (cols[None, :] < N))


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
    m, n, k = check_matmul_args(a, b)
    c = torch.empty((m, n), dtype=a.dtype, device=a.device)
    block_m, block_n, block_k = GPU_BLOCKS if a.device.type == "cuda" else INTERPRETER_BLOCKS
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _matmul_kernel[grid](a, a.stride(0), a.stride(1), b, b.stride(0), b.stride(1), c, m, n, k,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4)
    return c
