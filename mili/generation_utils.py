"""Small pieces shared by exercise 1.7 and its reference."""

from __future__ import annotations

import torch
from torch import Tensor

from mili.model.metadata import KVCache


def greedy(logits: Tensor) -> int:
    """Pick the most likely next token from logits [vocab]."""
    return int(torch.argmax(logits))


def single_sequence_cache(model, length: int) -> KVCache:
    """A contiguous cache: one block of `length` slots (block 0), slot i holds token i."""
    return KVCache.for_config(model.config, num_blocks=1, block_size=length, dtype=model.dtype, device=model.device)

