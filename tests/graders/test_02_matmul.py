"""Grader for exercise 2.5 (tiled matrix product with tl.dot).

Oracle: torch's float64 matrix product of the same inputs (exact for float16 and float32 inputs
up to the final rounding). On a CPU the kernel runs in the Triton interpreter, where tl.dot on
bfloat16 is wrong, so bfloat16 is checked on CUDA only. Shapes are small but never multiples of 16.
"""

import pytest
import torch

from mili.kernels.matmul import tiled_matmul
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.5")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


def oracle_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() @ b.double()).to(a.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (16, 16, 16), (33, 50, 47), (5, 70, 3), (70, 24, 20)])
def test_matches_float64_math(dtype, m, k, n):
    a, b = rand(m, k, dtype=dtype, name="a"), rand(k, n, dtype=dtype, name="b")
    assert_close(tiled_matmul(a, b), oracle_matmul(a, b), dtype=dtype, scale=2.0,
                 what=f"tiled_matmul of {dtype} a {tuple(a.shape)} @ b {tuple(b.shape)}",
                 hint="one program per (row tile, column tile) of C: rows from tl.program_id(0), columns from "
                      "tl.program_id(1); add every K step's tl.dot into the same float32 accumulator")


def test_lanes_past_k_add_nothing():
    a = torch.ones(2, 17, device=DEVICE)
    b = torch.ones(17, 3, device=DEVICE)
    assert_close(tiled_matmul(a, b), torch.full((2, 3), 17.0), what="ones [2, 17] @ ones [17, 3] (every entry is 17)",
                 hint="K = 17 is not a multiple of BLOCK_K: mask the k lanes >= K in both loads and load them as 0 "
                      "(other=0.0), so the padded products add nothing")


def test_strided_and_transposed_inputs():
    a = rand(20, 64, name="a")[:, 5:45]       # [20, 40], rows 64 apart
    weight = rand(30, 40, name="weight")      # a linear layer's weight [N, K] ...
    b = weight.t()                            # ... used as b [K, N]: strides (1, 40)
    assert_close(tiled_matmul(a, b), oracle_matmul(a, b), scale=2.0,
                 what="tiled_matmul of a column slice (stride 64) @ a transposed weight (strides (1, 40))",
                 hint="address a[m, k] at m * a.stride(0) + k * a.stride(1) and b[k, n] at k * b.stride(0) + "
                      "n * b.stride(1); never assume a row is K (or N) elements long")


def test_accumulates_in_float32():
    a = torch.full((16, 512), 0.3, dtype=torch.float16, device=DEVICE)
    a[:, :16] = 62.5                          # the first K step alone sums to 1000
    b = torch.ones(512, 16, dtype=torch.float16, device=DEVICE)
    assert_close(tiled_matmul(a, b), oracle_matmul(a, b), dtype=torch.float16,
                 what="float16 [16, 512] @ ones: 1000 from the first 16 columns, then 496 terms of 0.3",
                 hint="keep the accumulator in float32 across all K steps (tl.zeros(..., dtype=tl.float32)) and "
                      "cast only the final tile to the output dtype: a float16 running sum near 1000 rounds "
                      "every added 0.3 * 16 to a multiple of 0.5")


def test_float32_is_not_rounded_to_tf32():
    a = torch.full((16, 16), 1.0 + 2.0 ** -12, device=DEVICE)
    b = torch.ones(16, 16, device=DEVICE)
    assert_close(tiled_matmul(a, b), oracle_matmul(a, b), what="float32 (1 + 2^-12) @ ones: TF32 would drop the 2^-12",
                 hint='pass input_precision="ieee" to tl.dot: on a GPU its default for float32 is TF32, '
                      "which keeps 10 mantissa bits")


def test_output_is_a_new_contiguous_tensor_in_the_input_dtype():
    a, b = rand(3, 20, dtype=torch.float16, name="a"), rand(20, 5, dtype=torch.float16, name="b")
    c = tiled_matmul(a, b)
    assert c.dtype == torch.float16 and tuple(c.shape) == (3, 5) and c.is_contiguous(), (
        f"expected a contiguous float16 [3, 5] tensor, got {c.dtype} {tuple(c.shape)} contiguous={c.is_contiguous()}; "
        f"hint: allocate C with torch.empty((M, N), dtype=a.dtype) and cast the float32 accumulator when storing")


def test_bad_input_raises_clear_errors():
    a, b = rand(4, 8), rand(8, 3)
    with pytest.raises(ValueError, match="inner dimensions"):
        tiled_matmul(a, rand(7, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        tiled_matmul(rand(2, 4, 8), b)
    with pytest.raises(TypeError, match="dtype"):
        tiled_matmul(a, b.to(torch.float16))
    with pytest.raises(TypeError, match="dtype"):
        tiled_matmul(a.to(torch.int64), b.to(torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        tiled_matmul(a, [[1.0]])
    with pytest.raises(ValueError, match="at least 1"):
        tiled_matmul(rand(0, 8), b)
