"""Tensor parallelism on the GPUs of one host, step by step with timestamps (a smoke test).

    python -X faulthandler benchmarks/probes/tp_smoke.py [MODEL] [--tp 2] [--eager]
"""

import sys
import time

start = time.time()


def say(what):
    print(f"[{time.time() - start:7.2f} s] {what}", flush=True)


import torch  # noqa: E402

from mili.engine.llm import LLM  # noqa: E402
from mili.engine.sampling_params import SamplingParams  # noqa: E402

def main():
    model = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "data/mili-tiny-qwen3"
    tp = int(sys.argv[sys.argv.index("--tp") + 1]) if "--tp" in sys.argv else 2
    say(f"{torch.cuda.device_count()} GPUs; building LLM({model}, tensor_parallel_size={tp})")
    llm = LLM(model, tensor_parallel_size=tp, device="cuda", max_model_len=512, enforce_eager="--eager" in sys.argv)
    say("built; generating")
    outputs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}] * 2, SamplingParams(max_tokens=8, temperature=0))
    say(f"generated {[o.outputs[0].token_ids for o in outputs]}")
    llm.model.shutdown() if hasattr(llm.model, "shutdown") else None
    say("shut down")


if __name__ == "__main__":
    main()
