"""Reference for exercise 5.2 (mirrors mili/cache/block_manager.py)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from mili.cache.block_allocator import BlockAllocator
from mili.cache.errors import OutOfBlocksError
from mili.cache.stats import CacheStats

if TYPE_CHECKING:
    from mili.cache.radix_cache import RadixCache


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
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        if prefix_cache is None or prefix_cache.allocator is None:
            self.allocator = BlockAllocator(num_blocks)
        else:
            self.allocator = prefix_cache.allocator
            if self.allocator.num_blocks != num_blocks:
                raise ValueError(f"prefix_cache's allocator has {self.allocator.num_blocks} blocks, not {num_blocks}")
        if prefix_cache is not None:
            if prefix_cache.block_size != block_size:
                raise ValueError(f"prefix_cache.block_size={prefix_cache.block_size} != block_size={block_size}")
            if prefix_cache.allocator is None:
                if prefix_cache.num_cached_blocks:
                    raise ValueError("prefix_cache holds blocks of no allocator: bind an empty cache")
                prefix_cache.allocator = self.allocator
        self._tables: dict[Hashable, list[int]] = {}
        self._capacity: dict[Hashable, int] = {}
        self._pinned: dict[Hashable, tuple[object, int]] = {}  # (cache node, its blocks) a sequence pins
        self._family: dict[Hashable, set] = {}  # sequences forked from one another share one set
        self._stats = CacheStats()

    # ------------------------------------------------------------ admission

    def can_allocate(self, token_ids: Sequence[int]) -> bool:
        """Would `allocate` succeed for this prompt now? Counts the cached prefix it would reuse
        and the blocks eviction could free (free + evictable, not counting the matched ones)."""
        if len(token_ids) == 0:
            return False
        needed = self._blocks_for(len(token_ids))
        if self.prefix_cache is None:
            return needed <= self.allocator.num_free
        match = self.prefix_cache.match_prefix(self._reusable(token_ids))
        self.prefix_cache.pin(match.node)  # the matched blocks are not evictable for this sequence
        available = self.allocator.num_free + self.prefix_cache.evictable_blocks
        self.prefix_cache.unpin(match.node)
        return needed - len(match.block_ids) <= available

    def allocate(self, seq_id: Hashable, token_ids: Sequence[int]) -> int:
        """Give a new sequence a block table for len(token_ids) tokens; capacity = len(token_ids).

        Reuses the longest cached prefix of at most (len - 1) // block_size whole blocks (so at
        least one token is left to compute), pinning it; evicts if the free pool is short.
        Records a prefix query of len(token_ids) tokens. Returns the number of cached tokens (a
        multiple of block_size, < len(token_ids)): the engine computes only the tokens after them."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already has a block table")
        if len(token_ids) == 0:
            raise ValueError(f"sequence {seq_id!r}: token_ids is empty; a prompt needs at least one token")
        cached, node = [], None
        if self.prefix_cache is not None:
            match = self.prefix_cache.match_prefix(self._reusable(token_ids))
            cached, node = match.block_ids, match.node
            self.prefix_cache.pin(node)
        try:
            fresh = self._take(self._blocks_for(len(token_ids)) - len(cached))
        except OutOfBlocksError:
            if node is not None:
                self.prefix_cache.unpin(node)
            raise
        for block_id in cached:
            self.allocator.incref(block_id)
        self._tables[seq_id] = list(cached) + fresh
        self._capacity[seq_id] = len(token_ids)
        if node is not None:
            self._pinned[seq_id] = (node, len(cached))
        self._family[seq_id] = {seq_id}
        self._stats.prefix_queries += 1
        self._stats.prefix_queries_tokens += len(token_ids)
        self._stats.prefix_hit_tokens += len(cached) * self.block_size
        return len(cached) * self.block_size

    # ------------------------------------------------------------ growth and parallel samples

    def can_append(self, seq_id: Hashable, num_tokens: int = 1) -> bool:
        """Would `append_slots(seq_id, num_tokens)` succeed now (free + evictable blocks)?"""
        return self._growth(seq_id, num_tokens) <= self._available()

    def append_slots(self, seq_id: Hashable, num_tokens: int = 1) -> None:
        """Grow the sequence's capacity by num_tokens (>= 0), adding blocks only when the last
        one fills up."""
        new_blocks = self._take(self._growth(seq_id, num_tokens))
        self._tables[seq_id].extend(new_blocks)
        self._capacity[seq_id] += num_tokens

    def fork(self, parent_id: Hashable, child_id: Hashable) -> list[tuple[int, int]]:
        """A parallel sample of parent_id (n > 1): the child gets the parent's capacity, shares
        (increfs) its full blocks and the cached prefix pin, and gets a fresh copy of a partially
        filled last block. Returns the (src_block, dst_block) pairs whose K/V the engine must copy
        (empty when the capacity is a multiple of block_size)."""
        table, capacity = self._table(parent_id), self._capacity[parent_id]
        if child_id in self._tables:
            raise ValueError(f"sequence {child_id!r} already has a block table")
        num_full = capacity // self.block_size
        copy = self._take(len(table) - num_full)  # 0 or 1 block
        for block_id in table[:num_full]:
            self.allocator.incref(block_id)
        self._tables[child_id] = table[:num_full] + copy
        self._capacity[child_id] = capacity
        if parent_id in self._pinned:
            self._pinned[child_id] = self._pinned[parent_id]
            self.prefix_cache.pin(self._pinned[child_id][0])
        self._family[child_id] = self._family[parent_id]
        self._family[child_id].add(child_id)
        self._stats.forks += 1
        self._stats.copied_blocks += len(copy)
        return [(table[num_full], copy[0])] if copy else []

    # ------------------------------------------------------------ release

    def free(self, seq_id: Hashable, token_ids: Sequence[int] | None = None) -> None:
        """Release the sequence. With token_ids (the tokens whose K/V are written, at most its
        capacity; else ValueError) and a prefix cache, first insert its full blocks into the
        cache; then unpin its prefix and drop its reference on every block of its table."""
        table = self._table(seq_id)
        if token_ids is not None:
            self._check_written(seq_id, token_ids)
        family = self._family.pop(seq_id)
        family.discard(seq_id)
        if token_ids is not None and self.prefix_cache is not None:
            self._offer(seq_id, token_ids, family)
        pinned = self._pinned.pop(seq_id, None)
        if pinned is not None:
            self.prefix_cache.unpin(pinned[0])
        for block_id in table:
            self.allocator.free(block_id)
        del self._tables[seq_id], self._capacity[seq_id]

    def cache_prefix(self, seq_id: Hashable, token_ids: Sequence[int]) -> None:
        """Offer a running sequence's full blocks to the prefix cache now (after the step that
        wrote their K/V, e.g. its prefill), so that sequences admitted later share them while it
        runs; the sequence pins what it offered. token_ids: the tokens whose K/V are written (at
        most its capacity; else ValueError). Without a prefix cache: nothing happens."""
        self._table(seq_id)
        self._check_written(seq_id, token_ids)
        if self.prefix_cache is not None:
            self._offer(seq_id, token_ids, self._family[seq_id])

    def _check_written(self, seq_id: Hashable, token_ids: Sequence[int]) -> None:
        if len(token_ids) > self._capacity[seq_id]:
            raise ValueError(f"sequence {seq_id!r}: {len(token_ids)} token_ids but only "
                             f"{self._capacity[seq_id]} slots hold K/V")

    def _offer(self, seq_id: Hashable, token_ids: Sequence[int], sharers: set) -> None:
        """Insert seq_id's full blocks into the cache; each sharer of those blocks (seq_id itself
        while it runs, its forks) pins the node that now covers them, so they stay unevictable."""
        num_full = len(token_ids) // self.block_size
        blocks, full_tokens = self._tables[seq_id][:num_full], list(token_ids[: num_full * self.block_size])
        self.prefix_cache.insert(full_tokens, blocks)
        for sharer in sharers:
            self._repin(sharer, blocks, full_tokens)

    def _repin(self, seq_id: Hashable, cached_blocks: list[int], cached_tokens: list[int]) -> None:
        """seq_id's leading blocks were just cached (its own, or shared with a fork): pin the
        node covering the shared part (it lies below the node seq_id pins now) instead."""
        table, shared = self._tables[seq_id], 0
        while shared < min(len(table), len(cached_blocks)) and table[shared] == cached_blocks[shared]:
            shared += 1
        old_node, old_blocks = self._pinned.get(seq_id, (None, 0))
        if shared <= old_blocks:
            return
        match = self.prefix_cache.match_prefix(cached_tokens[: shared * self.block_size])
        self.prefix_cache.pin(match.node)
        if old_node is not None:
            self.prefix_cache.unpin(old_node)
        self._pinned[seq_id] = (match.node, len(match.block_ids))

    # ------------------------------------------------------------ what the engine reads

    def block_table(self, seq_id: Hashable) -> list[int]:
        """A copy of the sequence's block table."""
        return list(self._table(seq_id))

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> list[int]:
        """Flat cache slots table[p // bs] * bs + p % bs of positions start <= p < end
        (0 <= start <= end <= capacity, else ValueError)."""
        table, bs = self._table(seq_id), self.block_size
        if not 0 <= start <= end <= self._capacity[seq_id]:
            raise ValueError(f"sequence {seq_id!r}: positions [{start}, {end}) are outside its "
                             f"capacity of {self._capacity[seq_id]} tokens")
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def num_tokens(self, seq_id: Hashable) -> int:
        """The sequence's capacity: the token slots it holds."""
        self._table(seq_id)
        return self._capacity[seq_id]

    @property
    def num_free_blocks(self) -> int:
        """Blocks in the free pool (not counting evictable cached blocks)."""
        return self.allocator.num_free

    @property
    def num_blocks(self) -> int:
        """All blocks."""
        return self.allocator.num_blocks

    @property
    def usage(self) -> float:
        """Blocks in use (by sequences or the cache) / all blocks."""
        return 1.0 - self.allocator.num_free / self.allocator.num_blocks

    @property
    def stats(self) -> CacheStats:
        """A fresh `CacheStats` snapshot (usage, prefix queries and hits in tokens, evictions)."""
        cache = self.prefix_cache
        return CacheStats(
            num_blocks=self.allocator.num_blocks,
            used_blocks=self.allocator.num_blocks - self.allocator.num_free,
            cached_blocks=cache.num_cached_blocks if cache is not None else 0,
            evictable_blocks=cache.evictable_blocks if cache is not None else 0,
            prefix_queries=self._stats.prefix_queries,
            prefix_queries_tokens=self._stats.prefix_queries_tokens,
            prefix_hit_tokens=self._stats.prefix_hit_tokens,
            evictions=cache.num_evicted_blocks if cache is not None else 0,
            forks=self._stats.forks,
            copied_blocks=self._stats.copied_blocks,
        )

    # ------------------------------------------------------------ helpers

    def _table(self, seq_id: Hashable) -> list[int]:
        try:
            return self._tables[seq_id]
        except KeyError:
            raise ValueError(f"unknown sequence {seq_id!r}: allocate it first (or it was freed)") from None

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _reusable(self, token_ids: Sequence[int]) -> Sequence[int]:
        """The prompt's longest prefix that may come from the cache: whole blocks, one token spare."""
        return token_ids[: (len(token_ids) - 1) // self.block_size * self.block_size]

    def _growth(self, seq_id: Hashable, num_tokens: int) -> int:
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
        return self._blocks_for(self._capacity_of(seq_id) + num_tokens) - len(self._tables[seq_id])

    def _capacity_of(self, seq_id: Hashable) -> int:
        self._table(seq_id)
        return self._capacity[seq_id]

    def _available(self) -> int:
        evictable = self.prefix_cache.evictable_blocks if self.prefix_cache is not None else 0
        return self.allocator.num_free + evictable

    def _take(self, count: int) -> list[int]:
        """count fresh blocks, evicting cached ones if the pool is short; all or nothing."""
        if count > self._available():
            raise OutOfBlocksError(f"need {count} KV blocks but only {self.allocator.num_free} are free and "
                                   f"{self._available() - self.allocator.num_free} evictable")
        shortfall = count - self.allocator.num_free
        if shortfall > 0:
            self.prefix_cache.evict(shortfall)
            if count > self.allocator.num_free:  # evicted blocks still held elsewhere freed nothing
                raise OutOfBlocksError(f"need {count} KV blocks, only {self.allocator.num_free} could be freed")
        return [self.allocator.allocate() for _ in range(count)]
