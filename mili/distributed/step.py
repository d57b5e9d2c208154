"""What rank 0 sends the workers for each call into the model.

A command is a small tuple through each worker's pipe (pickled; tens of microseconds), and
the tensors follow in one `torch.distributed.broadcast` from rank 0 (NCCL on GPUs, gloo on
the CPU), so they go device to device:

    ("kv_cache", num_blocks, block_size)  allocate this rank's paged cache (its own KV heads)
    ("forward", layout, use_cache)        then a broadcast of the step's integer tensors, packed
    ("logits", shape)                     then a broadcast of the hidden rows to turn into logits
    ("copy_blocks", pairs)                copy the K/V of blocks (src, dst) in this rank's cache: a
                                          forked sample's partial block (n > 1)
    ("record_graphs", max_num_seqs, max_model_len)  record this rank's decode CUDA graphs
    ("graph_forward", layout)             as "forward", replaying this rank's graph where one fits
    ("graph_batch_1",)                    then a broadcast into this rank's batch-1 graph inputs:
                                          replay that graph, and its output's part of the logits
    ("shutdown",)

A step's tensors (input_ids, positions and every tensor of its AttentionMetadata) are all
integers, so they travel packed into one int64 buffer: one broadcast per step instead of
eight. The layout (names, dtypes, shapes and the metadata's plain fields) goes in the
command, so a field added to AttentionMetadata travels without a change here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import Tensor

from mili.model.metadata import AttentionMetadata

KV_CACHE, FORWARD, LOGITS, COPY_BLOCKS, SHUTDOWN = "kv_cache", "forward", "logits", "copy_blocks", "shutdown"
RECORD_GRAPHS, GRAPH_FORWARD, GRAPH_BATCH_1 = "record_graphs", "graph_forward", "graph_batch_1"


@dataclass(frozen=True)
class StepLayout:
    tensors: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]  # (name, dtype, shape), in buffer order
    scalars: tuple[tuple[str, object], ...]  # the metadata's fields that are not tensors (or are None)

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for _, _, shape in self.tensors)


def pack_step(input_ids: Tensor, positions: Tensor, md: AttentionMetadata) -> tuple[StepLayout, Tensor]:
    """The layout of a step and its integer tensors in one int64 buffer (on their device)."""
    named = {"input_ids": input_ids, "positions": positions}
    scalars = []
    for field in fields(md):
        value = getattr(md, field.name)
        if isinstance(value, Tensor):
            if value.is_floating_point() or value.is_complex():
                raise TypeError(f"AttentionMetadata.{field.name} is {value.dtype}: only integer tensors are sent")
            named[f"md.{field.name}"] = value
        else:
            scalars.append((field.name, value))
    layout = StepLayout(tuple((name, t.dtype, tuple(t.shape)) for name, t in named.items()), tuple(scalars))
    return layout, torch.cat([t.reshape(-1).to(torch.int64) for t in named.values()])


def unpack_step(layout: StepLayout, buffer: Tensor) -> tuple[Tensor, Tensor, AttentionMetadata]:
    sizes = [math.prod(shape) for _, _, shape in layout.tensors]
    tensors = {name: part.view(shape).to(dtype)
               for (name, dtype, shape), part in zip(layout.tensors, buffer.split(sizes), strict=True)}
    md = AttentionMetadata(**dict(layout.scalars),
                           **{name[3:]: t for name, t in tensors.items() if name.startswith("md.")})
    return tensors["input_ids"], tensors["positions"], md


def broadcast_from_first(tensor: Tensor) -> Tensor:
    """Rank 0's `tensor` on every rank (in place on the others, which pass an empty one)."""
    dist.broadcast(tensor, group_src=0)
    return tensor
