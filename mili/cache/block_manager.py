"""Per-sequence block tables over the paged KV cache (chapter 05, exercise 5.2).

The engine asks the block manager, before every step, whether a sequence fits (`can_allocate`,
`can_append`), then for the blocks (`allocate` at admission, `append_slots` as it decodes), and
turns the answer into the step's attention metadata: `block_table(seq)` for
`AttentionMetadata.block_tables` and `slot_mapping(seq, start, end)` for the slots where the new
tokens' K/V are written. A sequence's capacity (`num_tokens`) is the number of token slots it has
reserved; its table holds ceil(capacity / block_size) blocks, token i living in slot
table[i // block_size] * block_size + i % block_size.

Sharing, and how the manager and the prefix cache share the allocator: the manager owns one
`BlockAllocator`; with a `RadixCache`, the cache is bound to that same allocator. Every holder of
a block takes one reference: each sequence whose table lists it, and the cache while it stores
it. At admission the longest cached prefix (whole blocks, leaving at least one prompt token to
compute) is taken from the cache: the sequence increfs those blocks and pins the matched node so
that eviction leaves them alone. Parallel samples (`fork`) incref the parent's full blocks and
get a copy of its partial last block. At `free(seq, token_ids)` the sequence's full blocks are
inserted into the cache, then the sequence unpins and drops its references; `cache_prefix` inserts
them earlier (after the prefill), and the sequence pins them until it is freed. When the free pool
runs short, the manager evicts unpinned cached blocks (least recently used first).

Invariants (checked by tests/test_cache_block_manager.py): a block is free iff nobody holds it;
its reference count equals the number of tables listing it plus one if the cache stores it; after
every sequence is freed and the cache cleared, every block is free.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from mili.cache.stats import CacheStats
from mili.exercise import exercise

if TYPE_CHECKING:
    from mili.cache.radix_cache import RadixCache


@exercise("5.2", "Block manager: block tables, prefix reuse, fork")
class BlockManager:
    """Block tables for running sequences, over one allocator shared with an optional prefix cache.

    Attributes: `block_size`, `allocator` (the `BlockAllocator` of all `num_blocks` blocks),
    `prefix_cache` (None or the `RadixCache`). The manager uses only this part of the cache:
    `allocator`, `block_size`, `match_prefix`, `pin`, `unpin`, `insert`, `evict`,
    `evictable_blocks`, `num_cached_blocks`, `num_evicted_blocks`.
    Out of memory: `mili.cache.errors.OutOfBlocksError`, raised before any state changes.
    Unknown or duplicate sequence ids, empty prompts, bad ranges: ValueError.
    """

    def __init__(self, num_blocks: int, block_size: int, prefix_cache: RadixCache | None = None) -> None:
        """Create the `BlockAllocator(num_blocks)`; with a prefix cache whose allocator is None,
        bind the cache to it (a cache that already has an allocator must have num_blocks blocks:
        then the manager uses that one). The cache's block_size must equal block_size."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def can_allocate(self, token_ids: Sequence[int]) -> bool:
        """Would `allocate` succeed for this prompt now? Counts the cached prefix it would reuse
        and the blocks eviction could free (free + evictable, not counting the matched ones)."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def allocate(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """Give a new sequence a block table for len(token_ids) tokens; capacity = len(token_ids).

        Reuses the longest cached prefix of at most (len - 1) // block_size whole blocks (so at
        least one token is left to compute), pinning it; evicts if the free pool is short.
        Records a prefix query of len(token_ids) tokens. Returns the number of cached tokens (a
        multiple of block_size, < len(token_ids)): the engine computes only the tokens after them."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def can_append(self, seq_id: Hashable, num_tokens: int = 1) -> bool:
        """Would `append_slots(seq_id, num_tokens)` succeed now (free + evictable blocks)?"""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def append_slots(self, seq_id: Hashable, num_tokens: int = 1) -> None:
        """Grow the sequence's capacity by num_tokens (>= 0), adding blocks only when the last
        one fills up."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def fork(self, parent_id: Hashable, child_id: Hashable) -> list[tuple[int, int]]:
        """A parallel sample of parent_id (n > 1): the child gets the parent's capacity, shares
        (increfs) its full blocks and the cached prefix pin, and gets a fresh copy of a partially
        filled last block. Returns the (src_block, dst_block) pairs whose K/V the engine must copy
        (empty when the capacity is a multiple of block_size)."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def free(self, seq_id: Hashable, token_ids: Sequence[int] | None = None) -> None:
        """Release the sequence. With token_ids (the tokens whose K/V are written, at most its
        capacity; else ValueError) and a prefix cache, first insert its full blocks into the
        cache; then unpin its prefix and drop its reference on every block of its table."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def cache_prefix(self, seq_id: Hashable, token_ids: Sequence[int]) -> None:
        """Offer a running sequence's full blocks to the prefix cache now (after the step that
        wrote their K/V, e.g. its prefill), so that sequences admitted later share them while it
        runs; the sequence pins what it offered. token_ids: the tokens whose K/V are written (at
        most its capacity; else ValueError). Without a prefix cache: nothing happens."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def block_table(self, seq_id: Hashable) -> list[int]:
        """A copy of the sequence's block table."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> list[int]:
        """Flat cache slots table[p // bs] * bs + p % bs of positions start <= p < end
        (0 <= start <= end <= capacity, else ValueError)."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    def num_tokens(self, seq_id: Hashable) -> int:
        """The sequence's capacity: the token slots it holds."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    @property
    def num_free_blocks(self) -> int:
        """Blocks in the free pool (not counting evictable cached blocks)."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    @property
    def num_blocks(self) -> int:
        """All blocks."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    @property
    def usage(self) -> float:
        """Blocks in use (by sequences or the cache) / all blocks."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")

    @property
    def stats(self) -> CacheStats:
        """A fresh `CacheStats` snapshot (usage, prefix queries and hits in tokens, evictions)."""
        raise NotImplementedError("Exercise 5.2: see chapters/05_kv_cache.ipynb, section 3")
