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
batch-1 decode like `mili bench latency`, whose figure includes the host's work per step and
moves with the host's load. So it also times the GPU alone: the recorded forward replayed back
to back, with and without the LM head and argmax after it. Run on a GPU.

    python benchmarks/probes/kernel_removal.py [--model Qwen3-0.6B] [--new-tokens 256] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
from pathlib import Path

import torch

from mili import kernels
from mili.bench.environment import environment
from mili.bench.floors import free_memory
from mili.bench.latency import time_mili
from mili.engine.llm import LLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_probe import back_to_back_us  # noqa: E402  (the probes time the GPU the same way)


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


def measure(model: str, new_tokens: int) -> dict:
    """A variant's batch-1 figures: the token time as `mili bench latency` sees it (the host's work
    included), and the GPU's time alone: the recorded batch-1 forward replayed back to back, and
    that forward with the LM head and the greedy argmax after it (the rest of a step's GPU work)."""
    llm = LLM(model, max_num_seqs=8, enable_prefix_caching=False, max_model_len=128 + new_tokens + 1)
    prompt = [random.Random(0).randrange(llm.model.config.vocab_size) for _ in range(128)]
    time_mili(llm, prompt, 16)
    tpot = statistics.median(time_mili(llm, prompt, new_tokens)["tpot_s"] for _ in range(3))
    graphs = llm.engine.runner.graphs
    graph, hidden = graphs.graphs[1], graphs.outputs[1]  # its inputs: the last step of the last request
    row = {"tpot_ms": 1e3 * tpot, "forward_replay_us": back_to_back_us(graph.replay, 200),
           "forward_logits_argmax_us": back_to_back_us(
               lambda: (graph.replay(), llm.model.compute_logits(hidden).argmax(-1)), 200)}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen3-0.6B")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    rows = {}
    for variant in args.variants.split(","):
        with replaced(_stand_ins(variant)):
            rows[variant] = measure(args.model, args.new_tokens)
        free_memory(torch.device("cuda"))  # the engine's KV pool and graphs
        full = rows.get("full", rows[variant])
        print(f"{variant:<10} " + "  ".join(
            f"{name} {value * (1e3 if name == 'tpot_ms' else 1):7.1f} us ({(full[name] - value) * (1e3 if name == 'tpot_ms' else 1):+6.1f})"
            for name, value in rows[variant].items()), flush=True)
    result = {"environment": environment(torch.device("cuda")), "model": args.model, "new_tokens": args.new_tokens,
              "columns": {"tpot_ms": "ms per token, as mili bench latency measures it (median of 3 requests)",
                          "forward_replay_us": "the recorded batch-1 forward replayed back to back: GPU time",
                          "forward_logits_argmax_us": "the same with the LM head and the greedy argmax"},
              "variants": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
