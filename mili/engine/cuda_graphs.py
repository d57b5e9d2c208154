"""Decode steps replayed from CUDA graphs.

A decode step of a small model is hundreds of kernel launches, each costing the CPU tens of
microseconds in Python and the driver while the GPU waits: on an H200 the engine's decode was
bound by launching, not by the GPU. A CUDA graph records the launches of one forward pass once
and replays them all with one call.

A recorded kernel reads fixed addresses with fixed shapes. So `DecodeGraphs` keeps static input
buffers sized for the largest batch, records one graph per batch size in `graph_batch_sizes`
(a step pads its batch up to the next size), and before each replay copies the step's inputs
into the buffers. Padding rows write no K/V (slot -1) and attend to one key of block 0; their
outputs are dropped. Block tables are as wide as max_model_len needs, so one graph serves every
context length. Only decode steps replay: prefills vary in shape and run eagerly, as do batches
larger than the largest size.

The batch-1 graph records `FusedDecodeStep` (fused_step.py), the same forward in six kernels per
layer instead of eleven, where the model allows it. At batch 1 the host's time per step is what
a step costs (a Qwen3-0.6B step is 0.8 ms of GPU time on an H100), so that graph also spares the
host launches: it has inputs of its own, `Batch1Inputs`, one small device buffer that the model
runner fills with one host-to-device copy (no copies into the static inputs before the replay),
and, unless the model is split over several processes, it records the LM head too, so the
replay gives the step's logits.

Recording needs ops that never wait for the host: the triton backend's kernels size their
launches from shapes alone. The torch backend's attention reads lengths on the host, so with it
the engine runs eagerly.

    graphs = DecodeGraphs(model, kv_cache, max_num_seqs=256, max_model_len=4096)  # records
    output = graphs.run(model_input)  # for a decode batch that fits, else None (run eagerly)
    output.rows  # [B, H] hidden states, or [B, V] float32 logits when output.are_logits
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mili.engine.batch import ModelInput
from mili.engine.fused_step import FusedDecodeStep, can_fuse
from mili.model.metadata import AttentionMetadata, KVCache

MAX_GRAPH_BATCH = 512  # larger decode batches run eagerly (their launches are amortised anyway)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then multiples of 16 up to the first that holds max_num_seqs (at most 512)."""
    largest = min(max_num_seqs, MAX_GRAPH_BATCH)
    sizes = [s for s in (1, 2, 4, 8) if s < largest]
    sizes += range(16, 16 * math.ceil(largest / 16) + 1, 16) if largest > 8 else [largest]
    return sorted(set(sizes))


def can_record(model) -> bool:
    """CUDA graphs need a CUDA model whose decode attention is the Triton kernel (no host syncs)."""
    return model.device.type == "cuda" and model.backend.name == "triton"


class Batch1Inputs:
    """The batch-1 graph's inputs, in one int64 device buffer that one host-to-device copy fills.

    Each field starts at a multiple of 16 bytes (Triton compiles apart for pointers that are not):
        longs 0, 2, 4, 6   input id, position, slot, the logits row (always 0)
        from long 8, int32: context length, then (from int 4) the block table, max_blocks wide.
    `stage` writes a step's values into a host array of the same layout and says how much of it
    to copy: the block table only as far as the sequence has blocks (the kernels read no further).
    """

    LONGS = 8  # the four int64 fields, two elements apart; the int32 ones follow
    TABLE_AT = 4  # the block table's first int32, after the context length

    def __init__(self, max_blocks: int, device: torch.device | str):
        self.buffer = torch.zeros(self.size(max_blocks), dtype=torch.long, device=device)
        ints = self.buffer[self.LONGS:].view(torch.int32)
        self.input_ids, self.positions, self.slot_mapping, self.logits_indices = (
            self.buffer[i:i + 1] for i in (0, 2, 4, 6))
        self.context_lens = ints[:1]
        self.block_tables = ints[self.TABLE_AT:self.TABLE_AT + max_blocks].view(1, max_blocks)
        self.context_lens.fill_(1)

    @classmethod
    def size(cls, num_blocks: int) -> int:
        """int64 elements up to the end of a block table of num_blocks entries."""
        return cls.LONGS + math.ceil((cls.TABLE_AT + num_blocks) / 2)

    def stage(self, host: np.ndarray, *, token_id: int, position: int, slot: int, context_len: int,
              block_table: np.ndarray) -> int:
        """Write one decoding sequence's inputs into host (int64, at least as long as `buffer`);
        returns how many of its leading elements to copy into `buffer`."""
        host[:self.LONGS] = (token_id, 0, position, 0, slot, 0, 0, 0)
        ints = host[self.LONGS:].view(np.int32)
        ints[0] = context_len
        ints[self.TABLE_AT:self.TABLE_AT + len(block_table)] = block_table
        return self.size(len(block_table))


class GraphOutput(NamedTuple):
    rows: Tensor  # [B, H] hidden states, or [B, V] float32 logits
    are_logits: bool


class DecodeGraphs:
    """One recorded decode forward per batch size, sharing static inputs and a memory pool.

    with_logits: the batch-1 graph also records `model.compute_logits` (a model whose logits
    need other processes, as under tensor parallelism, passes False). after_warm_up: called
    between the batch-1 graph's warm-up, where its GEMVs are autotuned, and its recording (every
    rank of a tensor-parallel group empties its sum buffers there)."""

    def __init__(self, model, kv_cache: KVCache, *, max_num_seqs: int, max_model_len: int, with_logits: bool = False,
                 after_warm_up: Callable[[], None] | None = None):
        if not can_record(model):
            raise ValueError("CUDA graphs need the triton backend on a CUDA device")
        self.sizes = graph_batch_sizes(max_num_seqs)
        largest, device = self.sizes[-1], model.device
        max_blocks = math.ceil(max_model_len / kv_cache.block_size)
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.long, device=device)
        self.context_lens = torch.ones(largest, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(largest, max_blocks, dtype=torch.int32, device=device)
        self.batch_1_inputs = Batch1Inputs(max_blocks, device)
        self.max_model_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}
        fused_step = FusedDecodeStep(model) if can_fuse(model) else None
        self.fused_batch_1 = fused_step is not None  # the batch-1 graph runs the fused step
        self.pushed_sums = fused_step is not None and fused_step.sum_sites is not None  # and no all-reduce kernels
        self.logits_at_batch_1 = with_logits
        self.static_inputs = {size: self._inputs(size) for size in self.sizes}
        pool = None
        for size in reversed(self.sizes):  # the largest first: the smaller ones reuse its memory
            forward = self._batch_1_forward(model, fused_step) if size == 1 else model
            args = self.static_inputs[size]
            forward(*args, kv_cache)  # compile and autotune outside the recording
            if size == 1 and after_warm_up is not None:
                after_warm_up()
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = forward(*args, kv_cache)
            pool = pool or graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(device)

    def _batch_1_forward(self, model, fused_step):
        forward = fused_step or model
        if not self.logits_at_batch_1:
            return forward
        return lambda *args: model.compute_logits(forward(*args))

    def _inputs(self, size: int) -> tuple[Tensor, Tensor, AttentionMetadata]:
        """The static inputs a graph of `size` rows reads: (input_ids, positions, metadata)."""
        inputs = self.batch_1_inputs if size == 1 else self
        md = AttentionMetadata(is_prefill=False, max_seqlen_q=1, max_seqlen_k=self.max_model_len,
                               slot_mapping=inputs.slot_mapping[:size], context_lens=inputs.context_lens[:size],
                               block_tables=inputs.block_tables[:size])
        return inputs.input_ids[:size], inputs.positions[:size], md

    def release(self) -> None:
        """Free the recorded graphs (their memory pool goes with the last one); every later step
        runs eagerly. Under tensor parallelism this comes before the ranks leave their NCCL group,
        whose collectives the graphs hold."""
        self.graphs.clear()
        self.outputs.clear()
        self.sizes = []

    def run(self, model_input: ModelInput) -> GraphOutput | None:
        """A decode batch's output rows from its graph; None when it must run eagerly. Inputs the
        model runner staged in the graph's own buffers (`batch_1_inputs`) are not copied again."""
        md = model_input.attn_metadata
        if md.is_prefill:
            return None
        batch = md.num_seqs
        size = next((s for s in self.sizes if s >= batch), None)
        if size is None:
            return None
        input_ids, positions, static = self.static_inputs[size]
        width = md.block_tables.shape[1]
        for target, source in ((input_ids[:batch], model_input.input_ids), (positions[:batch], model_input.positions),
                               (static.slot_mapping[:batch], md.slot_mapping),
                               (static.context_lens[:batch], md.context_lens),
                               (static.block_tables[:batch, :width], md.block_tables)):  # past a row's context: never read
            if target.data_ptr() != source.data_ptr():
                target.copy_(source)
        if batch < size:  # the padding rows
            static.slot_mapping[batch:].fill_(-1)
            static.context_lens[batch:].fill_(1)
            static.block_tables[batch:, 0].fill_(0)
        self.graphs[size].replay()
        return GraphOutput(self.outputs[size][:batch], are_logits=size == 1 and self.logits_at_batch_1)

    @property
    def has_batch_1(self) -> bool:
        return 1 in self.graphs

    def replay_batch_1(self) -> Tensor:
        """Replay the batch-1 graph on what `batch_1_inputs` holds; its output rows (see `run`)."""
        self.graphs[1].replay()
        return self.outputs[1]
