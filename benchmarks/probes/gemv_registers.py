"""Registers and spilled bytes per thread of the batch-1 GEMV kernel, for each autotuned configuration,
compiled for an H100/H200 (sm_90) on a machine without a GPU (Triton's compiler and the ptxas and
cuobjdump its wheel ships).

The norm variants read the whole input row in one block of BLOCK_H = next_power_of_2(K) elements
before the loop (mili/kernels/linear.py), so their registers grow with K: at K = 5120 (Qwen3-32B)
that block is 8192 wide. A kernel's registers are those of its hungriest part, and they bound how
many programs an SM holds while the loop streams the weights.

    PYTHONPATH=. python benchmarks/probes/gemv_registers.py --k 4096 5120 --json benchmarks/gemv-registers-sm90.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mili.kernels.linear import GEMV_CONFIGS, _gemv_kernel
from tests.test_kernels_compile import GEMV_ARGS  # the kernel's argument types

# (INPUT, OUTPUT, ranks): the plain product, the qkv and gate_up GEMVs of one GPU, and at TP=2
# (the GEMVs after the summing norm, and the pushing o and down)
VARIANTS = [("plain", "plain", 1), ("add_rms_norm", "plain", 1), ("add_rms_norm", "silu_and_mul", 1),
            ("plain", "silu_and_mul", 1), ("plain", "push", 2)]


def resources(input_kind: str, output: str, world: int, k: int, config) -> dict:
    """{"registers", "stack_bytes"} per thread of one compiled variant, from cuobjdump -res-usage."""
    names = list(_gemv_kernel.arg_names)
    constexprs = dict(INPUT=input_kind, OUTPUT=output, BLOCK_H=triton.next_power_of_2(k) if input_kind != "plain" else 1,
                      DEPENDENT_LAUNCH=True, RANK=0, WORLD=world, SENDERS=world, **config.kwargs)
    signature = {**{n: "constexpr" for n in names}, **GEMV_ARGS}
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n in GEMV_ARGS if n.endswith("_ptr")}
    source = ASTSource(_gemv_kernel, signature, constexprs={(names.index(n),): v for n, v in constexprs.items()},
                       attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        usage = subprocess.run([tool, "-res-usage", cubin.name], capture_output=True, text=True, check=True).stdout
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", usage).group(1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[4096, 5120])
    parser.add_argument("--json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for k in args.k:
        for input_kind, output, world in VARIANTS:
            for config in GEMV_CONFIGS:
                row = {"K": k, "INPUT": input_kind, "OUTPUT": output, "ranks": world, **config.kwargs,
                       "num_warps": config.num_warps, "num_stages": config.num_stages,
                       **resources(input_kind, output, world, k, config)}
                rows.append(row)
                print(f"K={k:<6} {input_kind:<20} {output:<13} ranks={world}  BLOCK_N={row['BLOCK_N']} "
                      f"BLOCK_K={row['BLOCK_K']:<5} warps={row['num_warps']} stages={row['num_stages']}  "
                      f"{row['registers']:>3} registers, {row['stack_bytes']:>4} B spilled")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": "sm_90 (H100, H200), compiled without a GPU", "triton": triton.__version__,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
