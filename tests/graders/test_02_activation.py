"""Grader for exercise 2.3 (SiLU-and-mul in Triton). Oracle: plain PyTorch float32 math."""

import pytest
import torch

from mili.kernels.activation import silu_and_mul
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.3")

# On a CUDA machine the kernels run compiled on the GPU; on a CPU, in the Triton interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


def oracle_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.float().chunk(2, dim=-1)
    return (gate / (1.0 + torch.exp(-gate)) * up).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2000), (5, 2 * 96)])
def test_matches_float32_math(dtype, shape):
    x = rand(*shape, dtype=dtype, scale=3.0)
    assert_close(silu_and_mul(x), oracle_silu_and_mul(x), dtype=dtype,
                 what=f"silu_and_mul on {dtype} input of shape {shape}",
                 hint="gate is x[:, :I], up is x[:, I:]; mask columns >= I (I need not be a power of two)")


def test_strided_rows():
    x = rand(4, 2600, scale=2.0)[:, 300:2300]  # [4, 2000] with rows 2600 apart
    assert_close(silu_and_mul(x), oracle_silu_and_mul(x), what="silu_and_mul on rows with stride 2600",
                 hint="find row t at x_ptr + t * x.stride(0); the output is packed, so its rows are I apart")


def test_silu_is_not_sigmoid_or_relu():
    x = torch.tensor([[-4.0, -1.0, 0.5, 3.0, 1.0, 1.0, 1.0, 1.0]], device=DEVICE)
    expected = torch.tensor([[-4.0 / (1 + 2.718281828**4), -1.0 / (1 + 2.718281828), 0.5 / (1 + 2.718281828**-0.5),
                              3.0 / (1 + 2.718281828**-3)]])
    assert_close(silu_and_mul(x), expected, what="silu_and_mul with up = 1",
                 hint="silu(g) = g * sigmoid(g) = g / (1 + exp(-g)); negative gates give small negative outputs")


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        silu_and_mul(rand(2, 7))
    with pytest.raises(ValueError, match="dimensions"):
        silu_and_mul(rand(8))
    with pytest.raises(TypeError, match="dtype"):
        silu_and_mul(rand(2, 8).to(torch.int64))
    with pytest.raises(ValueError, match="contiguous"):
        silu_and_mul(rand(8, 2).t())
