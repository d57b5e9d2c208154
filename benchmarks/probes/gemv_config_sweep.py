"""Which launch configurations of the engine's GEMV kernel are fastest at each weight shape,
tensor-parallel shards included?

The engine autotunes `_gemv_kernel` (mili/kernels/linear.py) over `GEMV_CONFIGS`, five
configurations that won on the whole Qwen3-0.6B and 8B shapes. Under tensor parallelism each
rank multiplies by a shard (at TP=2, half the rows of qkv and gate_up, half the columns of o
and down), where other configurations may win. This probe times the engine's kernel itself
(plain input and output, dependent launch on) for every configuration of a grid, at each shape,
from a CUDA graph that cycles over enough copies of the weight to keep it out of L2, and reports
per shape the fastest configuration of the grid against the fastest of `GEMV_CONFIGS`. Each
shape's row is printed and written as soon as it is measured.

    python benchmarks/probes/gemv_config_sweep.py [--json OUT.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemv_probe import replay_us  # the graph-replay timing of the GEMV probe

from mili.bench.environment import environment
from mili.kernels._triton import dependent_launch_options, triton
from mili.kernels.linear import GEMV_CONFIGS, _gemv_kernel, launch_of

# (name, N, K): the linear layers of one decoder layer, whole and as one rank's shard at TP=2
SHAPES = [("8B qkv", 6144, 4096), ("8B o", 4096, 4096), ("8B gate_up", 24576, 4096), ("8B down", 4096, 12288),
          ("8B qkv TP2", 3072, 4096), ("8B o TP2", 4096, 2048), ("8B gate_up TP2", 12288, 4096),
          ("8B down TP2", 4096, 6144),
          ("32B qkv TP2", 5120, 5120), ("32B o TP2", 5120, 4096), ("32B gate_up TP2", 25600, 5120),
          ("32B down TP2", 5120, 12800),
          ("0.6B qkv", 4096, 1024), ("0.6B o", 1024, 2048), ("0.6B gate_up", 6144, 1024), ("0.6B down", 1024, 3072)]
GRID = [(n, k, w, s) for n, k, w, s in itertools.product((1, 2, 4, 8), (512, 1024, 2048), (2, 4, 8), (1, 3))
        if n * k <= 8192]
L2_BYTES = 50 << 20
REPEATS = 40


def time_config(x, weights, y, config) -> float:
    """Microseconds per product, from one graph of REPEATS launches cycling over `weights`."""
    block_n, block_k, warps, stages = config
    n, k = weights[0].shape
    launches = itertools.count()

    def launch():
        w = weights[next(launches) % len(weights)]
        _gemv_kernel[(triton.cdiv(n, block_n),)](x, w, y, n, k, w.stride(0), x, x, y, 0.0, x, 0, INPUT="plain",
                                                 BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_H=1, OUTPUT="plain",
                                                 num_warps=warps, num_stages=stages,
                                                 **dependent_launch_options(x.device))

    return replay_us(launch, REPEATS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args()
    engine = list(map(launch_of, GEMV_CONFIGS))
    grid = sorted(set(GRID) | set(engine))
    report = {"environment": environment(torch.device("cuda")), "repeats": REPEATS, "grid": grid,
              "engine_configs": engine, "rows": []}
    for name, n, k in SHAPES:
        copies = max(1, math.ceil(2 * L2_BYTES / (n * k * 2)))
        weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        y = torch.empty(1, n, dtype=torch.bfloat16, device="cuda")
        times = {config: time_config(x, weights, y, config) for config in grid}
        best = min(times, key=times.get)
        best_engine = min(engine, key=times.get)
        gb = n * k * 2 / 1e9
        row = {"shape": name, "N": n, "K": k, "best": list(best), "best_us": times[best],
               "best_GBps": gb / times[best] * 1e6, "best_engine": list(best_engine),
               "best_engine_us": times[best_engine], "best_engine_GBps": gb / times[best_engine] * 1e6,
               "all_us": {str(c): t for c, t in times.items()}}
        report["rows"].append(row)
        print(f"{name:<16} best {times[best]:7.2f} us ({row['best_GBps']:5.0f} GB/s) {best}   engine's best "
              f"{times[best_engine]:7.2f} us ({row['best_engine_GBps']:5.0f} GB/s) {best_engine}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        del weights


if __name__ == "__main__":
    main()
