"""Tensor-parallel layers (chapter 06, exercise 6.4): one layer's weights split across ranks.

Megatron-LM's split of a transformer block: the first matrix of a pair is split by its output
features (column-parallel: each rank computes some output features, no communication), the
second by its input features (row-parallel: each rank multiplies the features it holds and one
all-reduce sums the partial products). So each pair costs one all-reduce:

    attention: qkv_proj column-parallel (a rank's heads) -> attention per head -> o_proj row-parallel
    MLP:       gate_up_proj column-parallel               -> silu(gate) * up   -> down_proj row-parallel

The vocabulary is split too: each rank embeds the token ids in its part of the vocabulary (one
all-reduce assembles the embeddings) and computes its part of the logits (gathered on rank 0,
which samples).

A rank's part of n items is `shard_range(n, rank, size)`: contiguous, near-equal parts, so shapes
that do not divide by the number of ranks still split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mili.exercise import exercise

# A faster all-reduce for the tensors it takes (`mili.distributed.one_shot` installs one on GPUs):
# returns their sum over the ranks, or None for a tensor it does not take.
_fast_all_reduce: Callable[[Tensor], Tensor | None] | None = None


def set_fast_all_reduce(all_reduce: Callable[[Tensor], Tensor | None] | None) -> None:
    global _fast_all_reduce
    _fast_all_reduce = all_reduce


@dataclass(frozen=True)
class TensorParallelGroup:
    """This process's place in a group of `size` ranks that share one model."""

    rank: int
    size: int
    process_group: dist.ProcessGroup | None = None  # None: torch.distributed's default group

    def all_reduce(self, t: Tensor) -> Tensor:
        """The sum of `t` over the ranks, on every rank: `dist.all_reduce(t)` (in place), or on
        GPUs for a small tensor (a decode step's) the one-shot kernel of `mili.distributed.one_shot`,
        which returns a new tensor. Use the tensor it returns."""
        if _fast_all_reduce is not None and self.process_group is None:
            summed = _fast_all_reduce(t)
            if summed is not None:
                return summed
        dist.all_reduce(t, group=self.process_group)
        return t


def shard_range(n: int, rank: int, size: int) -> range:
    """Rank `rank`'s part of n items split into `size` contiguous parts (the first n % size one larger)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class ColumnParallelLinear(nn.Linear):
    """y = x @ W.T + b with W's rows (the output features) split across ranks.

    Rank r holds rows `self.rows` of the full W [out_features, in_features] and of b; its output
    is y[:, self.rows], computed without communication (forward is nn.Linear's).
    """

    def __init__(self, in_features: int, out_features: int, *, group: TensorParallelGroup, bias: bool = False,
                 rows: range | None = None):
        self.rows = rows if rows is not None else shard_range(out_features, group.rank, group.size)
        super().__init__(in_features, len(self.rows), bias=bias)
        self.group = group

    @exercise("6.4", "Column- and row-parallel linear layers")
    def load(self, weight, bias=None) -> None:
        """Copy this rank's part of the full layer into self.weight (and self.bias).

        weight: the full W [out_features, in_features]; bias: the full b [out_features] or None.
        Either may be a safetensors slice, which reads from disk only the part you index: take
        your part with one basic slice (weight[a:b] or weight[:, a:b]), never the whole tensor.
        This rank's output features are self.rows (a range). Copy in place
        (self.weight.copy_(...)); copy_ also converts the dtype.
        """
        raise NotImplementedError("Exercise 6.4: see chapters/06_deployment.ipynb, section 9")


class RowParallelLinear(nn.Linear):
    """y = x @ W.T + b with W's columns (the input features) split across ranks.

    Rank r holds columns `self.cols` of the full W [out_features, in_features] and receives
    x[:, self.cols] (the output of a column-parallel layer); every rank holds all of b.
    Given a backend (`ops`), the product is its `linear` op (a matrix-vector kernel at one row).
    """

    def __init__(self, in_features: int, out_features: int, *, group: TensorParallelGroup, bias: bool = False,
                 cols: range | None = None, ops=None):
        self.cols = cols if cols is not None else shard_range(in_features, group.rank, group.size)
        super().__init__(len(self.cols), out_features, bias=bias)
        self.group = group
        self.ops = ops

    def partial_product(self, x: Tensor) -> Tensor:
        """x @ W_r.T with this rank's weight W_r (no bias): this rank's partial sum of y."""
        return F.linear(x, self.weight) if self.ops is None else self.ops.linear(x, self.weight)

    @exercise("6.4")
    def load(self, weight, bias=None) -> None:
        """Copy this rank's part of the full layer into self.weight (and self.bias).

        weight: the full W [out_features, in_features]; bias: the full b [out_features] or None.
        Either may be a safetensors slice, which reads from disk only the part you index: take
        your part with one basic slice (weight[a:b] or weight[:, a:b]), never the whole tensor.
        This rank's input features are self.cols (a range). Copy in place
        (self.weight.copy_(...)); copy_ also converts the dtype.
        """
        raise NotImplementedError("Exercise 6.4: see chapters/06_deployment.ipynb, section 9")

    @exercise("6.4")
    def forward(self, x: Tensor) -> Tensor:
        """x: [T, len(self.cols)], this rank's input features -> y: [T, out_features], the full
        output, the same on every rank.

        Multiply by this rank's weight (self.partial_product(x): a partial sum of y), sum the
        partial sums of all ranks with y = self.group.all_reduce(y) (dist.all_reduce over the
        group, or a faster kernel on GPUs: use the tensor it returns), and add the bias
        (self.bias may be None) so that it counts once.
        """
        raise NotImplementedError("Exercise 6.4: see chapters/06_deployment.ipynb, section 9")


class VocabParallelEmbedding(nn.Module):
    """The embedding table split by rows: rank r holds the vectors of the token ids in `self.rows`.

    Each rank looks up the ids it holds and writes zeros for the others; one all-reduce adds
    the parts (exactly: every sum is one vector plus zeros).
    """

    def __init__(self, vocab_size: int, hidden_size: int, *, group: TensorParallelGroup):
        super().__init__()
        self.rows = shard_range(vocab_size, group.rank, group.size)
        self.weight = nn.Parameter(torch.empty(len(self.rows), hidden_size))
        self.group = group

    def load(self, weight) -> None:
        self.weight.copy_(weight[self.rows.start:self.rows.stop])

    def forward(self, input_ids: Tensor) -> Tensor:
        local = input_ids - self.rows.start
        outside = (local < 0) | (local >= len(self.rows))
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill_(outside.unsqueeze(-1), 0)
        return self.group.all_reduce(out)


class ParallelLMHead(ColumnParallelLinear):
    """The LM head split by vocabulary (column-parallel); the logits are gathered on rank 0.

    forward returns the logits [S, vocab_size] on rank 0 and None on the other ranks. The parts
    are gathered into one [size, S, part] tensor, which for one row (a batch-1 step) already is
    the logits in order, with no copy. The parts may differ by one row (vocab_size need not
    divide): the smaller ones are padded for the gather, which needs equal shapes, and trimmed
    after it.
    """

    def __init__(self, vocab_size: int, hidden_size: int, *, group: TensorParallelGroup):
        super().__init__(hidden_size, vocab_size, group=group)
        self.vocab_size = vocab_size
        self.part_size = -(-vocab_size // group.size)

    def forward(self, hidden_states: Tensor) -> Tensor | None:
        local = super().forward(hidden_states)
        if local.shape[-1] < self.part_size:
            local = F.pad(local, (0, self.part_size - local.shape[-1]))
        size, first = self.group.size, self.group.rank == 0
        parts = torch.empty(size, *local.shape, dtype=local.dtype, device=local.device) if first else None
        dist.gather(local.contiguous(), list(parts.unbind(0)) if first else None, group=self.group.process_group,
                    group_dst=0)
        if not first:
            return None
        if size * self.part_size == self.vocab_size:
            return parts.transpose(0, 1).reshape(local.shape[0], self.vocab_size)  # a view for one row
        return torch.cat([parts[r, :, :len(shard_range(self.vocab_size, r, size))] for r in range(size)], -1)
