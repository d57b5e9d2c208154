"""Where the host's time goes in a decode step, with the model taken out.

At batch 1 on a GPU, the engine's fused step takes less GPU time than the host may need to
schedule, prepare, launch and sample it: at 0.82 ms of GPU time per Qwen3-0.6B step on an H100,
a run whose host took 1.2 ms a step was host-bound (chapter 03, benchmarks/latency-h100-735cd02/).
This probe measures the host alone (mili.bench.step_profile.host_phase_times): the model
runner's forward becomes a stub that returns fixed logits, --batch requests run for --steps
decode steps, and each phase of the step (schedule, prepare, sample, complete, the whole step)
is timed at every call; medians in microseconds. The machine's load moves them by half within
minutes: compare variants within one run, interleaved.

    python benchmarks/probes/host_step_probe.py [--model data/mili-tiny-qwen3] [--batch 1 [32 ...]]
                                                [--steps 512] [--device cpu] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mili.bench.environment import environment
from mili.bench.step_profile import host_phase_times
from mili.engine.llm import LLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder or a preset (default: the repository's data/mili-tiny-qwen3)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="one or more batch sizes, run in turn")
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--device")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = args.model or str(Path(__file__).resolve().parents[2] / "data" / "mili-tiny-qwen3")
    runs = []
    for batch in args.batch:
        llm = LLM(model, device=args.device, max_num_seqs=max(8, batch), max_model_len=args.prompt_len + args.steps + 16)
        phases = host_phase_times(llm, batch, args.steps, args.prompt_len)
        runs.append({"batch": batch, "median_us_per_call": phases})
        print(f"{llm.model.device} · batch {batch} · {args.steps} decode steps · the forward stubbed out")
        for phase, row in phases.items():
            print(f"  {phase:<9} {row['us']:>8.1f} us  ({row['calls']} calls)")
    if args.json:
        report = {"environment": environment(llm.model.device), "model": args.model or "data/mili-tiny-qwen3",
                  "steps": args.steps, "prompt_len": args.prompt_len,
                  "runs": runs}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
