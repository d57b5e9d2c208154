"""The physical floors that generation is held against, and the rates they are measured at.

Decode reads every weight once per step and, for each sequence, the K/V of its whole context;
it does almost no arithmetic per byte, so its floor is bytes over the copy bandwidth measured in
the same run (a device-to-device copy, bytes read plus written, as `mili bench kernels` counts
it). Prefill is matmuls over many tokens at once, so its floor is FLOPs over the matmul rate.
A tensor-parallel group's devices each read and multiply their part at the same time: its
floor is the whole model's bytes and FLOPs over the group's summed rates (`group_of`).

    bandwidth_floor(config, dtype, work, max_num_seqs, copy_bytes_per_s, flops_per_s)
        -> {"seconds": ..., "weight_bytes": ..., "kv_bytes": ..., "prefill_flops": ..., ...}
"""

from __future__ import annotations

import gc
import math
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Return the memory of objects just dropped (an engine's KV pool and CUDA graphs) to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def copy_bytes_per_s(device: torch.device, num_bytes: int | None = None) -> float:
    """Bytes moved per second (read plus written) by a device-to-device copy; median of several."""
    num_bytes = num_bytes or ((1 << 30) if device.type == "cuda" else (1 << 27))
    src = torch.empty(num_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return num_bytes / sorted(times[2:])[len(times[2:]) // 2]


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 20 if device.type == "cuda" else 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def group_of(model) -> tuple:
    """(the whole model's config, how many devices share it): one, or a tensor-parallel group's
    ranks (one device each, all alike). The group's rates are that many times one device's; the
    few weights every rank holds a copy of (norms, KV heads replicated when fewer than ranks)
    are counted once, so the group's floor is a little low."""
    size = getattr(model, "tensor_parallel_size", 1)
    return (model.whole_config if size > 1 else model.config), size


def weight_bytes_per_step(config, dtype: torch.dtype) -> int:
    """Bytes of weights a decode step reads: all of them, except an untied input embedding table
    (a step reads only the rows of its tokens; a tied one is read whole as the LM head)."""
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return (config.num_parameters() - embedding) * torch.empty((), dtype=dtype).element_size()


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * \
        torch.empty((), dtype=dtype).element_size()


def bandwidth_floor(config, dtype: torch.dtype, work: list[tuple[list[int], int]], max_num_seqs: int,
                    copy_rate: float, flops_rate: float) -> dict:
    """The least time any engine needs for `work` ([(prompt ids, output length)]) on this device.

    Decode: the i-th output token of a sequence with prompt p reads the K/V of p + i tokens; the
    weights are read once per step, and with every sequence decoding together (at most
    max_num_seqs at a time) there are at least max(output) steps per wave. Prefill: 2 · params
    FLOPs per prompt token. The first output token comes from the prefill's logits.
    """
    kv_tokens = sum(len(p) * (n - 1) + (n - 1) * n // 2 for p, n in work)
    waves = math.ceil(len(work) / max_num_seqs)
    steps = waves * max(n for _, n in work)
    weight_bytes = weight_bytes_per_step(config, dtype)
    kv_bytes = kv_tokens * kv_bytes_per_token(config, dtype)
    prefill_flops = 2 * config.num_parameters() * sum(len(p) for p, _ in work)
    seconds = (kv_bytes + steps * weight_bytes) / copy_rate + prefill_flops / flops_rate
    return {"seconds": seconds, "decode_steps": steps, "weight_bytes_per_step": weight_bytes, "kv_bytes": kv_bytes,
            "prefill_flops": prefill_flops, "copy_bytes_per_s": copy_rate, "matmul_flops_per_s": flops_rate}
