"""The matrix-vector product of a batch-1 decode step, as a Triton kernel.

At batch 1 every linear layer is y[N] = W[N, K] · x[K]: each weight is read once and used for
two flops, so the product is bound by reading W, and all that matters is streaming W at the
memory's full rate. cuBLAS's GEMM kernels are built for many rows; at one row and the small
shapes of Qwen3-0.6B they reach 0.9-2.5 TB/s on an H100, and for some shapes they split K and
add a second, reducing kernel. This kernel gives each program a couple of whole rows of W and
walks along K, so the loads of every SM are long and contiguous: 1.7-3.2 TB/s on the same
shapes (benchmarks/gemv-probe-h100.json, each product timed back to back, so part of a small
weight may be served from L2). In the engine it took the batch-1 decode step of Qwen3-0.6B
from 1.35 to 1.21 ms on an H100 (benchmarks/latency-h100-qwen3-0.6b-58bc43a.json and
-1d22c47.json). More than one row goes to cuBLAS, where the matrix-matrix
kernels are the right tool.
Memory: reads N·K elements of W and K of x, writes N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel


@triton.jit
def first_weight_tile(w_ptr, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's rows of W [N, K]: (rows, which are < N, their pointers, the columns of the
    first K tile, that tile loaded). W is read-only, so it may be loaded before a dependent wait."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_w
    cols = tl.arange(0, BLOCK_K)
    w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    return rows, row_ok, w_rows, cols, w


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_w, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DEPENDENT_LAUNCH: tl.constexpr):
    """One program: rows [pid·BLOCK_N, +BLOCK_N) of W, dotted with x in float32.

    The loads of W run one tile ahead of the products. Under a dependent launch the first tile is
    requested before waiting for the kernel that writes x: W is read-only, so the first reads of
    the weights overlap the previous kernel (a norm, the activation, attention's combine).
    """
    rows, row_ok, w_rows, cols, w = first_weight_tile(w_ptr, N, K, stride_w, BLOCK_N, BLOCK_K)
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for _ in range(0, K, BLOCK_K):  # cols walks along K
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
        cols += BLOCK_K
        w = tl.load(w_rows + cols[None, :], mask=row_ok[:, None] & (cols < K)[None, :], other=0.0)
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=row_ok)


# the configurations that won on the Qwen3 0.6B and 8B shapes on an H100 (gemv_probe.py)
GEMV_CONFIGS = [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                for n, k, w, s in ((2, 512, 2, 1), (2, 512, 2, 2), (2, 1024, 4, 1), (2, 1024, 4, 3), (8, 1024, 2, 3))]
_gemv_tuned = triton.autotune(configs=GEMV_CONFIGS, key=["N", "K"])(_gemv_kernel)


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x [T, K] · weight [N, K]ᵀ -> [T, N] (no bias): the GEMV kernel for one row, F.linear otherwise."""
    single_row = (x.dim() == 2 and x.shape[0] == 1 and x.stride(-1) == 1 and weight.stride(-1) == 1
                  and x.dtype == weight.dtype and x.device == weight.device)
    if not single_row:
        return F.linear(x, weight)
    n, k = weight.shape
    y = torch.empty(1, n, dtype=x.dtype, device=x.device)
    if x.device.type == "cuda":
        _gemv_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](x, weight, y, n, k, weight.stride(0),
                                                                   **dependent_launch_options(x.device))
    else:  # the interpreter: one small configuration (tuning means timing, and there is no GPU to time)
        _gemv_kernel[(triton.cdiv(n, 2),)](x, weight, y, n, k, weight.stride(0), BLOCK_N=2, BLOCK_K=64,
                                           DEPENDENT_LAUNCH=False)
    return y
