"""What a recorded benchmark ran on: the "environment" of every JSON in benchmarks/.

Every figure names its card and the commit of the code that made it (`git_commit`).
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
from typing import TYPE_CHECKING

from mili.exercise import repo_root

if TYPE_CHECKING:
    import torch


def environment(device: torch.device | str | None = None, **extra) -> dict:
    """The card (`device`: a GPU's name, or the CPU's), its driver, the versions of what ran, the
    commit and `MILI_IMPL`, then `extra` (e.g. dtype=...). device None: the current GPU if there
    is one, else the CPU."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else None
    driver = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines() if cuda else []
    return {"device": gpu or platform.processor() or platform.machine(), "gpu": gpu,
            "driver": driver[0] if driver else None, "cuda": torch.version.cuda if cuda else None,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "triton": installed_version("triton"),
            "transformers": installed_version("transformers"), "python": platform.python_version(),
            "git_commit": git_commit(),
            "mili_impl": os.environ.get("MILI_IMPL", "auto"), **extra}


def git_commit() -> str:
    """The commit of the code that runs: `MILI_GIT_COMMIT` where set (for a copy of the tree whose
    history is missing or older than its files), else this checkout's HEAD, marked "+dirty" when
    its tracked files differ from HEAD (code not committed, or a stale history: either way, not
    that commit's code)."""
    named = os.environ.get("MILI_GIT_COMMIT")
    if named:
        return named
    head = _output(["git", "rev-parse", "HEAD"])
    if not head:
        return "unknown"
    diff = _run(["git", "diff", "--quiet", "HEAD"])
    return head + ("+dirty" if diff is not None and diff.returncode == 1 else "")


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    """`command` run in the repository (None where it cannot run)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, cwd=repo_root())
    except (OSError, subprocess.SubprocessError):
        return None


def _output(command: list[str]) -> str:
    done = _run(command)
    return done.stdout.strip() if done is not None else ""


def installed_version(module: str) -> str | None:
    """The module's version ("installed" where it has none), or None where it does not import here."""
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # noqa: BLE001 - any failure to import means: not usable here
        return None
