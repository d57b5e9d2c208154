"""The batch contract (docs/architecture.md, "The batch contract"): one flat batch of tokens from many sequences.

A step's tokens are packed back to back: `input_ids [T]`, `positions [T]`. `AttentionMetadata`
says where each sequence's queries and keys are and where new keys and values go in the paged
KV cache. Prefill (with or without a cached prefix) and decode are both expressed this way:

- prefill: `cu_seqlens_q [B+1]` delimits each sequence's new tokens in the flat batch;
  `cu_seqlens_k [B+1]` delimits each sequence's whole context (cached prefix + new tokens).
  Without a cached prefix the two are equal and attention reads k, v of this step directly;
  with one, `block_tables` is set and attention reads the paged cache.
- decode: one new token per sequence; `context_lens [B]` counts the tokens each attends to
  (its own included) and `block_tables [B, max_blocks]` locates them in the cache.

`slot_mapping [T]` is the flat cache slot (block_id * block_size + offset) where each new
token's k and v are written; -1 skips the write.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    is_prefill: bool
    cu_seqlens_q: torch.Tensor | None = None  # [B+1] int32
    cu_seqlens_k: torch.Tensor | None = None  # [B+1] int32
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0
    slot_mapping: torch.Tensor | None = None  # [T] int64, -1 = do not write
    context_lens: torch.Tensor | None = None  # [B] int32
    block_tables: torch.Tensor | None = None  # [B, max_blocks] int32, -1 padded

    @classmethod
    def prefill(
        cls,
        query_lens: list[int],
        *,
        context_lens: list[int] | None = None,
        slot_mapping: list[int] | None = None,
        block_tables: list[list[int]] | None = None,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Metadata for new tokens of B sequences; `context_lens` defaults to `query_lens`."""
        context_lens = list(query_lens) if context_lens is None else list(context_lens)
        if len(context_lens) != len(query_lens):
            raise ValueError("query_lens and context_lens need one entry per sequence")
        if any(q <= 0 or k < q for q, k in zip(query_lens, context_lens)):
            raise ValueError(f"each sequence needs 0 < query_len <= context_len, got {query_lens} / {context_lens}")
        if block_tables is None and context_lens != list(query_lens):
            raise ValueError("a cached prefix (context_len > query_len) needs block_tables")
        return cls(
            is_prefill=True,
            cu_seqlens_q=_cumsum(query_lens, device),
            cu_seqlens_k=_cumsum(context_lens, device),
            max_seqlen_q=max(query_lens),
            max_seqlen_k=max(context_lens),
            slot_mapping=None if slot_mapping is None else torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=None if block_tables is None else pad_block_tables(block_tables, device),
        )

    @classmethod
    def decode(
        cls,
        context_lens: list[int],
        slot_mapping: list[int],
        block_tables: list[list[int]],
        *,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Metadata for one new token per sequence, attending to its whole context."""
        if not (len(context_lens) == len(slot_mapping) == len(block_tables)):
            raise ValueError("decode needs one context length, slot and block table per sequence")
        return cls(
            is_prefill=False,
            max_seqlen_q=1,
            max_seqlen_k=max(context_lens),
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            block_tables=pad_block_tables(block_tables, device),
        )

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.numel())


def _cumsum(lengths: list[int], device) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def pad_block_tables(block_tables: list[list[int]], device) -> torch.Tensor:
    width = max(1, max(len(t) for t in block_tables))
    return torch.tensor([t + [-1] * (width - len(t)) for t in block_tables], dtype=torch.int32, device=device)


class KVCache:
    """Paged K and V for every layer: `[num_layers, num_blocks, block_size, num_kv_heads, head_dim]`.

    A contiguous cache is the special case of one block per sequence.
    """

    def __init__(self, num_layers, num_blocks, block_size, num_kv_heads, head_dim, *, dtype, device):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.num_blocks = num_blocks

    @classmethod
    def for_config(cls, config, num_blocks: int, block_size: int, *, dtype, device) -> KVCache:
        return cls(config.num_hidden_layers, num_blocks, block_size, config.num_key_value_heads,
                   config.head_dim, dtype=dtype, device=device)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[index], self.v[index]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy the K/V of whole blocks (src -> dst) in every layer."""
        src = torch.tensor([p[0] for p in pairs], device=self.k.device)
        dst = torch.tensor([p[1] for p in pairs], device=self.k.device)
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]

    @staticmethod
    def bytes_per_token(config, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem
