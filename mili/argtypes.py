"""argparse value types shared by every `mili` command: a bad value is one line and exit 2.

Also `triton_problem`: a combination of flags that would only fail once the model runs."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not -2**63 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be a signed 64-bit integer, got {value}")
    return value


def device(text: str) -> str:
    """auto, cpu, cuda or cuda:N; a CUDA device must exist (checked before any model is loaded)."""
    if text == "auto":
        return text
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available (this torch {torch.__version__} has no "
                                             "CUDA or sees no GPU); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are only {torch.cuda.device_count()} CUDA devices")
    elif parsed.type != "cpu":
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def triton_problem(backend: str, device_name: str | None) -> str | None:
    """Why `--backend triton` cannot run on this device (None if it can): on a CPU, Triton kernels
    run only in the interpreter, which TRITON_INTERPRET=1 turns on before triton is imported."""
    import os

    import torch

    if backend != "triton":
        return None
    on_cuda = torch.cuda.is_available() if device_name in (None, "auto") else device_name.startswith("cuda")
    if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return ("--backend triton on a CPU needs TRITON_INTERPRET=1 in the environment (the Triton interpreter, "
                "slow); or use --backend torch")
    return None
