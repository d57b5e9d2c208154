"""A/B of the CPU engine's decode attention (`DecodeKV`) against another version of its module.

The CPU engine's decode steps spend most of their time in `DecodeKV.paged_decode_attention`.
This probe builds two engines on the tiny model in one process, one with this tree's
`DecodeKV` and one with the `DecodeKV` of BASELINE (a copy of mili/engine/decode_kv.py from
another commit, e.g. `git show HEAD~1:mili/engine/decode_kv.py > /tmp/old.py`), and times
`mili bench throughput`'s CPU workload (32 requests, lengths U[32, 512], one thread) on each,
alternating for --rounds rounds: on a shared machine the load moves absolute times by a lot
within minutes, so only the rounds' pairs compare.

    python benchmarks/probes/decode_kv_ab.py BASELINE.py [--rounds 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from mili.bench.environment import environment
from mili.bench.throughput import run_mili, workload
from mili.engine import batched_attention
from mili.engine.llm import LLM

MODEL = str(Path(__file__).resolve().parents[2] / "data" / "mili-tiny-qwen3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="another version of mili/engine/decode_kv.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("baseline_decode_kv", args.baseline)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    engines = {}
    this_tree = batched_attention.DecodeKV
    for name, decode_kv_class in (("baseline", baseline.DecodeKV), ("this tree", this_tree)):
        batched_attention.DecodeKV = decode_kv_class  # each engine builds (and finds) its own DecodeKV here
        engines[name] = LLM(MODEL, dtype="float32", device="cpu")
        assert type(engines[name].engine.runner.decode_kv) is decode_kv_class
    batched_attention.DecodeKV = this_tree
    work = workload(32, 32, 512, engines["baseline"].model.config.vocab_size)
    rounds = []
    for _ in range(args.rounds):
        row = {name: run_mili(llm, work)["seconds"] for name, llm in engines.items()}
        rounds.append(row)
        print("  ".join(f"{name} {seconds:.2f} s" for name, seconds in row.items()), flush=True)
    if args.json:
        report = {"environment": environment(torch.device("cpu")), "baseline": args.baseline,
                  "workload": "32 requests, prompts and outputs U[32, 512], temperature 0.6, one thread",
                  "seconds_per_round": rounds}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
