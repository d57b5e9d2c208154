"""What every grader shares: one tolerance table per dtype, seeded inputs, teaching comparisons.

A failing grader should teach: what was expected, what came back, where they first differ,
and one likely cause. `assert_close` does the first three; the grader passes the hint.
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

import torch

# (atol, rtol) per dtype, shared by all graders; docs/architecture.md quotes this table.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> tuple[float, float]:
    """The table's (atol, rtol) for `dtype`, multiplied by `scale` for ops that accumulate more error."""
    atol, rtol = TOLERANCES[dtype]
    return atol * scale, rtol * scale


def seed_from(name: str) -> int:
    """A stable seed derived from a test's name: fresh inputs per test, identical on every run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def generator_for(name: str, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_from(name))
    return g


def current_test_name() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "interactive").split(" ")[0]


def randn(*shape, dtype=torch.float32, device="cpu", name: str | None = None, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal samples (never zeros), generated in float32 on the CPU then moved."""
    g = generator_for(name or current_test_name())
    return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)


def describe_mismatch(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str:
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    bad = ~torch.isclose(a, e, atol=atol, rtol=rtol, equal_nan=False)
    count = int(bad.sum())
    first = tuple(int(i) for i in bad.nonzero()[0]) if count else ()
    diff = (a - e).abs()
    finite = torch.isfinite(diff)
    max_err = float(diff[finite].max()) if finite.any() else float("nan")
    lines = [
        f"{count} of {a.numel()} elements differ beyond atol={atol:g}, rtol={rtol:g} (max abs error {max_err:.3g})",
    ]
    if count:
        lines.append(f"first at index {list(first)}: expected {float(e[first]):.6g}, got {float(a[first]):.6g}")
    if not torch.isfinite(a).all():
        lines.append(f"your output holds {int((~torch.isfinite(a)).sum())} NaN/inf values")
    return "\n".join(lines)


def assert_close(actual, expected, *, dtype: torch.dtype | None = None, scale: float = 1.0,
                 what: str = "output", hint: str = "") -> None:
    """Assert shape, dtype and values match, with a message a student can act on."""
    if not isinstance(actual, torch.Tensor):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}" + (f"\nhint: {hint}" if hint else "")
        )
    if dtype is not None and actual.dtype != dtype:
        raise AssertionError(f"{what}: expected dtype {dtype}, got {actual.dtype}")
    atol, rtol = tolerance(dtype or expected.dtype, scale) if (dtype or expected.dtype) in TOLERANCES else (1e-5, 1e-5)
    if not torch.allclose(actual.detach().float().cpu(), expected.detach().float().cpu(), atol=atol, rtol=rtol):
        message = f"{what} is wrong.\n" + describe_mismatch(actual, expected, atol, rtol)
        if hint:
            message += f"\nhint: {hint}"
        raise AssertionError(message)


def run_on_ranks(fn: Callable[..., Any], size: int, *args, timeout: float = 60.0) -> list[Any]:
    """fn(rank, size, *args) in `size` new processes joined in one gloo group; each rank's result.

    fn must be defined at the top level of an importable module (the processes import it). A
    rank that raises makes this raise at once, with that rank's traceback (the other ranks are
    killed: they may be waiting for it in a collective); nothing waits longer than `timeout`.
    """
    import torch.distributed as dist

    from mili.distributed.launch import worker_context

    ctx = worker_context()
    store = dist.TCPStore("127.0.0.1", 0, size, is_master=True, wait_for_workers=False)
    processes, pipes = [], []
    for rank in range(size):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_rank_main, args=(fn, rank, size, store.port, timeout, args, send), daemon=True)
        process.start()
        send.close()
        processes.append(process)
        pipes.append(receive)
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < size:
            pending = [conn for rank, conn in enumerate(pipes) if rank not in results]
            ready = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"ranks {sorted(set(range(size)) - set(results))} did not finish in {timeout:.0f} s")
            for conn in ready:
                rank = pipes.index(conn)
                try:
                    status, value = conn.recv()
                except EOFError:
                    status, value = "error", "the process exited without a result"
                if status == "error":
                    raise RuntimeError(f"rank {rank} of {size} failed:\n{value}")
                results[rank] = value
    finally:
        for process in processes:
            process.join(timeout=5 if len(results) == size else 0)
            if process.is_alive():
                process.kill()
                process.join()
    return [results[rank] for rank in range(size)]


def _rank_main(fn, rank, size, port, timeout, args, conn) -> None:
    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        store = dist.TCPStore("127.0.0.1", port, size, is_master=False)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timedelta(seconds=timeout))
        conn.send(("ok", fn(rank, size, *args)))
    except BaseException:  # noqa: BLE001 - sent to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
