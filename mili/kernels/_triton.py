"""`triton` and `triton.language` where Triton is installed, inert stand-ins where it is not.

Kernel modules import Triton from here so that `mili` imports (and `mili status` lists every
exercise) on machines without Triton, such as macOS. Launching a kernel there raises a clear error.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import torch

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


@functools.cache
def _dependent_launch_on(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9 and os.environ.get("MILI_PDL", "1") != "0"


def dependent_launch(device: torch.device) -> bool:
    """Whether kernels on `device` use programmatic dependent launch (Hopper and later GPUs).

    A kernel launched with `launch_pdl=True` may start while the kernel before it in the stream
    still runs, once every program of that kernel has called `tl.extra.cuda.gdc_launch_dependents()`
    (or exited). It must call `tl.extra.cuda.gdc_wait()` before it reads anything the earlier kernel
    writes, or writes anything at all: the wait returns when that kernel has finished and its writes
    are visible. Before the wait it may read what no kernel writes, such as weights. (One kernel
    never waits, the summing norm of `mili.kernels.pushed_sums`; its docstring says why.) So each
    kernel of a decode step launches while its predecessor runs, and its launch latency is hidden.
    The kernels take both calls through `wait_for_previous_kernel(DEPENDENT_LAUNCH)`, a constexpr
    flag that their launchers set, with `launch_pdl`, from `dependent_launch_options` (the
    interpreter knows neither call). `MILI_PDL=0` turns it off.
    """
    if not HAVE_TRITON or device.type != "cuda":
        return False
    return _dependent_launch_on(device.index if device.index is not None else torch.cuda.current_device())


def dependent_launch_options(device: torch.device) -> dict:
    """The launch options of a kernel that calls `wait_for_previous_kernel(DEPENDENT_LAUNCH)`: the
    constexpr flag and `launch_pdl` together, since a kernel launched early must also wait."""
    pdl = dependent_launch(device)
    return {"DEPENDENT_LAUNCH": pdl, "launch_pdl": pdl}


@triton.jit
def wait_for_previous_kernel(DEPENDENT_LAUNCH: tl.constexpr):
    """Under a dependent launch: wait until the previous kernel has finished and its writes are
    visible, then let the next kernel launch (it waits the same way before it touches our output).
    Call it before the kernel's first store and before any load of what an earlier kernel writes."""
    if DEPENDENT_LAUNCH:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def watch_compiles(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call `callback(kernel_name)` each time this process compiles a Triton kernel (or loads it
    from Triton's disk cache) until the returned function is called.

    Triton compiles a kernel once for each specialisation: each set of constexpr values, and for
    each plain argument whether a pointer is 16-byte aligned and whether an integer is 1 or a
    multiple of 16. A compile takes a fraction of a second to seconds; one in the middle of a run
    stalls every request in that step. After a warm-up this should never be called; when it is,
    a step needed a specialisation the warm-up did not cover (mark an integer that changes from
    step to step with `@triton.jit(do_not_specialize=[...])`). Without Triton's hooks (Triton
    older than 3.4, or none) nothing is watched.
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is None or not hasattr(knobs.runtime, "jit_cache_hook"):
        return lambda: None
    previous = knobs.runtime.jit_cache_hook

    def hook(*args, **kwargs):
        info = kwargs.get("fn")
        callback(getattr(info, "name", None) or str(kwargs.get("repr", "a Triton kernel")))
        return previous(*args, **kwargs) if previous is not None else False  # False: go on and compile

    knobs.runtime.jit_cache_hook = hook

    def stop() -> None:
        knobs.runtime.jit_cache_hook = previous

    return stop


@contextlib.contextmanager
def recorded_compiles() -> Iterator[list[str]]:
    """The names of the Triton kernels compiled inside the block (see watch_compiles): a timed run
    that compiles is partly timing the compiler."""
    names: list[str] = []
    stop = watch_compiles(names.append)
    try:
        yield names
    finally:
        stop()
