"""Backends: the same ops, implemented in plain PyTorch (`torch`) or Triton kernels (`triton`).

The model calls ops only through a `Backend`, chosen once per device. Every backend offers
the same signatures (shapes as in docs/architecture.md, "The batch contract"; T tokens,
B sequences):

    linear(x [T, K], weight [N, K]) -> [T, N]   (x · weightᵀ, no bias)
    rms_norm(x [T, H], weight [H], eps) -> [T, H]
    fused_add_rms_norm(x, residual, weight, eps) -> (rms_norm(x + residual), x + residual)
    apply_rope(q [T, Hq, D], k [T, Hkv, D], positions [T], cos_sin_cache [P, D]) -> (q, k)
        (may rotate in place: callers use the returned tensors)
    qk_norm_rope(q, k, q_weight [D], k_weight [D], eps, positions, cos_sin_cache) -> (q, k)
        (apply_rope of the per-head rms_norm of q and k, in one pass; may work in place)
    silu_and_mul(x [T, 2I]) -> [T, I]
    store_kvcache(k [T, Hkv, D], v, k_cache [N, S, Hkv, D], v_cache, slot_mapping [T]) -> None
    flash_attn_varlen(q [Tq, Hq, D], k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                      *, causal=True, softmax_scale=None, block_table=None) -> [Tq, Hq, D]
        (with block_table [B, max_blocks], k and v are the paged caches [N, S, Hkv, D])
    paged_decode_attention(q [B, Hq, D], k_cache, v_cache, context_lens [B], block_tables [B, M],
                           *, softmax_scale=None) -> [B, Hq, D]

`triton` takes each op from `mili.kernels` where a kernel exists and from `torch` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

OP_NAMES = ("linear", "rms_norm", "fused_add_rms_norm", "apply_rope", "qk_norm_rope", "silu_and_mul", "store_kvcache",
            "flash_attn_varlen", "paged_decode_attention")


@dataclass(frozen=True)
class Backend:
    name: str
    linear: Callable
    rms_norm: Callable
    fused_add_rms_norm: Callable
    apply_rope: Callable
    qk_norm_rope: Callable
    silu_and_mul: Callable
    store_kvcache: Callable
    flash_attn_varlen: Callable
    paged_decode_attention: Callable

    def describe(self) -> dict[str, str]:
        """Which module implements each op, e.g. {'rms_norm': 'mili.kernels.rmsnorm'}."""
        return {f.name: getattr(self, f.name).__module__ for f in fields(self) if f.name != "name"}


def torch_backend() -> Backend:
    from mili.backends import torch_ops

    return Backend("torch", **{name: getattr(torch_ops, name) for name in OP_NAMES})


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_backend() -> Backend:
    if not triton_available():
        raise RuntimeError("the triton backend needs the `triton` package (Linux; pip install triton)")
    import mili.kernels as kernels

    base = torch_backend()
    ops = {name: getattr(kernels, name) for name in OP_NAMES if hasattr(kernels, name)}
    return replace(base, name="triton", **ops)


def get_backend(name: str = "auto", device: torch.device | str = "cpu") -> Backend:
    """`auto`: triton on CUDA when it is installed, torch elsewhere."""
    device = torch.device(device)
    if name == "auto":
        name = "triton" if device.type == "cuda" and triton_available() else "torch"
    if name == "torch":
        return torch_backend()
    if name == "triton":
        return triton_backend()
    raise ValueError(f"unknown backend {name!r}; choose auto, torch or triton")
