"""`triton` and `triton.language` where Triton is installed, inert stand-ins where it is not.

Kernel modules import Triton from here so that `mili` imports (and `mili status` lists every
exercise) on machines without Triton, such as macOS. Launching a kernel there raises a clear error.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    from types import SimpleNamespace

    HAVE_TRITON = False

    def _missing(*_args, **_kwargs):
        raise RuntimeError("this op needs Triton (Linux + `pip install triton`); use the torch backend instead")

    def _decorator(fn=None, **_kwargs):
        if fn is None:
            return lambda f: _missing
        return _missing

    triton = SimpleNamespace(jit=_decorator, autotune=lambda *a, **k: (lambda f: f),
                             heuristics=lambda *a, **k: (lambda f: f), Config=lambda *a, **k: None,
                             cdiv=lambda a, b: -(-a // b), next_power_of_2=lambda n: 1 << (max(n, 1) - 1).bit_length())
    tl = SimpleNamespace(constexpr=int)


def require_triton() -> None:
    if not HAVE_TRITON:
        _missing()
