"""Tensor parallelism on the CPU with stand-in CUDA graphs, for tests/test_tensor_parallel.py
(run as `python -m tests.stand_in_graphs_tp MODEL_DIR REQUESTS_JSON`; prints JSON).

CUDA graphs need a GPU, but the way every rank records and replays its own can be followed on
the CPU: here `DecodeGraphs` is replaced, on every rank (a worker process imports the main module
of rank 0's process), by `EagerGraphs`, which "replays" the decode batches that fit its largest
size by running the model (a batch of one through `FusedDecodeStep` where the model allows it, as
`DecodeGraphs` records it), and the engine records graphs on any device. Like `DecodeGraphs` it
has the batch-1 graph's own inputs, which the model runner stages and rank 0 broadcasts to every
rank's. Prints the generated token ids and how many steps rank 0 replayed, how many of them
through the fused step, and how many from the staged batch-1 inputs.
"""

from __future__ import annotations

import json
import math
import sys

import torch

from mili.engine import cuda_graphs, model_runner
from mili.engine.fused_step import FusedDecodeStep, can_fuse


class EagerGraphs:
    def __init__(self, model, kv_cache, *, max_num_seqs: int, max_model_len: int, after_warm_up=None):
        self.model, self.kv_cache = model, kv_cache
        if after_warm_up is not None:  # called as DecodeGraphs calls it (on the CPU there are no sum buffers to empty)
            after_warm_up()
        self.largest = cuda_graphs.graph_batch_sizes(max_num_seqs)[-1]
        self.fused_step = FusedDecodeStep(model) if can_fuse(model) else None
        self.batch_1_inputs = cuda_graphs.Batch1Inputs(math.ceil(max_model_len / kv_cache.block_size), model.device)
        self.max_model_len = max_model_len
        self.replays = self.fused_replays = self.staged_replays = 0

    def release(self):
        self.largest = 0

    @property
    def has_batch_1(self) -> bool:
        return self.largest > 0

    def replay_batch_1(self):
        self.replays += 1
        self.staged_replays += 1
        self.fused_replays += self.fused_step is not None
        forward = self.fused_step or self.model
        return forward(*recorded_inputs(self, 1), self.kv_cache)

    def run(self, model_input):
        md = model_input.attn_metadata
        if md.is_prefill or md.num_seqs > self.largest:
            return None
        self.replays += 1
        forward = self.model
        if md.num_seqs == 1 and self.fused_step is not None:
            forward = self.fused_step
            self.fused_replays += 1
        return cuda_graphs.GraphOutput(forward(model_input.input_ids, model_input.positions, md, self.kv_cache),
                                       are_logits=False)


recorded_inputs = cuda_graphs.DecodeGraphs._inputs  # what DecodeGraphs records a batch size's graph on
cuda_graphs.DecodeGraphs = EagerGraphs
model_runner.can_record = lambda model: True


def main(model: str, requests: str) -> None:
    from mili import LLM, SamplingParams

    torch.set_num_threads(1)
    spec = json.loads(requests)
    llm = LLM(model, tensor_parallel_size=2, **spec["settings"])
    try:
        outputs = llm.generate(spec["prompts"], [SamplingParams(**p) for p in spec["params"]], use_tqdm=False)
        graphs = llm.engine.runner.graphs.graphs
        print(json.dumps({"token_ids": [[c.token_ids for c in o.outputs] for o in outputs],
                          "replays": graphs.replays, "fused_replays": graphs.fused_replays,
                          "staged_replays": graphs.staged_replays}))
    finally:
        llm.model.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
