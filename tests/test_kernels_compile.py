"""The batch-1 step's kernels compile for an H100 (sm_90), here on a machine without a GPU.

Triton's interpreter runs a kernel as Python: a branch on a value the compiler does not see as a
constexpr compiles both ways on a GPU and fails there, while the interpreter takes one and runs.
Triton's compiler (with the ptxas its wheel ships) needs no GPU, so every variant the engine
launches is compiled here, in a process of its own (the tests' processes run the interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GEMV_ARGS = {"x_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "N": "i32", "K": "i32", "stride_w": "i32",
             "res_ptr": "*bf16", "norm_w_ptr": "*bf16", "res_out_ptr": "*bf16", "eps": "fp32",
             "sum_addresses_ptr": "*i64", "sum_site": "i32"}
GEMV_VARIANTS = [("plain", "plain", 1, False), ("rms_norm", "plain", 1, False), ("add_rms_norm", "plain", 1, False),
                 ("add_rms_norm", "silu_and_mul", 1, False), ("plain", "silu_and_mul", 1, False),
                 ("plain", "push", 2, False), ("plain", "push", 4, False), ("plain", "plain", 2, True),
                 ("plain", "silu_and_mul", 4, True)]
EMBEDDING_ARGS = {"ids_ptr": "*i64", "w_ptr": "*bf16", "width": "i32", "stride_w": "i32", "first_row": "i32",
                  "num_rows": "i32", "sum_addresses_ptr": "*i64", "sum_site": "i32"}
SITE_NORM_ARGS = {"sum_addresses_ptr": "*i64", "sum_site": "i32", "width": "i32", "res_ptr": "*bf16",
                  "norm_w_ptr": "*bf16", "out_ptr": "*bf16", "res_out_ptr": "*bf16", "eps": "fp32", "timeout_ns": "i64"}
ONE_SHOT_ARGS = {"x_ptr": "*bf16", "out_ptr": "*bf16", "buffers_ptr": "*i64", "slot_bits_ptr": "*i32", "n": "i32",
                 "region": "i32", "timeout_ns": "i64"}


def _compile_all() -> list[str]:
    """Compile every variant for sm_90; returns what failed, with the compiler's message."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mili.distributed.one_shot import _one_shot_all_reduce_kernel
    from mili.kernels.linear import _gemv_kernel
    from mili.kernels.pushed_sums import _embedding_to_sum_kernel, _site_add_rms_norm_kernel

    def compile_one(kernel, signature: dict, constexprs: dict) -> None:
        names = list(kernel.arg_names)
        constexprs = {**{p.name: p.default for p in kernel.params if p.is_constexpr and p.has_default}, **constexprs}
        source = ASTSource(kernel, {**signature, **{k: "constexpr" for k in constexprs}},
                           constexprs={(names.index(k),): v for k, v in constexprs.items()})
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})

    jobs = []
    for input_kind, output, world, empties in GEMV_VARIANTS:
        # one process passes x where the sum addresses go (`_launch_gemv`): a float pointer
        signature = GEMV_ARGS if world > 1 else {**GEMV_ARGS, "sum_addresses_ptr": "*bf16"}
        jobs.append((f"_gemv_kernel INPUT={input_kind} OUTPUT={output} WORLD={world} EMPTIES={empties}", _gemv_kernel,
                     signature, dict(INPUT=input_kind, BLOCK_N=2, BLOCK_K=512, BLOCK_H=4096, DEPENDENT_LAUNCH=True,
                                     OUTPUT=output, EMPTIES=empties, RANK=world - 1, WORLD=world, SENDERS=world)))
    for phases in (1, 2, 3):
        jobs.append((f"_one_shot_all_reduce_kernel PHASES={phases}", _one_shot_all_reduce_kernel, ONE_SHOT_ARGS,
                     dict(RANK=1, WORLD=2, SENDERS=2, BLOCK=1024, MAX_PROGRAMS=256, PHASES=phases, WATCHDOG=True,
                          DEPENDENT_LAUNCH=True)))
    jobs.append(("_embedding_to_sum_kernel", _embedding_to_sum_kernel, EMBEDDING_ARGS,
                 dict(BLOCK=1024, RANK=1, WORLD=2, SENDERS=2, DEPENDENT_LAUNCH=True)))
    for adds, empties in ((False, False), (True, False), (True, True)):
        jobs.append((f"_site_add_rms_norm_kernel ADDS={adds} EMPTIES={empties}", _site_add_rms_norm_kernel,
                     SITE_NORM_ARGS, dict(BLOCK=8192, ADDS=adds, EMPTIES=empties, RANK=1, WORLD=2, SENDERS=2,
                                          WATCHDOG=True, DEPENDENT_LAUNCH=True)))
    failed = []
    for name, kernel, signature, constexprs in jobs:
        try:
            compile_one(kernel, signature, constexprs)
        except Exception as err:  # noqa: BLE001 - reported with the variant's name
            failed.append(f"{name}: {type(err).__name__}: {err}")
    return failed


def test_the_gemv_variants_the_pushed_embedding_and_the_one_shot_all_reduce_compile_for_an_h100():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"a kernel does not compile for an H100:\n{run.stdout[-6000:]}{run.stderr[-3000:]}"


if __name__ == "__main__":
    problems = _compile_all()
    print("\n\n".join(problems))
    sys.exit(1 if problems else 0)
