"""Grader for exercise 2.6 (row softmax with the online max/sum update).

Oracle: torch.softmax in float64. Rows are a few blocks wide (block_size 16 or 64) so the
running maximum and sum are updated several times per row; the cases target the update itself
(a maximum that arrives late), the masked tail, and numerics (huge, very negative and -inf rows).
"""

import pytest
import torch

from mili.kernels.softmax import online_softmax
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("2.6")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand(*shape, **kwargs) -> torch.Tensor:
    return randn(*shape, device=DEVICE, **kwargs)


def oracle_softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.double(), dim=-1).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block_size", [((1, 1), 16), ((3, 16), 16), ((4, 50), 16), ((2, 300), 64),
                                              ((5, 40), 1024)])
def test_matches_float64_softmax(dtype, shape, block_size):
    x = rand(*shape, dtype=dtype, scale=4.0)
    assert_close(online_softmax(x, block_size), oracle_softmax(x), dtype=dtype,
                 what=f"online_softmax of {dtype} {shape} with block_size {block_size}",
                 hint="one program per row; walk the row in block_size steps, m_new = max(m, max(block)), "
                      "l = l * exp(m - m_new) + sum(exp(block - m_new)); then a second walk writes exp(x - m) / l")


def test_a_maximum_that_arrives_late_rescales_the_sum():
    x = torch.arange(64, dtype=torch.float32, device=DEVICE).repeat(2, 1) / 4  # each block's maximum beats the last
    assert_close(online_softmax(x, 16), oracle_softmax(x), what="online_softmax of an increasing row, block_size 16",
                 hint="when a block raises the maximum from m to m_new, the sum so far was taken relative to m: "
                      "multiply it by exp(m - m_new) before adding the block's exp(x - m_new)")


def test_masked_tail_lanes_add_nothing():
    x = torch.zeros(3, 17, device=DEVICE)
    assert_close(online_softmax(x, 16), torch.full((3, 17), 1 / 17), what="online_softmax of zeros [3, 17] (1/17 each)",
                 hint="17 columns in blocks of 16: the second block has 15 lanes past the row's end; load them with "
                      "other=-inf so exp(-inf - m) = 0 adds nothing (other=0 would count them as real entries)")


def test_huge_and_very_negative_rows_stay_finite():
    base = rand(4, 40, scale=2.0)
    x = base + torch.tensor([[0.0], [1000.0], [-1000.0], [-1e30]], device=DEVICE)
    got = online_softmax(x, 16)
    assert torch.isfinite(got).all(), (
        f"online_softmax returned {int((~torch.isfinite(got)).sum())} NaN/inf values for rows offset by +1000, -1000 "
        f"and -1e30; hint: always exponentiate x - m with m the running maximum (exp(1000) overflows), and start m "
        f"below any real entry, not at 0 (exp(-1000 - 0) underflows to 0 and the row becomes 0/0)")
    assert_close(got, oracle_softmax(x), what="online_softmax of rows offset by 0, +1000, -1000, -1e30",
                 hint="softmax is shift-invariant: subtracting the row's maximum changes nothing but the range")


def test_minus_infinity_entries_get_zero_probability():
    x = rand(3, 48, scale=2.0)
    x[0, :16] = float("-inf")       # a whole first block masked, as a causal mask does to a tile
    x[1, 1::2] = float("-inf")
    x[2, 16:] = float("-inf")       # only the first block is real
    got = online_softmax(x, 16)
    assert torch.isfinite(got).all(), (
        "online_softmax returned NaN/inf for rows with -inf entries (row 0: a whole first block of -inf); hint: if "
        "m starts at -inf, a block of only -inf leaves m_new = -inf and exp(m - m_new) = exp(-inf + inf) = nan: "
        "start m at the lowest finite float32 (-3.4028234663852886e38) or guard the rescale")
    assert_close(got, oracle_softmax(x), what="online_softmax with -inf entries",
                 hint="-inf entries get probability exactly 0; the others share 1")


def test_strided_rows():
    x = rand(4, 80, scale=3.0)[:, 10:60]  # [4, 50], rows 80 apart
    assert_close(online_softmax(x, 16), oracle_softmax(x), what="online_softmax on rows with stride 80",
                 hint="find row r at x_ptr + r * x.stride(0); the output is packed, so its rows are C apart")


def test_output_is_a_new_contiguous_tensor_in_the_input_dtype():
    x = rand(2, 20, dtype=torch.float16)
    out = online_softmax(x, 16)
    assert out.dtype == torch.float16 and tuple(out.shape) == (2, 20) and out.is_contiguous(), (
        f"expected a contiguous float16 [2, 20] tensor, got {out.dtype} {tuple(out.shape)} "
        f"contiguous={out.is_contiguous()}; hint: allocate with torch.empty((R, C), dtype=x.dtype)")
    assert out.data_ptr() != x.data_ptr(), "online_softmax must return a new tensor, not overwrite x"


def test_bad_input_raises_clear_errors():
    x = rand(2, 20)
    with pytest.raises(ValueError, match="power of two"):
        online_softmax(x, 24)
    with pytest.raises(ValueError, match="power of two"):
        online_softmax(x, 8)
    with pytest.raises(TypeError, match="block_size"):
        online_softmax(x, 16.0)
    with pytest.raises(ValueError, match="dimensions"):
        online_softmax(rand(2, 3, 20), 16)
    with pytest.raises(TypeError, match="dtype"):
        online_softmax(x.to(torch.int32), 16)
    with pytest.raises(ValueError, match="contiguous"):
        online_softmax(rand(20, 2).t(), 16)
    with pytest.raises(ValueError, match="at least one"):
        online_softmax(rand(0, 20), 16)
