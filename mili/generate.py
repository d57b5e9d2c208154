"""Naive generation for one sequence (chapter 01, exercise 1.7).

The simplest correct loop over the model: one prefill of the prompt, then one decode step per
new token, with a contiguous KV cache (one block as long as the whole sequence). Chapter 03's
engine replaces it with continuous batching over a shared paged cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch  # noqa: F401 (for your implementation)
from torch import Tensor

from mili.exercise import exercise
from mili.generation_utils import greedy, single_sequence_cache  # noqa: F401 (used by the exercise)
from mili.model.metadata import AttentionMetadata  # noqa: F401
from mili.model.qwen3 import Qwen3ForCausalLM


@exercise("1.7", "Naive greedy generation")
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
    raise NotImplementedError("Exercise 1.7: see chapters/01_project_overview.ipynb, section 4")
