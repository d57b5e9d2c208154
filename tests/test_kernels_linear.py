"""The batch-1 matrix-vector kernel (mili/kernels/linear.py) gives F.linear's product."""

import pytest
import torch
import torch.nn.functional as F

from mili.kernels.linear import linear
from mili.testing import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU the kernel runs in the interpreter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k", [(37, 150), (64, 64), (5, 1000)])
def test_one_row_matches_f_linear(n, k, dtype):
    gen = torch.Generator().manual_seed(n * k)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(DEVICE, dtype)
    x = torch.randn(1, k, generator=gen).to(DEVICE, dtype)
    expected = F.linear(x.float(), weight.float())
    got = linear(x, weight)
    assert got.shape == (1, n) and got.dtype == dtype
    assert_close(got, expected.to(dtype), dtype=dtype, scale=2.0, what=f"linear of one row, N={n}, K={k}")


def test_strided_weight_rows_and_many_rows():
    weight = torch.randn(24, 80, device=DEVICE)[:, :48]  # rows 80 apart, as a slice of a fused weight
    x = torch.randn(1, 48, device=DEVICE)
    assert_close(linear(x, weight), F.linear(x, weight), dtype=torch.float32, what="linear over strided rows")
    rows = torch.randn(3, 48, device=DEVICE)
    assert torch.equal(linear(rows, weight), F.linear(rows, weight)), "several rows go to F.linear unchanged"


@pytest.mark.parametrize("n,k", [(12, 96), (10, 2100)])
def test_every_configuration_the_autotuner_may_pick_gives_the_same_products(n, k):
    """On a GPU the kernel is autotuned over GEMV_CONFIGS: each tiling (rows per program, columns
    per tile, 1 to 8 rows, 512 to 2048 columns, masked past N and K) must compute what the
    interpreter's own tiling computes, for a plain product, the fused pre-norm and SiLU output."""
    from mili.kernels._triton import triton
    from mili.kernels.linear import GEMV_CONFIGS, _gemv_kernel, _launch_gemv

    gen = torch.Generator().manual_seed(n + k)
    x, residual = torch.randn(1, k, generator=gen).to(DEVICE), torch.randn(1, k, generator=gen).to(DEVICE)
    norm_weight = (torch.rand(k, generator=gen) + 0.5).to(DEVICE)
    weight = (torch.randn(2 * n, k, generator=gen) / k ** 0.5).to(DEVICE)
    for input_kind, output in (("plain", "plain"), ("add_rms_norm", "plain"), ("add_rms_norm", "silu_and_mul")):
        rows = n if output == "silu_and_mul" else 2 * n
        expected, _ = _launch_gemv(x, weight, input_kind, residual, norm_weight, 1e-6, output)
        for config in GEMV_CONFIGS:
            block_n, block_k = config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
            y, residual_out = torch.empty(1, rows, device=DEVICE), torch.empty(1, k, device=DEVICE)
            _gemv_kernel[(triton.cdiv(rows, block_n),)](
                x, weight, y, rows, k, weight.stride(0), residual, norm_weight, residual_out, 1e-6, x, 0,
                INPUT=input_kind,
                BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_H=triton.next_power_of_2(k), DEPENDENT_LAUNCH=False,
                OUTPUT=output)
            assert_close(y, expected, dtype=torch.float32,
                         what=f"{input_kind} -> {output} with BLOCK_N={block_n}, BLOCK_K={block_k}")
