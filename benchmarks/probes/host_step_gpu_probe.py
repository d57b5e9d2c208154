"""Where the host's time goes in a batch-1 decode step on a GPU, with the real forward.

host_step_probe.py stubs the forward out and times the engine's Python alone. On a GPU the host
also pays for the forward's launches: the copies into the CUDA graph's static inputs, the replay,
the LM head, the sampler's kernels, the copy of the ids back. This probe keeps the forward, runs
one greedy request of --prompt-len tokens for --steps decode steps, and times every call of
each part of the step (medians in microseconds; "wait" is the time the host spent waiting for
the device's ids, the rest is host work). With --cprofile it also writes a cProfile of the
same run, sorted by own time.

    python benchmarks/probes/host_step_gpu_probe.py --model Qwen3-0.6B [--steps 512] [--json OUT.json]
                                                    [--cprofile OUT.txt]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from mili.bench.environment import environment
from mili.bench.step_profile import time_calls
from mili.engine import batch as batch_module
from mili.engine.llm import LLM
from mili.engine.sampling_params import SamplingParams


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Qwen3-0.6B")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--json")
    parser.add_argument("--cprofile")
    args = parser.parse_args()
    llm = LLM(args.model, max_num_seqs=8, enable_prefix_caching=False,  # as `mili bench latency` runs it
              max_model_len=args.prompt_len + args.steps + 1)
    engine, runner = llm.engine, llm.engine.runner
    calls: dict[str, list[int]] = {}
    parts = [(engine, "step", "step"), (engine.scheduler, "schedule", "schedule"),
             (engine.input_batch, "sync", "batch.sync"), (runner, "prepare", "prepare"), (runner, "run", "run"),
             (runner.model, "compute_logits", "run: LM head"), (runner, "sample", "sample"),
             (engine, "_complete", "complete")]
    if runner.graphs is not None:
        parts.append((runner.graphs, "run", "run: graph inputs + replay"))
        parts.append((runner.graphs.graphs[1], "replay", "run: replay"))
    for owner, name, phase in parts:
        time_calls(owner, name, calls, phase)
    calls["wait for ids"] = []
    result = batch_module.LaunchedStep.result

    def timed_result(self):
        start = time.perf_counter_ns()
        ids = result(self)
        calls["wait for ids"].append(time.perf_counter_ns() - start)
        return ids

    batch_module.LaunchedStep.result = timed_result
    prompt = [{"prompt_token_ids": [3 + j % 200 for j in range(args.prompt_len)]}]
    params = SamplingParams(temperature=0.0, max_tokens=args.steps, ignore_eos=True)
    llm.generate(prompt, params, use_tqdm=False)  # warm-up
    for timings in calls.values():
        timings.clear()
    sync()
    start = time.perf_counter()
    profiler = cProfile.Profile() if args.cprofile else None
    llm.generate(prompt, params, use_tqdm=False)
    sync()
    wall = time.perf_counter() - start
    if profiler is not None:  # a second run under cProfile: its overhead stays out of the timings above
        profiler.enable()
        llm.generate(prompt, params, use_tqdm=False)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(60)
        Path(args.cprofile).write_text(text.getvalue())
    phases = {phase: {"us": round(statistics.median(t) / 1e3, 1), "calls": len(t)} for phase, t in calls.items() if t}
    print(f"{runner.device} · {args.model} · batch 1 · {args.steps} decode steps · "
          f"{1e3 * wall / args.steps:.3f} ms per step of wall time")
    for phase, row in phases.items():
        print(f"  {phase:<28} {row['us']:>8.1f} us  ({row['calls']} calls)")
    if args.json:
        report = {"environment": environment(runner.device), "model": args.model, "steps": args.steps,
                  "prompt_len": args.prompt_len, "ms_per_step": 1e3 * wall / args.steps,
                  "median_us_per_call": phases}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
