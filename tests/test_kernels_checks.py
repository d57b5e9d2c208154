"""Plumbing of the chapter 02 kernels: launch checks and exports (not graded)."""

import pytest
import torch

import mili.kernels
from mili.kernels import _checks


def test_exports_the_backend_op_names():
    for name in ("rms_norm", "fused_add_rms_norm", "apply_rope", "silu_and_mul", "qk_norm_rope"):
        assert callable(getattr(mili.kernels, name)), name


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _checks.check_same_device(x=torch.ones(2))


def test_as_rows_views_when_it_can_and_copies_when_it_must():
    x = torch.randn(4, 6)[:, :3]
    assert _checks.as_rows("x", x).data_ptr() == x.data_ptr()
    heads = torch.randn(5, 3 * 8)[:, :16].view(5, 2, 8)  # q heads inside a qkv row: no single row stride
    rows = _checks.as_rows("q", heads)
    assert rows.shape == (10, 8) and torch.equal(rows, heads.reshape(10, 8))


def test_too_wide_rows_are_refused():
    with pytest.raises(ValueError, match="hidden"):
        _checks.check_block("hidden size", _checks.MAX_BLOCK + 1)
