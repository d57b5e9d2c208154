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
layer instead of eleven, where the model allows it.

Recording needs ops that never wait for the host: the triton backend's kernels size their
launches from shapes alone. The torch backend's attention reads lengths on the host, so with it
the engine runs eagerly.

    graphs = DecodeGraphs(model, kv_cache, max_num_seqs=256, max_model_len=4096)  # records
    hidden = graphs.run(model_input)  # [B, H] for a decode batch that fits, else None (run eagerly)
"""

from __future__ import annotations

import math

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


class DecodeGraphs:
    """One recorded decode forward per batch size, sharing static inputs and a memory pool."""

    def __init__(self, model, kv_cache: KVCache, *, max_num_seqs: int, max_model_len: int):
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
        self.max_model_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, Tensor] = {}
        fused_step = FusedDecodeStep(model) if can_fuse(model) else None
        self.fused_batch_1 = fused_step is not None  # the batch-1 graph runs the fused step
        pool = None
        for size in reversed(self.sizes):  # the largest first: the smaller ones reuse its memory
            args = (self.input_ids[:size], self.positions[:size], self._metadata(size), kv_cache)
            forward = fused_step if size == 1 and fused_step is not None else model
            forward(*args)  # compile and autotune outside the recording
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = forward(*args)
            pool = pool or graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(device)

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(is_prefill=False, max_seqlen_q=1, max_seqlen_k=self.max_model_len,
                                 slot_mapping=self.slot_mapping[:size], context_lens=self.context_lens[:size],
                                 block_tables=self.block_tables[:size])

    def release(self) -> None:
        """Free the recorded graphs (their memory pool goes with the last one); every later step
        runs eagerly. Under tensor parallelism this comes before the ranks leave their NCCL group,
        whose collectives the graphs hold."""
        self.graphs.clear()
        self.outputs.clear()
        self.sizes = []

    def run(self, model_input: ModelInput) -> Tensor | None:
        """Hidden states [B, H] of a decode batch from its graph; None when it must run eagerly."""
        md = model_input.attn_metadata
        if md.is_prefill:
            return None
        batch = md.num_seqs
        size = next((s for s in self.sizes if s >= batch), None)
        if size is None:
            return None
        width = md.block_tables.shape[1]
        self.input_ids[:batch].copy_(model_input.input_ids)
        self.positions[:batch].copy_(model_input.positions)
        self.slot_mapping[:batch].copy_(md.slot_mapping)
        self.context_lens[:batch].copy_(md.context_lens)
        self.block_tables[:batch, :width].copy_(md.block_tables)  # past a row's context: never read
        if batch < size:  # the padding rows
            self.slot_mapping[batch:size].fill_(-1)
            self.context_lens[batch:size].fill_(1)
            self.block_tables[batch:size, 0].fill_(0)
        self.graphs[size].replay()
        return self.outputs[size][:batch]
