"""Batch processing: many prompts through the engine at once (continuous batching), results in order.

    python examples/batch_processing.py [--model data/mili-tiny-qwen3] [--num-prompts 64] [--out results.jsonl]

Writes one JSON line per prompt (question, answer, tokens) and prints the throughput.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

from mili import LLM, SamplingParams
from mili.exercise import repo_root


def questions(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(1, 99)} + {rng.randint(1, 99)}?" for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(repo_root() / "data" / "mili-tiny-qwen3"))
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSON lines file (default: stdout)")
    args = parser.parse_args()

    llm = LLM(args.model)
    prompts = questions(args.num_prompts)
    conversations = [[{"role": "user", "content": q}] for q in prompts]
    start = time.perf_counter()
    outputs = llm.chat(conversations, SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    elapsed = time.perf_counter() - start

    lines = [json.dumps({"question": q, "answer": o.outputs[0].text, "tokens": len(o.outputs[0].token_ids)})
             for q, o in zip(prompts, outputs)]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    else:
        print("\n".join(lines))
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{len(prompts)} prompts, {generated} tokens in {elapsed:.2f} s: {generated / elapsed:.0f} tokens/s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
