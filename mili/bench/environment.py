"""What a recorded benchmark ran on: the "environment" of every JSON in benchmarks/.

Every figure names its card and the commit of the code that made it: `git_commit` is
`MILI_GIT_COMMIT` where set (a copy of the tree without its history, as on a GPU machine), else
this checkout's `git rev-parse HEAD`.
"""

from __future__ import annotations

import os
import platform
import subprocess

import torch

from mili.exercise import repo_root


def environment(device: torch.device | str | None = None, **extra) -> dict:
    """The card (`device`: a GPU's name, or the CPU's), its driver, the versions of what ran, the
    commit and `MILI_IMPL`, then `extra` (e.g. dtype=...). device None: the current GPU if there
    is one, else the CPU."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else None
    driver = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines() if cuda else []
    return {"device": gpu or platform.processor() or platform.machine(), "gpu": gpu,
            "driver": driver[0] if driver else None, "cuda": torch.version.cuda if cuda else None,
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "triton": _version("triton"),
            "transformers": _version("transformers"), "python": platform.python_version(),
            "git_commit": os.environ.get("MILI_GIT_COMMIT") or _output(["git", "rev-parse", "HEAD"]) or "unknown",
            "mili_impl": os.environ.get("MILI_IMPL", "auto"), **extra}


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False,
                              cwd=repo_root()).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None
