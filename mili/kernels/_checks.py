"""Launch-argument checks shared by the chapter 02 exercises and their references.

A Triton kernel trusts its pointers and strides: a wrong dtype, a tensor on another device or
a transposed input gives garbage, not an error. Every launcher therefore calls these checks
first, so bad input fails loudly with the argument's name in the message.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
MAX_BLOCK = 65536  # widest row one program holds in registers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_tensor(name: str, t: object, *, ndim: int | None = None, dtypes=FLOAT_DTYPES) -> Tensor:
    """`t` is a tensor with `ndim` dimensions, a dtype in `dtypes` and a unit last stride."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {allowed}")
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (stride {t.stride(-1)}); "
                         f"call .contiguous() first")
    return t


def check_same_device(**tensors: Tensor) -> torch.device:
    """All tensors on one device, and that device runs Triton (CUDA, or CPU under the interpreter)."""
    devices = {name: t.device for name, t in tensors.items()}
    first_name, device = next(iter(devices.items()))
    for name, other in devices.items():
        if other != device:
            raise ValueError(f"{name} is on {other} but {first_name} is on {device}: move them to one device")
    if device.type != "cuda" and not (device.type == "cpu" and _interpreting()):
        raise ValueError(f"Triton kernels run on CUDA tensors, got {device}; on a CPU set TRITON_INTERPRET=1 "
                         f"before triton is imported to run them in the interpreter")
    return device


def check_same_dtype(**tensors: Tensor) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    first_name, dtype = next(iter(dtypes.items()))
    for name, other in dtypes.items():
        if other != dtype:
            raise TypeError(f"{name} has dtype {other} but {first_name} has {dtype}: cast them to one dtype")
    return dtype


def check_shape(name: str, t: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_block(name: str, size: int) -> None:
    if size > MAX_BLOCK:
        raise ValueError(f"{name}={size} is wider than one program can hold ({MAX_BLOCK}); "
                         f"these kernels keep a whole row in registers")


def as_rows(name: str, x: Tensor) -> Tensor:
    """x [..., H] as a 2-D [rows, H] view with any row stride; copies only if no such view exists."""
    if x.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    if rows.shape[-1] > 1 and rows.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension; call .contiguous() first")
    return rows


def check_rope_args(q: Tensor, k: Tensor, positions: Tensor, cos_sin_cache: Tensor) -> tuple[int, int, int]:
    """The shared contract of apply_rope and qk_norm_rope; returns (T, head_dim, max_position)."""
    check_tensor("q", q, ndim=3)
    check_tensor("k", k, ndim=3)
    check_tensor("positions", positions, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("cos_sin_cache", cos_sin_cache, ndim=2, dtypes=(torch.float32,))
    check_same_device(q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    check_same_dtype(q=q, k=k)
    num_tokens, _, head_dim = q.shape
    if k.shape[0] != num_tokens or positions.shape[0] != num_tokens:
        raise ValueError(f"q, k and positions need one row per token: got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, positions {tuple(positions.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"q and k need the same head_dim, got {head_dim} and {k.shape[2]}")
    if head_dim % 2:
        raise ValueError(f"rotate-half RoPE needs an even head_dim, got {head_dim}")
    if cos_sin_cache.shape[1] != head_dim:
        raise ValueError(f"cos_sin_cache must be [max_position, head_dim={head_dim}] (cos then sin), "
                         f"got {tuple(cos_sin_cache.shape)}")
    return num_tokens, head_dim, cos_sin_cache.shape[0]


def check_matmul_args(a: Tensor, b: Tensor) -> tuple[int, int, int]:
    """The contract of tiled_matmul (exercise 2.5): a [M, K] @ b [K, N], any strides; returns (M, N, K)."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be a matrix (2 dimensions), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    check_same_dtype(a=a, b=b)
    check_same_device(a=a, b=b)
    (m, k), (k_b, n) = a.shape, b.shape
    if k != k_b:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)} and b is {tuple(b.shape)} "
                         f"(a.shape[1] must equal b.shape[0])")
    if 0 in (m, n, k):
        raise ValueError(f"every dimension must be at least 1, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    return m, n, k


def check_softmax_args(x: Tensor, block_size: int) -> tuple[int, int]:
    """The contract of online_softmax (exercise 2.6): x [R, C], unit column stride; returns (R, C)."""
    check_tensor("x", x, ndim=2)
    check_same_device(x=x)
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
    if block_size < 16 or block_size > MAX_BLOCK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 16 to {MAX_BLOCK}, got {block_size}")
    if 0 in x.shape:
        raise ValueError(f"x must have at least one row and one column, got shape {tuple(x.shape)}")
    return x.shape[0], x.shape[1]
