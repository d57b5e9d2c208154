"""Tensor parallelism over torch.distributed (chapter 06): one process per rank, rank 0 runs the engine.

    from mili import LLM
    llm = LLM("models/Qwen3-32B", tensor_parallel_size=2)   # or: mili generate --tensor-parallel-size 2

`model.py` is rank 0's model (what the engine sees), `worker.py` the other ranks, `launch.py`
their processes, `step.py` what rank 0 sends them, `failure.py` the error that ends a group.
The layers are in `mili/model/parallel.py`, the split of the model in `mili/model/shard.py`.
"""
