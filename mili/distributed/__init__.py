"""Tensor parallelism over torch.distributed (chapter 06): one process per rank, rank 0 runs the engine.

    from mili import LLM
    llm = LLM("models/Qwen3-32B", tensor_parallel_size=2)   # or: mili generate --tensor-parallel-size 2

`model.py` is rank 0's model (the engine's view), `worker.py` the other ranks, `launch.py` their
processes, `step.py` what rank 0 sends them. The layers are in `mili/model/parallel.py`.
"""

from mili.distributed.launch import TensorParallelFailure
from mili.distributed.model import TensorParallelModel, load_tensor_parallel

__all__ = ["TensorParallelFailure", "TensorParallelModel", "load_tensor_parallel"]
