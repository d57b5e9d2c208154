"""SiLU-and-mul, the SwiGLU activation, as a Triton kernel (chapter 02, exercise 2.3).

Qwen3's MLP projects to [gate | up] in one matmul (gate_up, [T, 2I]) and multiplies
silu(gate) by up before the down projection. Fusing the two elementwise ops reads 2·T·I
elements and writes T·I once, instead of materialising silu(gate) in between.
"""

from __future__ import annotations

from torch import Tensor

from mili.exercise import exercise
from mili.kernels._checks import check_same_device, check_tensor  # noqa: F401
from mili.kernels._triton import tl, triton  # noqa: F401


@exercise("2.3", "SiLU-and-mul in Triton")
def silu_and_mul(x: Tensor) -> Tensor:
    """out = silu(x[:, :I]) * x[:, I:] where silu(g) = g * sigmoid(g), computed in float32.

    x: [T, 2I] (bf16/fp16/fp32; rows may be strided, the last dimension must be contiguous)
    returns a new contiguous [T, I] tensor in x's dtype. Any T (1 too), any I (not only powers of two).
    Bad input raises: TypeError for a wrong dtype, ValueError for an odd last dimension, a wrong
    number of dimensions, a wrong device or stride.
    Memory: reads 2·T·I elements, writes T·I.
    """
    raise NotImplementedError("Exercise 2.3: see chapters/02_kernels.ipynb, section 5")
