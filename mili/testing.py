"""What every grader shares: one tolerance table per dtype, seeded inputs, teaching comparisons.

A failing grader should teach: what was expected, what came back, where they first differ,
and one likely cause. `assert_close` does the first three; the grader passes the hint.
"""

from __future__ import annotations

import hashlib
import os

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
