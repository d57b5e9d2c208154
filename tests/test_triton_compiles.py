"""`watch_compiles` (mili/kernels/_triton.py): `mili serve` logs every Triton compile after its
warm-up through it, and tests/test_engine_gpu.py requires that none happens. The hook itself
is Triton's; the CPU interpreter compiles nothing, so these tests call it as Triton would."""

from types import SimpleNamespace

import pytest

from mili.kernels import _triton

triton = pytest.importorskip("triton")
knobs = getattr(triton, "knobs", None)
pytestmark = pytest.mark.skipif(knobs is None or not hasattr(knobs.runtime, "jit_cache_hook"),
                                reason="this Triton has no jit_cache_hook")


def _compile(name: str):
    """What Triton does before it compiles a kernel: call the hook; a true answer skips the compile."""
    return knobs.runtime.jit_cache_hook(key="key", repr=f"{name}[...]", fn=SimpleNamespace(name=name),
                                        compile={}, is_manual_warmup=False, already_compiled=False)


def test_reports_each_compile_and_lets_it_happen(monkeypatch):
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    seen = []
    stop = _triton.watch_compiles(seen.append)
    assert not _compile("_rms_norm_kernel"), "the hook must answer False, or Triton skips the compile"
    _compile("_flash_attn_varlen_kernel")
    stop()
    assert seen == ["_rms_norm_kernel", "_flash_attn_varlen_kernel"]
    assert knobs.runtime.jit_cache_hook is None, "stopping must put back the hook that was there before"


def test_keeps_a_hook_that_was_already_there(monkeypatch):
    earlier = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kwargs: earlier.append(kwargs["fn"].name))
    seen = []
    stop = _triton.watch_compiles(seen.append)
    _compile("_gemv_kernel")
    stop()
    assert seen == earlier == ["_gemv_kernel"], "another tool's hook must still see every compile"
