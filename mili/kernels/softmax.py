"""Row softmax with the online max/sum update (chapter 02, exercise 2.6): the second rung towards
FlashAttention.

softmax(x)_j = exp(x_j - max x) / sum_i exp(x_i - max x) seems to need three passes over a row:
the maximum, then the sum, then the output. The online update (Milakov and Gimelshein, 2018)
finds the maximum and the sum together, block by block: whenever a block raises the running
maximum from m to m_new, the running sum is rescaled by exp(m - m_new). FlashAttention (exercise
4.1) applies the same update to a row of attention scores that never exists in memory whole.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._checks import check_softmax_args  # noqa: F401
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.6", "Online softmax in Triton")
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
    raise NotImplementedError("Exercise 2.6: see chapters/02_kernels.ipynb, section 10")
