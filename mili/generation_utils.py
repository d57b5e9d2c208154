"""Small pieces shared by exercise 1.7, its reference and the CLI."""

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


def sampling_picker(temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                    device: torch.device | str = "cpu"):
    """A `pick_next(logits) -> int` for one sequence: greedy at temperature 0, else filtered sampling."""
    if temperature == 0:
        return greedy
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()

    def pick(logits: Tensor) -> int:
        scaled = logits.float() / temperature
        if 0 < top_k < scaled.numel():
            kth = torch.topk(scaled, top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs >= top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(outside, 0.0))
        return int(torch.multinomial(probs, 1, generator=gen))

    return pick


def stream_text(tokenizer, tokens, token_ids: list[int], eos: set[int]):
    """Yield the new text as each token of `tokens` arrives (appended to `token_ids`).

    Holds text back while it ends in an incomplete UTF-8 character (decoded as U+FFFD).
    """
    emitted = ""
    for token in tokens:
        token_ids.append(token)
        text = tokenizer.decode([t for t in token_ids if t not in eos])
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(emitted):
            yield text[len(emitted):]
            emitted = text
