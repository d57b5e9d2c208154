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
