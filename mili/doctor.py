"""`mili doctor`: check this machine for the course and say what to fix.

Each check prints one line, `ok`, `note` (works, with a limit worth knowing) or `FIX` (with what
to do); the exit status is 1 if anything needs fixing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from mili.bench.environment import installed_version
from mili.exercise import MODES, references_available, repo_root

TINY_MODEL = Path("data") / "mili-tiny-qwen3"

INTERPRETER_PROBE = """
import torch, triton, triton.language as tl

@triton.jit
def add_one(x_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + 1, mask=mask)

x = torch.zeros(5, device={device!r})
add_one[(1,)](x, 5, BLOCK=8)
assert x.tolist() == [1.0] * 5, x
"""


def _probe(device: str, interpret: bool) -> str | None:
    """None if a tiny Triton kernel runs on `device`, else the last line of its error."""
    env = dict(os.environ, TRITON_INTERPRET="1" if interpret else "0")
    try:
        proc = subprocess.run([sys.executable, "-c", INTERPRETER_PROBE.format(device=device)], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return "did not finish in 300 s"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


def checks() -> list[tuple[str, str, str]]:
    """(status, what, detail) for every check; status is 'ok', 'note' or 'FIX'."""
    results = []
    add = results.append
    py = sys.version_info
    add(("ok" if py >= (3, 10) else "FIX", f"Python {platform.python_version()}",
         "" if py >= (3, 10) else "the course needs Python 3.10 or newer"))

    torch_version = installed_version("torch")
    if torch_version is None:
        add(("FIX", "PyTorch", ("not importable: pip install torch (CPU build: --index-url "
                                "https://download.pytorch.org/whl/cpu)")))
        return results
    import torch

    add(("ok", f"PyTorch {torch_version}", ""))
    cuda = torch.cuda.is_available()
    if cuda:
        capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
        add(("ok", f"GPU: {torch.cuda.get_device_name(0)}", f"compute capability {capability}"))
    else:
        add(("note", "no CUDA GPU", "everything runs on the CPU; Triton kernels through the interpreter (slowly)"))

    triton_version = installed_version("triton")
    if triton_version is None:
        detail = ("pip install triton" if sys.platform == "linux" else
                  "Triton is Linux-only: chapters 02 and 04 need Linux (a VM, WSL2 or a container)")
        add(("FIX" if sys.platform == "linux" else "note", "Triton", "not importable: " + detail))
    else:
        add(("ok", f"Triton {triton_version}", ""))
        error = _probe("cpu", interpret=True)
        add(("ok" if error is None else "FIX", "Triton interpreter (TRITON_INTERPRET=1)",
             "" if error is None else f"a tiny kernel failed: {error} — reinstall triton matching torch "
                                      "(pip install --force-reinstall triton)"))
        if cuda:
            error = _probe("cuda", interpret=False)
            add(("ok" if error is None else "FIX", "Triton on the GPU",
                 "" if error is None else f"a tiny kernel failed: {error}"))

    root = repo_root()
    model = root / TINY_MODEL / "model.safetensors"
    if not model.is_file():
        add(("FIX", "the tiny model", f"{model} is missing: clone the whole repository (data/ included)"))
    elif model.stat().st_size < 1_000_000:
        size = model.stat().st_size
        add(("FIX", "the tiny model", f"{model} is only {size} bytes (a Git LFS pointer?): run git lfs pull"))
    else:
        add(("ok", "the tiny model", str(model.relative_to(root))))

    for module, purpose in (("pytest", "grading (mili grade)"), ("jupyterlab", "the chapter notebooks")):
        found = installed_version(module)
        add(("ok" if found else "FIX", f"{module} {found or ''}".strip(),
             "" if found else f"needed for {purpose}: pip install -e \".[dev,server]\""))

    for folder in (root / "mili", Path(tempfile.gettempdir())):
        writable = os.access(folder, os.W_OK)
        add(("ok" if writable else "FIX", f"write access to {folder}",
             "" if writable else "you edit exercises there (and grading writes temporary files): fix permissions"))

    mode = os.environ.get("MILI_IMPL", "auto").strip().lower() or "auto"
    add(("ok" if mode in MODES else "FIX", f"MILI_IMPL={mode}",
         "" if mode in MODES else f"must be one of {', '.join(MODES)}: unset it for the default (auto)"))
    add(("ok", "reference solutions", "present (an instructor's copy)") if references_available() else
        ("note", "reference solutions", "absent (a student copy): unwritten exercises cannot run"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mili doctor", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    results = checks()
    for status, what, detail in results:
        print(f"{status:<5} {what}" + (f": {detail}" if detail else ""))
    problems = sum(status == "FIX" for status, _, _ in results)
    print("everything needed is here" if not problems else f"{problems} thing{'s' if problems > 1 else ''} to fix")
    return 1 if problems else 0
