"""Tensor parallelism on the GPUs of one host, step by step with timestamps (a smoke test).

Rank 0 prints every thread's stack and exits if the whole run takes longer than `--limit`
seconds (60), so a hang shows where it is.

    python benchmarks/probes/tp_smoke.py [MODEL] [--tp 2] [--eager] [--limit 60]
"""

import faulthandler
import sys
import time

start = time.time()


def say(what):
    print(f"[{time.time() - start:7.2f} s] {what}", flush=True)


import torch  # noqa: E402

from mili.engine.llm import LLM  # noqa: E402
from mili.engine.sampling_params import SamplingParams  # noqa: E402

PROMPTS = [{"prompt_token_ids": [5, 6, 7, 8]}, {"prompt_token_ids": [9, 10, 11, 12, 13, 14]}]


def tokens(llm) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0),
                                                         use_tqdm=False)]


def main():
    limit = float(sys.argv[sys.argv.index("--limit") + 1]) if "--limit" in sys.argv else 60.0
    faulthandler.dump_traceback_later(limit, exit=True)
    model = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "data/mili-tiny-qwen3"
    tp = int(sys.argv[sys.argv.index("--tp") + 1]) if "--tp" in sys.argv else 2
    say(f"{torch.cuda.device_count()} GPUs; building LLM({model}, tensor_parallel_size={tp})")
    llm = LLM(model, tensor_parallel_size=tp, device="cuda", max_model_len=512, enforce_eager="--eager" in sys.argv,
              gpu_memory_utilization=0.3)  # leaves room for the one-process run below
    say("built; generating")
    parallel = tokens(llm)
    say(f"generated {parallel}")
    llm.model.shutdown()
    say("shut down")
    alone = tokens(LLM(model, device="cuda", max_model_len=512, enforce_eager="--eager" in sys.argv))
    say("one process gives the same tokens" if alone == parallel else f"one process gives other tokens: {alone}")
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main()
