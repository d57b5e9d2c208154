"""Reference for exercise 2.1 (mirrors mili/kernels/rmsnorm.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.kernels._checks import as_rows, check_block, check_same_device, check_same_dtype, check_shape, check_tensor
from mili.kernels._triton import dependent_launch_options, tl, triton, wait_for_previous_kernel

# Launch shape (see _norm_launch): the best of a sweep on an H200 (benchmarks/rmsnorm-h200-sweep.json),
# within 2% of each swept shape's fastest (rows, warps) at hidden 1024 and 4096, 64 to 16384 rows
MAX_ELEMENTS_PER_PROGRAM = 2048  # rows per program stop growing here
MIN_PROGRAMS = 128  # ... and before the grid drops below this many programs
ELEMENTS_PER_THREAD = 32  # num_warps follows from the elements a program holds


@triton.jit(do_not_specialize=["num_rows"])  # the token count changes from step to step
def _rms_norm_kernel(
    x_ptr, x_row_stride,                # reads x [T, H]
    res_ptr, res_row_stride,            # reads residual [T, H] when HAS_RESIDUAL
    weight_ptr,                         # reads weight [H]
    out_ptr, res_out_ptr,               # writes out [T, H] and, when HAS_RESIDUAL, residual_out [T, H] (contiguous)
    num_rows, hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_H: tl.constexpr, DEPENDENT_LAUNCH: tl.constexpr,
):
    wait_for_previous_kernel(DEPENDENT_LAUNCH)
    # one program normalises BLOCK_ROWS whole rows: the row sum needs the row in registers
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows[:, None] < num_rows) & (cols[None, :] < hidden)
    w = tl.load(weight_ptr + cols, mask=cols < hidden, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows[:, None] * res_row_stride + cols[None, :], mask=mask, other=0.0)
        summed = (x + r.to(tl.float32)).to(res_out_ptr.dtype.element_ty)
        tl.store(res_out_ptr + rows[:, None] * hidden + cols[None, :], summed, mask=mask)
        x = summed.to(tl.float32)  # normalise the rounded sum, exactly what the next layer reads
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / hidden + eps)
    normed = (x * rstd[:, None]).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * hidden + cols[None, :], (normed * w[None, :]).to(out_ptr.dtype.element_ty),
             mask=mask)


def _norm_launch(block_h: int, num_rows: int) -> tuple[int, int]:
    """(BLOCK_ROWS, num_warps) for a [num_rows, hidden] norm, hidden padded to block_h.

    Small hidden sizes pack several rows into a program (fewer, fuller programs), doubling the
    rows while a program holds at most MAX_ELEMENTS_PER_PROGRAM elements and the grid keeps
    MIN_PROGRAMS programs; so the choice depends on block_h and a power-of-two bucket of num_rows.
    """
    block_rows = 1
    while 2 * block_rows * block_h <= MAX_ELEMENTS_PER_PROGRAM and num_rows >= 2 * block_rows * MIN_PROGRAMS:
        block_rows *= 2
    num_warps = min(16, max(1, block_rows * block_h // (32 * ELEMENTS_PER_THREAD)))
    return block_rows, num_warps


def _launch_rms_norm(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=1)
    named = {"x": x, "weight": weight} if residual is None else {"x": x, "residual": residual, "weight": weight}
    if residual is not None:
        check_tensor("residual", residual)
        check_shape("residual", residual, tuple(x.shape))
    check_same_device(**named)
    check_same_dtype(**named)
    hidden = x.shape[-1]
    check_shape("weight", weight, (hidden,))
    check_block("hidden size", hidden)

    rows = as_rows("x", x)
    res_rows = as_rows("residual", residual) if residual is not None else rows
    num_rows = rows.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    if num_rows == 0:
        return out, (res_out if residual is not None else None)

    block_h = triton.next_power_of_2(hidden)
    block_rows, num_warps = _norm_launch(block_h, num_rows)
    _rms_norm_kernel[(triton.cdiv(num_rows, block_rows),)](
        rows, rows.stride(0), res_rows, res_rows.stride(0), weight, out, res_out,
        num_rows, hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK_ROWS=block_rows, BLOCK_H=block_h, num_warps=num_warps,
        **dependent_launch_options(x.device),
    )
    return out, (res_out if residual is not None else None)


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
    out, _ = _launch_rms_norm(x, None, weight, eps)
    return out


def fused_add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Add the residual, then normalise the sum, in one pass over memory.

    x, residual: [..., H], same shape, dtype (bf16/fp16/fp32) and device; weight: [H].
    Returns new tensors (out, residual_out), both shaped like x and contiguous:
        residual_out = (x + residual) rounded to x.dtype
        out = rms_norm(residual_out, weight, eps)
    The inputs are not modified. Memory: reads 2·T·H + H elements, writes 2·T·H.
    """
    return _launch_rms_norm(x, residual, weight, eps)
