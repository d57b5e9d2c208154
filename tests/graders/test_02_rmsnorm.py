"""Grader for exercise 2.1 (RMSNorm and fused add + RMSNorm in Triton).

Oracle: plain PyTorch float32 math written out here. On a CPU the kernels run in the Triton
interpreter, so the sizes are small but awkward: hidden 1000 (not a power of two), one row,
strided rows, three dtypes.
"""

import pytest
import torch

from mili.kernels.rmsnorm import fused_add_rms_norm, rms_norm
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.1")

# On a CUDA machine the kernels run compiled on the GPU; on a CPU, in the Triton interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = 1e-6


def oracle_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normed = (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (normed.float() * weight.float()).to(x.dtype)


def weight_for(hidden: int, dtype: torch.dtype) -> torch.Tensor:
    return (rand(hidden, name="weight") + 1.0).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1000), (6, 1000), (2, 3, 64)])
def test_rms_norm_matches_float32_math(dtype, shape):
    x = rand(*shape, dtype=dtype, scale=3.0)
    w = weight_for(shape[-1], dtype)
    got = rms_norm(x, w, EPS)
    assert_close(got, oracle_rms_norm(x, w, EPS), dtype=dtype, scale=2.0,
                 what=f"rms_norm on {dtype} input of shape {shape}",
                 hint="mask the columns past H (BLOCK_H is a power of two, H may not be) and load them as 0 "
                      "so they add nothing to the sum of squares; divide by H, not BLOCK_H")


def test_rms_norm_strided_rows():
    base = rand(5, 1536, scale=2.0)
    x = base[:, 200:1200]  # rows 1536 elements apart, 1000 wide
    w = weight_for(1000, torch.float32)
    assert_close(rms_norm(x, w, EPS), oracle_rms_norm(x, w, EPS), what="rms_norm on rows with stride 1536",
                 hint="step from row to row with x.stride(0), not with H: a slice of a wider tensor is not packed")


def test_rms_norm_rows_are_independent():
    x = rand(4, 96, scale=2.0)
    x[2] *= 100.0
    w = torch.ones(96, device=DEVICE)
    assert_close(rms_norm(x, w, EPS), oracle_rms_norm(x, w, EPS), what="rms_norm with one large row",
                 hint="reduce over axis 1 (the columns) so each row gets its own scale")


def test_rms_norm_uses_eps():
    x = torch.full((2, 40), 1e-3, device=DEVICE) + rand(2, 40, scale=1e-4)
    w = torch.ones(40, device=DEVICE)
    assert_close(rms_norm(x, w, 0.5), oracle_rms_norm(x, w, 0.5), what="rms_norm of tiny inputs with eps=0.5",
                 hint="eps goes inside the square root: rsqrt(mean(x^2) + eps)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5])
def test_fused_add_rms_norm_matches_float32_math(dtype, rows):
    x, residual = rand(rows, 1000, dtype=dtype, scale=2.0), rand(rows, 1000, dtype=dtype, name="residual")
    x_before, residual_before = x.clone(), residual.clone()
    w = weight_for(1000, dtype)
    got = fused_add_rms_norm(x, residual, w, EPS)
    assert isinstance(got, tuple) and len(got) == 2, "fused_add_rms_norm must return (out, residual_out)"
    out, residual_out = got
    summed = (x_before.float() + residual_before.float()).to(dtype)
    assert_close(residual_out, summed, dtype=dtype, what=f"residual_out ({dtype}, {rows} rows)",
                 hint="residual_out is x + residual, added in float32 and stored in x's dtype")
    assert_close(out, oracle_rms_norm(summed, w, EPS), dtype=dtype, scale=2.0, what=f"out ({dtype}, {rows} rows)",
                 hint="normalise the sum x + residual (as rounded to x's dtype), not x alone")
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), \
        "fused_add_rms_norm must not modify its inputs: write to new tensors"


def test_fused_add_rms_norm_strided_rows():
    x = rand(3, 2000, scale=2.0)[:, ::2].contiguous()  # packed
    residual = rand(3, 1200, name="residual")[:, 100:1100]  # strided rows
    w = weight_for(1000, torch.float32)
    out, residual_out = fused_add_rms_norm(x, residual, w, EPS)
    summed = x + residual
    assert_close(residual_out, summed, what="residual_out with a strided residual",
                 hint="x and residual may have different row strides: pass and use each one's stride(0)")
    assert_close(out, oracle_rms_norm(summed, w, EPS), what="out with a strided residual")


def test_bad_input_raises_clear_errors():
    x, w = rand(2, 64), torch.ones(64, device=DEVICE)
    with pytest.raises(ValueError, match="weight"):
        rms_norm(x, torch.ones(32, device=DEVICE), EPS)
    with pytest.raises(TypeError, match="x"):
        rms_norm(x.to(torch.int32), w, EPS)
    with pytest.raises(TypeError, match="dtype"):
        rms_norm(x, w.to(torch.float16), EPS)
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm(rand(64, 2).t(), w, EPS)
    with pytest.raises(ValueError, match="device"):
        rms_norm(x, torch.ones(64, device="meta"), EPS)
    with pytest.raises(ValueError, match="residual"):
        fused_add_rms_norm(x, rand(3, 64), w, EPS)
