"""Rank 0's tensor-parallel model: to the engine it is a model like any other.

`TensorParallelModel` has what the engine uses of `Qwen3ForCausalLM` (`forward`, `compute_logits`,
`config`, `device`, `dtype`, `backend`), so the scheduler, the model runner and the sampler run
on rank 0 unchanged and know nothing of the other ranks. Two additions, which the model runner
calls where a model has them: `copy_kv_blocks` (a request with n > 1 forks its samples) copies
blocks in every rank's cache, not only in rank 0's; `record_decode_graphs` records CUDA graphs
on every rank (`TensorParallelGraphs`). Each call sends the workers the same
call (`step.py`), then runs rank 0's own shard; the shards meet in their all-reduces and in the
gather of the logits. `config` is rank 0's view (`ModelShard.local_config`): the engine sizes
the KV cache from it, so each rank's cache holds its own KV heads. Each worker allocates its
cache, with the same number of blocks, the first time rank 0 passes a new one.

Failures: a worker that fails, or a step that stops half-way on rank 0 (an exception, Ctrl-C),
leaves the ranks out of step, so the workers are stopped and every later call raises
`TensorParallelFailure`.

CUDA graphs: a graph of this model recorded on rank 0 would replay rank 0's kernels alone, so
each rank records its own shard's decode graphs (`worker.py` says how they stay in step), and
the model runner holds `TensorParallelGraphs`, whose `run` is one step on every rank.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from mili.distributed import one_shot, step
from mili.distributed.failure import TensorParallelFailure
from mili.distributed.launch import WorkerGroup, check_devices, start_store
from mili.distributed.worker import (
    WorkerSpec, forward_from_graphs, join_group, leave_group, load_shard, release_graphs,
)
from mili.engine.cuda_graphs import GraphOutput
from mili.model.metadata import AttentionMetadata, KVCache
from mili.model.qwen3 import check_flat_inputs


class TensorParallelModel:
    def __init__(self, shard_model, workers: WorkerGroup):
        self.shard_model = shard_model  # rank 0's Qwen3ForCausalLM shard
        self.workers = workers
        self.config = shard_model.config
        self.backend = shard_model.backend
        self.tensor_parallel_size = shard_model.shard.group.size
        self._worker_cache: weakref.ref | None = None  # the KV cache the workers mirror
        self._broken: str | None = None
        self._recorded: list = []  # rank 0's DecodeGraphs, released before the group is left
        self._finalizer = weakref.finalize(self, _stop_group, workers, self._recorded)

    @property
    def whole_config(self):
        """The whole model's config (`config` is rank 0's part)."""
        return self.shard_model.shard.config

    @property
    def device(self) -> torch.device:
        return self.shard_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.shard_model.dtype

    def __call__(self, input_ids: Tensor, positions: Tensor, attn_metadata: AttentionMetadata,
                 kv_cache: KVCache | None = None) -> Tensor:
        return self.forward(input_ids, positions, attn_metadata, kv_cache)

    @torch.inference_mode()
    def forward(self, input_ids: Tensor, positions: Tensor, attn_metadata: AttentionMetadata,
                kv_cache: KVCache | None = None) -> Tensor:
        check_flat_inputs(input_ids, positions)
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("a tensor-parallel model cannot be recorded into a CUDA graph by its caller: the "
                               "workers would not replay with it (record_decode_graphs records every rank's)")
        if kv_cache is not None and kv_cache.k.shape[3] != self.config.num_key_value_heads:
            raise ValueError(f"the KV cache holds {kv_cache.k.shape[3]} KV heads but rank 0 holds "
                             f"{self.config.num_key_value_heads}: size it from this model's config")
        layout, buffer = step.pack_step(input_ids, positions, attn_metadata)

        def run():
            if kv_cache is not None:
                self._share_cache(kv_cache)
            self.workers.send((step.FORWARD, layout, kv_cache is not None))
            step.broadcast_from_first(buffer)
            return self.shard_model(input_ids, positions, attn_metadata, kv_cache)

        return self._in_step(run)

    @torch.inference_mode()
    def compute_logits(self, hidden_states: Tensor) -> Tensor:
        hidden_states = hidden_states.contiguous()

        def run():
            self.workers.send((step.LOGITS, tuple(hidden_states.shape)))
            step.broadcast_from_first(hidden_states)
            return self.shard_model.compute_logits(hidden_states)

        return self._in_step(run)

    @torch.inference_mode()
    def copy_kv_blocks(self, kv_cache: KVCache, pairs: list[tuple[int, int]]) -> None:
        """Copy the K/V of blocks (src -> dst) in every rank's cache (each holds its own KV heads).

        The workers run commands in the order rank 0 sends them, so the copy falls between the
        same two forwards on every rank."""

        def run():
            self._share_cache(kv_cache)
            self.workers.send((step.COPY_BLOCKS, [(int(src), int(dst)) for src, dst in pairs]))
            kv_cache.copy_blocks(pairs)

        self._in_step(run)

    def record_decode_graphs(self, kv_cache: KVCache, *, max_num_seqs: int,
                             max_model_len: int) -> TensorParallelGraphs:
        """Every rank records its own decode graphs over its cache (CUDA, triton backend)."""
        from mili.engine.cuda_graphs import DecodeGraphs

        def run():
            self._share_cache(kv_cache)
            self.workers.send((step.RECORD_GRAPHS, max_num_seqs, max_model_len))
            return DecodeGraphs(self.shard_model, kv_cache, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                                after_warm_up=one_shot.empty_sum_buffers)

        graphs = self._in_step(run)
        self._recorded.append(graphs)
        return TensorParallelGraphs(self, graphs, kv_cache)

    def _share_cache(self, kv_cache: KVCache) -> None:
        """Have the workers allocate their caches like `kv_cache`, unless they already mirror it."""
        if self._worker_cache is None or self._worker_cache() is not kv_cache:
            self.workers.send((step.KV_CACHE, kv_cache.num_blocks, kv_cache.block_size))
            self._worker_cache = weakref.ref(kv_cache)

    def _in_step(self, run: Callable[[], Tensor | None]) -> Tensor | None:
        """Run one call on every rank; any failure half-way ends the group (see the module docstring)."""
        if self._broken is None and self.workers.failure is not None:
            self._broken = self.workers.failure
        if self._broken is not None:
            raise TensorParallelFailure(self._broken)
        try:
            return run()
        except BaseException as err:
            failure = self.workers.wait_for_failure(timeout=5.0) if isinstance(err, Exception) else None
            self._broken = failure or (f"rank 0 stopped in the middle of a step ({type(err).__name__}: {err}); "
                                       "the ranks are out of step, so the group was shut down")
            self.workers.stop(polite=False)  # they wait in a collective, not for a command
            self.shutdown()
            if isinstance(err, Exception):
                raise TensorParallelFailure(self._broken) from err
            raise

    def shutdown(self) -> None:
        """Stop the workers and leave the process group (also done at exit). Safe to call twice."""
        self._finalizer()
        if self._broken is None:
            self._broken = "this tensor-parallel model was shut down"


class TensorParallelGraphs:
    """What the model runner holds as its CUDA graphs: `run` is one step on every rank, each
    replaying its own graph where one fits the batch and running eagerly where none does.

    A batch-1 step that the model runner staged in rank 0's `batch_1_inputs` goes as
    `graph_batch_1`: one broadcast copies that buffer into every rank's own, every rank replays
    its batch-1 graph and turns its own output into its part of the logits (the ranks' hidden
    states are the same bits: their sums add in rank order). So the step's inputs are neither
    packed nor unpacked nor copied into the graphs' buffers, and the hidden state is not broadcast
    for the LM head."""

    def __init__(self, model: TensorParallelModel, graphs, kv_cache: KVCache):
        self.model, self.graphs, self.kv_cache = model, graphs, kv_cache  # graphs: rank 0's DecodeGraphs

    @property
    def batch_1_inputs(self):
        return self.graphs.batch_1_inputs

    @property
    def fused_batch_1(self) -> bool:
        return self.graphs.fused_batch_1

    @property
    def pushed_sums(self) -> bool:
        return self.graphs.pushed_sums

    @torch.inference_mode()
    def run(self, model_input) -> GraphOutput:
        """The step's output as a GraphOutput, never None (no step falls back to the caller): the
        logits of a staged batch-1 step, the hidden states [T, H] of any other."""
        model, md = self.model, model_input.attn_metadata
        if self.graphs.has_batch_1 and model_input.input_ids.data_ptr() == self.batch_1_inputs.input_ids.data_ptr():
            def run_batch_1():
                model.workers.send((step.GRAPH_BATCH_1,))
                step.broadcast_from_first(self.batch_1_inputs.buffer)
                return GraphOutput(model.shard_model.compute_logits(self.graphs.replay_batch_1()), are_logits=True)

            return model._in_step(run_batch_1)
        layout, buffer = step.pack_step(model_input.input_ids, model_input.positions, md)

        def run():
            model.workers.send((step.GRAPH_FORWARD, layout))
            step.broadcast_from_first(buffer)
            return GraphOutput(forward_from_graphs(model.shard_model, self.graphs, model_input.input_ids,
                                                   model_input.positions, md, self.kv_cache), are_logits=False)

        return model._in_step(run)


def _stop_group(workers: WorkerGroup, recorded: list) -> None:
    """Release rank 0's graphs, stop the workers (each releases its own), then leave the group:
    on two H200s, leaving while graphs that captured NCCL collectives were alive hung."""
    for graphs in recorded:
        release_graphs(graphs)
    recorded.clear()
    workers.stop()
    leave_group()


def load_tensor_parallel(model: str, size: int, *, dtype: torch.dtype | None, device: torch.device,
                         make_backend: Callable, seed: int = 0) -> TensorParallelModel:
    """Start ranks 1 .. size-1, load every rank's part of `model` at once, return rank 0's.

    make_backend(device) -> Backend must be picklable (a module-level function or a
    functools.partial of one): each rank makes its own.
    """
    import torch.distributed as dist

    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise ValueError(f"tensor parallelism needs at least 2 ranks, got tensor_parallel_size={size!r}")
    device = torch.device(device)
    check_devices(device, size)
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process (another tensor-parallel "
                           "model?): shut it down first (llm.model.shutdown())")
    store = start_store(size)
    spec = WorkerSpec(str(model), dtype, device, make_backend, seed, size, store.port, torch.get_num_threads(),
                      one_shot_all_reduce=one_shot.usable(device))
    workers = WorkerGroup(spec)
    try:
        shard_model = load_shard(0, spec)  # while the workers start
        workers.wait_for("joining")
        join_group(0, spec, store)
        workers.wait_for("ready")
    except BaseException:
        _stop_group(workers)
        raise
    workers.watch()
    return TensorParallelModel(shard_model, workers)
