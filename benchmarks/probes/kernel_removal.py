"""What does each small kernel of a batch-1 decode step cost the step?

At batch 1 the step of Qwen3-0.6B is a chain of about 300 kernels, and most are tiny: a norm
over 1,024 numbers, a SiLU over 3,072. Their own work is nothing; what they cost is their place
in the chain, the time from the end of the kernel before them to the start of the kernel after.
Timing a kernel alone does not show that, and with dependent launch the kernels overlap. So this
probe measures the step time without them: each variant replaces some ops by stand-ins that do
no work (the tokens are garbage, the timing is not), and the difference to the full step is what
fusing those kernels into their neighbours could save at most.

    full        the engine as it is
    norms       rms_norm and fused_add_rms_norm return their input (57 kernels fewer)
    silu        silu_and_mul returns the gate half, a view (28 fewer)
    qk_norm     qk_norm_rope returns q and k (28 fewer)
    kv_store    store_kvcache writes nothing (28 fewer)
    combine     decode attention skips its second pass, the combine of the splits (28 fewer)
    attention   decode attention returns q (56 fewer)
    all_small   norms, silu, kv_store and combine together

Each variant builds its own engine (CUDA graphs, random weights at the preset's shapes) and times
batch-1 decode like `mili bench latency`. Run on a GPU; on a CPU it says nothing about a GPU.

    python benchmarks/probes/kernel_removal.py [--model Qwen3-0.6B] [--new-tokens 256] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch

import mili.kernels as kernels
from mili.bench.floors import free_memory
from mili.bench.latency import run_benchmark


class _NoLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _stand_ins(variant: str) -> dict:
    """(module, attribute) -> replacement for one variant."""
    import solutions.kernels.decode_attention as decode

    norms = {(kernels, "rms_norm"): lambda x, weight, eps: x,
             (kernels, "fused_add_rms_norm"): lambda x, residual, weight, eps: (x, residual)}
    silu = {(kernels, "silu_and_mul"): lambda x: x[:, : x.shape[1] // 2]}
    qk_norm = {(kernels, "qk_norm_rope"): lambda q, k, *rest: (q, k)}
    kv_store = {(kernels, "store_kvcache"): lambda *args: None}
    combine = {(decode, "_combine_splits_kernel"): _NoLaunch()}
    attention = {(kernels, "paged_decode_attention"): lambda q, *args, **kwargs: q}
    return {"full": {}, "norms": norms, "silu": silu, "qk_norm": qk_norm, "kv_store": kv_store,
            "combine": combine, "attention": attention,
            "all_small": {**norms, **silu, **kv_store, **combine}}[variant]


@contextlib.contextmanager
def replaced(stand_ins: dict):
    saved = {key: getattr(*key) for key in stand_ins}
    try:
        for (module, name), value in stand_ins.items():
            setattr(module, name, value)
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


VARIANTS = ("full", "norms", "silu", "qk_norm", "kv_store", "combine", "attention", "all_small")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen3-0.6B")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = {}
    for variant in args.variants.split(","):
        with replaced(_stand_ins(variant)):
            report = run_benchmark(args.model, new_tokens=args.new_tokens, repeats=3)
        free_memory(torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # the engine's KV pool and graphs
        rows[variant] = report["mili"]["tpot_ms"]
        print(f"{variant:<10} {rows[variant] * 1e3:8.1f} us/token  "
              f"{(rows.get('full', rows[variant]) - rows[variant]) * 1e3:+8.1f} us against full", flush=True)
    result = {"environment": report["environment"], "model": args.model, "new_tokens": args.new_tokens,
              "floor_ms_per_token": report["floor_ms_per_token"], "tpot_ms": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
