"""Which kernels a batch-1 decode step runs on the GPU, and how long each takes.

Runs one request alone through the engine (random weights at a preset's shapes), profiles
`--steps` decode steps with torch.profiler and prints, per kernel name, the launches per step,
the mean duration and the time per step; then the step's GPU busy time (the union of the
kernels' intervals) against its span. Under dependent launch (Hopper, `MILI_PDL`) a kernel's
interval starts when it is launched, before the previous kernel ends, so its duration includes
its wait: run with `MILI_PDL=0` to see what each kernel costs alone.
The same kernel launched with different grids (the GEMV for each projection) is also listed by
launch shape (grid, threads, registers, from the trace), with the configurations the GEMV's
autotuner chose for this process's shapes.
With `--tensor-parallel-size N` it profiles rank 0 (each rank runs the same kernels on its
shard): an all-reduce kernel's time there includes waiting for the other ranks to arrive.

    python benchmarks/probes/decode_kernels.py --model Qwen3-0.6B [--tensor-parallel-size N]
                                              [--trace OUT.json] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from mili.bench.environment import environment
from mili.engine.llm import LLM
from mili.engine.sampling_params import RequestOutputKind, SamplingParams


def decode_kernels(model: str, steps: int, prompt_len: int, trace: str | None, tensor_parallel_size: int = 1) -> dict:
    llm = LLM(model, max_num_seqs=8, enable_prefix_caching=False, max_model_len=prompt_len + 640,
              tensor_parallel_size=tensor_parallel_size)
    engine = llm.engine
    prompt = [random.Random(0).randrange(llm.model.config.vocab_size) for _ in range(prompt_len)]
    params = SamplingParams(temperature=0.0, max_tokens=10 * steps, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    engine.add_request("probe", {"prompt_token_ids": prompt}, params)
    for _ in range(steps):  # prefill and warm decode steps
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as scratch:  # the launch shapes are read from a trace
        trace = trace or f"{scratch}/trace.json"
        prof.export_chrome_trace(trace)
        shapes = launch_shapes(trace, steps)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    table = collections.defaultdict(list)
    for e in kernels:
        table[e.name].append(e.device_time)
    rows = per_step(table, steps, lambda name: {"name": name[:110]})
    intervals = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    busy, covered_to = 0.0, intervals[0][0]
    for start, end in intervals:  # the union: under dependent launch a kernel starts before the last one ends
        busy += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    busy /= steps
    span = (intervals[-1][1] - intervals[0][0]) / steps
    host = cprofile_steps(engine, 5 * steps)
    shard = getattr(llm.model, "shard_model", llm.model)  # rank 0's part under tensor parallelism
    linears = {name: _time_linear(module.weight) for name, module in shard.model.layers[0].named_modules()
               if isinstance(module, torch.nn.Linear)}
    linears["lm_head"] = _time_linear(shard.lm_head.weight)
    if tensor_parallel_size > 1:
        llm.model.shutdown()
    return {"environment": environment(mili_pdl=os.environ.get("MILI_PDL", "1")),
            "device": torch.cuda.get_device_name(), "model": model, "tensor_parallel_size": tensor_parallel_size,
            "steps": steps,
            "kernels_per_step": len(kernels) / steps, "busy_us_per_step": busy, "span_us_per_step": span,
            "kernels": rows, "launch_shapes": shapes, "gemv_configs": gemv_configs(),
            "linears_batch1": linears, "host_profile": host}


def launch_shapes(trace: str, steps: int) -> list[dict]:
    """The trace's kernels grouped by name, grid, threads per block and registers per thread."""
    with open(trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    table = collections.defaultdict(list)
    for e in events:
        args = e.get("args", {})
        table[(e["name"][:60], str(args.get("grid")), str(args.get("block")), args.get("registers per thread"))].append(e["dur"])
    return per_step(table, steps, lambda key: dict(zip(("name", "grid", "block", "registers"), key)))


def per_step(table: dict, steps: int, fields) -> list[dict]:
    """One row per group of kernel durations (µs) in `table`: fields(its key), then launches per
    step, mean duration and time per step; the costliest first."""
    return sorted(({**fields(key), "per_step": len(t) / steps, "mean_us": sum(t) / len(t), "us_per_step": sum(t) / steps}
                   for key, t in table.items()), key=lambda r: -r["us_per_step"])


def gemv_configs() -> list[str]:
    """The GEMV autotuner's choices in this process: (N, K, input, output, ...) -> configuration."""
    from mili.kernels.linear import _gemv_tuned
    return [f"{key} -> {config}" for key, config in getattr(_gemv_tuned, "cache", {}).items()]


def cprofile_steps(engine, steps: int) -> str:
    """The host's Python functions over `steps` decode steps, by their own time (cProfile)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    return text.getvalue()


def _time_linear(weight: torch.Tensor, repeats: int = 200) -> dict:
    """A [1, K] x [K, N] product replayed from a CUDA graph: microseconds and GB/s of weight read."""
    x = torch.randn(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    torch.nn.functional.linear(x, weight)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            torch.nn.functional.linear(x, weight)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    us = 1e3 * start.elapsed_time(end) / repeats
    return {"shape": list(weight.shape), "us": us, "GB_per_s": weight.numel() * weight.element_size() / us / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen3-0.6B")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--trace")
    parser.add_argument("--json")
    args = parser.parse_args()
    report = decode_kernels(args.model, args.steps, args.prompt_len, args.trace, args.tensor_parallel_size)
    print(f"{report['device']} · {report['model']} · {report['kernels_per_step']:.0f} kernels per step · "
          f"busy {report['busy_us_per_step']:.0f} us, span {report['span_us_per_step']:.0f} us per step")
    for r in report["kernels"][:40]:
        print(f"{r['us_per_step']:9.1f} us/step {r['per_step']:6.1f}x {r['mean_us']:8.2f} us  {r['name']}")
    for r in report["launch_shapes"][:24]:
        print(f"{r['us_per_step']:9.1f} us/step {r['per_step']:6.1f}x {r['mean_us']:8.2f} us  grid {r['grid']} "
              f"block {r['block']} regs {r['registers']}  {r['name']}")
    print("\n".join(report["gemv_configs"]))
    print(report["host_profile"])
    for name, r in report["linears_batch1"].items():
        print(f"linear {name:<22} {r['shape']!s:>16} {r['us']:8.2f} us {r['GB_per_s']:7.0f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
