"""Reference for exercise 1.7 (mirrors mili/generate.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from mili.generation_utils import greedy, single_sequence_cache
from mili.model.metadata import AttentionMetadata
from mili.model.qwen3 import Qwen3ForCausalLM


def generate_tokens(model: Qwen3ForCausalLM, prompt_ids: list[int], max_new_tokens: int,
                    eos_token_ids: Iterable[int] = (), pick_next: Callable[[Tensor], int] = greedy) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids, one at a time, stopping after an EOS id.

    1. cache = single_sequence_cache(model, len(prompt_ids) + max_new_tokens)  (block 0, slot i = token i)
    2. Prefill: run all prompt tokens at positions 0..P-1 with
       AttentionMetadata.prefill([P], slot_mapping=[0..P-1]); logits of the *last* row give token P.
    3. Decode: feed the newest token alone at position n with
       AttentionMetadata.decode(context_lens=[n + 1], slot_mapping=[n], block_tables=[[0]]).
    Pick each token with `pick_next(logits [vocab])`; yield it; stop after yielding an EOS id.
    Tensors go on model.device (input_ids and positions as int64).
    """
    eos = set(eos_token_ids)
    n = len(prompt_ids)
    cache = single_sequence_cache(model, n + max_new_tokens)
    ids = torch.tensor(prompt_ids, dtype=torch.int64, device=model.device)
    positions = torch.arange(n, dtype=torch.int64, device=model.device)
    metadata = AttentionMetadata.prefill([n], slot_mapping=list(range(n)), device=model.device)
    for _ in range(max_new_tokens):
        hidden = model(ids, positions, metadata, cache)
        token = pick_next(model.compute_logits(hidden[-1:])[0])
        yield token
        if token in eos:
            return
        ids = torch.tensor([token], dtype=torch.int64, device=model.device)
        positions = torch.tensor([n], dtype=torch.int64, device=model.device)
        metadata = AttentionMetadata.decode([n + 1], [n], [[0]], device=model.device)
        n += 1
