"""When the kernels use programmatic dependent launch (mili/kernels/_triton.py): Hopper or later
GPUs only, never the CPU interpreter, and MILI_PDL=0 turns it off."""

import pytest
import torch

from mili.kernels import _triton


def test_never_on_the_cpu():
    assert _triton.dependent_launch(torch.device("cpu")) is False, \
        "the interpreter cannot run gdc_wait / gdc_launch_dependents: kernels on the CPU must not ask for them"


@pytest.mark.skipif(not _triton.HAVE_TRITON, reason="needs triton")
@pytest.mark.parametrize("capability,mili_pdl,expected", [
    ((9, 0), None, True),    # an H100 or H200: on by default
    ((10, 0), "1", True),
    ((9, 0), "0", False),    # MILI_PDL=0 turns it off
    ((8, 0), None, False),   # an A100 has no programmatic dependent launch
])
def test_needs_hopper_and_honours_mili_pdl(monkeypatch, capability, mili_pdl, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    if mili_pdl is None:
        monkeypatch.delenv("MILI_PDL", raising=False)
    else:
        monkeypatch.setenv("MILI_PDL", mili_pdl)
    _triton._dependent_launch_on.cache_clear()
    try:
        got = _triton.dependent_launch(torch.device("cuda", 0))
        options = _triton.dependent_launch_options(torch.device("cuda", 0))
    finally:
        _triton._dependent_launch_on.cache_clear()
    assert got is expected, (f"compute capability {capability} with MILI_PDL={mili_pdl!r}: dependent launch "
                             f"should be {'on' if expected else 'off'}")
    assert options == {"DEPENDENT_LAUNCH": expected, "launch_pdl": expected}, \
        "a kernel launched early (launch_pdl) must also wait (DEPENDENT_LAUNCH), and only then"
