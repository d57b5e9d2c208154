"""Where the host's time goes in a decode step, with the model taken out.

At batch 1 on a GPU, the engine's fused step takes less GPU time than the host may need to
schedule, prepare, launch and sample it: at 0.82 ms of GPU time per Qwen3-0.6B step on an H100,
a run whose host took 1.2 ms a step was host-bound (chapter 03, benchmarks/latency-h100-735cd02/).
This probe measures the host alone. It replaces the model runner's forward with a stub that
returns fixed logits, runs --batch requests for --steps decode steps, and times every call of
each phase of the step:

    schedule   the scheduler picks the step's sequences
    prepare    the flat batch from the persistent batch (ModelRunner.prepare)
    sample     the sampler's inputs and its launch (ModelRunner.sample)
    complete   reading the ids, appending them, reporting (the previous step's, under overlap)
    step       the whole engine.step(), these and the bookkeeping between them

Figures are medians in microseconds. On a GPU the stub also skips the forward's own launches
(the graph's input copies, the replay, the LM head), so there they are the engine's Python
without those. The machine's load moves them by half within minutes: compare variants within
one run, interleaved.

    python benchmarks/probes/host_step_probe.py [--model data/mili-tiny-qwen3] [--batch 1]
                                                [--steps 512] [--device cpu] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

import torch

from mili.bench.step_profile import wrap_method
from mili.bench.throughput import environment
from mili.engine.llm import LLM
from mili.engine.sampling_params import SamplingParams

PHASES = ("schedule", "prepare", "sample", "complete", "step")


def host_step_times(llm: LLM, batch: int, steps: int, prompt_len: int) -> dict:
    """Median microseconds per call of each phase over one run of `batch` requests."""
    engine, runner = llm.engine, llm.engine.runner
    logits = torch.zeros(batch, runner.vocab_size, device=runner.device)
    logits[:, 7] = 1.0  # every step samples token 7, greedy or not

    def stub_forward(model_input):
        return logits[:len(model_input.logits_indices)]

    runner.run = stub_forward
    calls: dict[str, list[int]] = collections.defaultdict(list)

    def timed(phase):
        def wrapper(inner, *args, **kwargs):
            start = time.perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                calls[phase].append(time.perf_counter_ns() - start)
        return wrapper

    for owner, name, phase in ((engine.scheduler, "schedule", "schedule"), (runner, "prepare", "prepare"),
                               (runner, "sample", "sample"), (engine, "_complete", "complete"),
                               (engine, "step", "step")):
        wrap_method(owner, name, timed(phase))
    prompts = [{"prompt_token_ids": [3 + (i + j) % 200 for j in range(prompt_len)]} for i in range(batch)]
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    calls.clear()
    llm.generate(prompts, params, use_tqdm=False)
    return {phase: {"us": round(statistics.median(calls[phase]) / 1e3, 1), "calls": len(calls[phase])}
            for phase in PHASES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or a preset (default: the repository's data/mili-tiny-qwen3)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--device")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = args.model or str(Path(__file__).resolve().parents[2] / "data" / "mili-tiny-qwen3")
    llm = LLM(model, device=args.device, max_num_seqs=max(8, args.batch),
              max_model_len=args.prompt_len + args.steps + 16)
    phases = host_step_times(llm, args.batch, args.steps, args.prompt_len)
    print(f"{llm.model.device} · batch {args.batch} · {args.steps} decode steps · the forward stubbed out")
    for phase, row in phases.items():
        print(f"  {phase:<9} {row['us']:>8.1f} us  ({row['calls']} calls)")
    if args.json:
        report = {"environment": environment(llm.model.device), "model": args.model or "data/mili-tiny-qwen3", "batch": args.batch,
                  "steps": args.steps, "prompt_len": args.prompt_len, "median_us_per_call": phases}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
