"""Can a plain Triton GEMV beat cuBLAS at batch 1 on the Qwen3 weight shapes?

y[N] = W[N, K] · x[K] in bf16, each program reading BLOCK_N whole rows of W, autotuned per
shape. Timed from CUDA graph replays (200 calls), against F.linear in the same way.

    python benchmarks/probes/gemv_probe.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
import triton.language as tl

SHAPES = {"0.6B qkv": (4096, 1024), "0.6B o": (1024, 2048), "0.6B gate_up": (6144, 1024), "0.6B down": (1024, 3072),
          "8B qkv": (6144, 4096), "8B o": (4096, 4096), "8B gate_up": (24576, 4096), "8B down": (4096, 12288)}


@triton.autotune(configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                          for n, k, w, s in itertools.product((2, 4, 8, 16), (256, 512, 1024), (2, 4, 8), (1, 2, 3))],
                 key=["N", "K"])
@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K),
                    other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty), mask=rows < N)


def gemv(x, w, y):
    n, k = w.shape
    _gemv_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](x, w, y, n, k)


def replay_us(fn, repeats=200):
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / k ** 0.5
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        y = torch.empty(n, dtype=torch.bfloat16, device="cuda")
        gemv(x, w, y)
        error = (y.float() - torch.nn.functional.linear(x, w)[0].float()).abs().max().item()
        cublas = replay_us(lambda: torch.nn.functional.linear(x, w))
        triton_us = replay_us(lambda: gemv(x, w, y))
        gb = n * k * 2 / 1e9
        rows.append({"shape": name, "N": n, "K": k, "cublas_us": cublas, "triton_us": triton_us,
                     "cublas_GBps": gb / cublas * 1e6, "triton_GBps": gb / triton_us * 1e6, "max_abs_error": error,
                     "config": str(_gemv_kernel.best_config)})
        print(f"{name:<14} cuBLAS {cublas:7.2f} us ({gb / cublas * 1e6:5.0f} GB/s)  triton {triton_us:7.2f} us "
              f"({gb / triton_us * 1e6:5.0f} GB/s)  err {error:.3g}  {_gemv_kernel.best_config}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
