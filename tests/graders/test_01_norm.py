"""Grader for exercise 1.1 (RMSNorm). Oracle: Hugging Face's Qwen3RMSNorm and plain float64 math."""

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from mili.model.norm import rms_norm
from mili.testing import assert_close, randn

pytestmark = pytest.mark.exercise("1.1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 64), (7, 1000), (3, 5, 128)])
def test_matches_hugging_face(dtype, shape):
    x = randn(*shape, dtype=dtype, scale=3.0)
    oracle = Qwen3RMSNorm(shape[-1], eps=1e-6)
    with torch.no_grad():
        oracle.weight.copy_(randn(shape[-1], name="weight") + 1.0)
        expected = oracle.to(dtype)(x)
    got = rms_norm(x, oracle.weight.detach().to(dtype), 1e-6)
    assert_close(got, expected, dtype=dtype, scale=2.0, what=f"rms_norm on {dtype} input of shape {shape}",
                 hint="normalise over the last dimension only, in float32, then cast back and scale by weight")


def test_rows_are_independent():
    x = randn(4, 256, scale=2.0)
    x[2] *= 100.0  # one row far larger than the rest: its scale must not leak into others
    w = torch.ones(256)
    got = rms_norm(x, w, 1e-6)
    expected = x.double() / x.double().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert_close(got, expected.float(), what="rms_norm with one large row",
                 hint="a row's scale must come from that row alone: reduce over dim=-1 with keepdim=True")


def test_eps_is_used():
    x = torch.full((2, 16), 1e-4)
    got = rms_norm(x, torch.ones(16), 1.0)
    expected = x / torch.sqrt(torch.tensor(1e-8 + 1.0))
    assert_close(got, expected, what="rms_norm of tiny inputs with eps=1.0",
                 hint="eps goes inside the square root: x / sqrt(mean(x^2) + eps)")
