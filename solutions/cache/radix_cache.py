"""Reference for exercise 5.3 (mirrors mili/cache/radix_cache.py)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mili.cache.radix_node import PrefixMatch, RadixNode

if TYPE_CHECKING:
    from mili.cache.block_allocator import BlockAllocator

EVICTION_POLICIES = ("lru", "fifo")


class RadixCache:
    """Longest-prefix look-up, insertion with node splitting, LRU eviction with pinning.

    Attributes: `root` (a `RadixNode` with no tokens), `block_size`, `allocator` (None or a
    `BlockAllocator`; the `BlockManager` may set it once while the cache is empty), `policy`,
    `max_cached_tokens`, `num_evicted_blocks` (a counter of blocks dropped by eviction).
    Invariants: every non-root node holds len(tokens) // block_size >= 1 blocks; the children of a
    node start with different first blocks; a node's lock_ref is at least the sum of its
    children's; the root's lock_ref stays 0; eviction removes only leaves with lock_ref 0.
    Splitting a node (where a match or an insert ends or diverges inside its label) cuts the label
    at a block boundary: a new node takes the upper part and becomes the parent, with the same
    lock_ref (every pin below it holds it too) and LRU times; the original node object keeps the
    lower part, its children and its lock_ref, so a handle to it (a pinned PrefixMatch.node) stays
    valid.
    """

    def __init__(self, block_size: int, allocator: BlockAllocator | None = None, policy: str = "lru",
                 max_cached_tokens: int | None = None) -> None:
        """block_size: positive int · policy: "lru" (evict the leaf used least recently) or "fifo"
        (the leaf inserted first) · max_cached_tokens: None (no cap) or a positive int: after each
        insert, evict unpinned leaves until at most that many tokens are cached (the token-limit
        policy). Bad values: ValueError naming the argument."""
        if not isinstance(block_size, int) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if policy not in EVICTION_POLICIES:
            raise ValueError(f"policy must be one of {EVICTION_POLICIES}, got {policy!r}")
        if max_cached_tokens is not None and (not isinstance(max_cached_tokens, int) or max_cached_tokens <= 0):
            raise ValueError(f"max_cached_tokens must be None or a positive int, got {max_cached_tokens!r}")
        self.block_size = block_size
        self.allocator = allocator
        self.policy = policy
        self.max_cached_tokens = max_cached_tokens
        self.root = RadixNode()
        self.num_evicted_blocks = 0
        self._clock = 0
        self._cached_blocks = 0
        self._evictable_blocks = 0
        self._evictable_leaves: set[RadixNode] = set()
        # (priority, tie-break, leaf) for the evictable leaves; entries go stale when a leaf is
        # used again, pinned or removed, and are skipped when popped (lazy deletion)
        self._heap: list[tuple[int, int, RadixNode]] = []
        self._pushes = 0

    # ------------------------------------------------------------ look-up and insertion

    def match_prefix(self, token_ids: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of token_ids, in whole blocks (a trailing partial block of the
        query is ignored). Marks every node on the matched path as used now (LRU clock). When the
        match ends inside a node's label, split that node at the block boundary so that the
        returned node covers exactly the matched blocks. Nothing cached: PrefixMatch([], 0, root)."""
        tokens = tuple(token_ids)
        node, block_ids = self._walk(tokens, len(tokens) // self.block_size)
        return PrefixMatch(block_ids, len(block_ids) * self.block_size, node)

    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> int:
        """Cache the whole blocks of token_ids; block_ids[i] holds tokens [i*bs, (i+1)*bs).

        Needs len(block_ids) >= len(token_ids) // block_size (else ValueError); extra block ids
        (a partial last block) are ignored. The part already cached keeps its own blocks (the
        caller's duplicates are not adopted); the rest becomes a new leaf (splitting a node where
        the new tokens diverge inside its label), and the cache takes one reference on each block
        it adopts. Whole blocks that end inside a node's label split that node there and add no
        leaf (they were all cached). Marks the path as used now, then applies the token limit.
        Returns how many of the tokens were already cached (a multiple of block_size)."""
        tokens, bs = tuple(token_ids), self.block_size
        num_full = len(tokens) // bs
        if len(block_ids) < num_full:
            raise ValueError(f"block_ids has {len(block_ids)} blocks, but {len(tokens)} tokens fill {num_full}")
        node, cached = self._walk(tokens, num_full)
        start = len(cached)
        if start < num_full:
            leaf = RadixNode(tokens[start * bs : num_full * bs], list(block_ids[start:num_full]), parent=node,
                             last_access=self._clock, created=self._clock)
            node.children[leaf.tokens[:bs]] = leaf
            if self.allocator is not None:
                for block_id in leaf.block_ids:
                    self.allocator.incref(block_id)
            self._cached_blocks += len(leaf.block_ids)
            self._evictable_blocks += len(leaf.block_ids)
            self._refresh(node)
            self._refresh(leaf)
        if self.max_cached_tokens is not None and self.num_cached_tokens > self.max_cached_tokens:
            excess = self.num_cached_tokens - self.max_cached_tokens
            self.evict(-(-excess // bs))
        return start * bs

    def _walk(self, tokens: tuple[int, ...], num_blocks: int) -> tuple[RadixNode, list[int]]:
        """Follow the first num_blocks blocks of tokens down the tree, splitting where the match
        ends inside a label; returns the deepest matched node and the matched blocks."""
        bs = self.block_size
        self._clock += 1
        node, matched = self.root, []
        node.last_access = self._clock
        while len(matched) < num_blocks:
            start = len(matched) * bs
            child = node.children.get(tokens[start : start + bs])
            if child is None:
                break
            limit = min(len(child.block_ids), num_blocks - len(matched))
            if tokens[start : start + limit * bs] == child.tokens[: limit * bs]:
                common = limit  # the usual case: one comparison for the whole edge
            else:
                common = 1  # the first block matched through the dictionary key
                while child.tokens[common * bs : (common + 1) * bs] == tokens[start + common * bs : start + (common + 1) * bs]:
                    common += 1
            if common < len(child.block_ids):
                child = self._split(child, common)
            child.last_access = self._clock
            if child in self._evictable_leaves:
                self._push(child)  # its priority changed: the old heap entry is stale now
            matched.extend(child.block_ids)
            node = child
        return node, matched

    def _split(self, node: RadixNode, num_blocks: int) -> RadixNode:
        """Cut node's label after num_blocks blocks; the new upper part becomes node's parent."""
        bs = self.block_size
        upper = RadixNode(node.tokens[: num_blocks * bs], node.block_ids[:num_blocks], parent=node.parent,
                          lock_ref=node.lock_ref, last_access=node.last_access, created=node.created)
        node.parent.children[upper.tokens[:bs]] = upper
        node.tokens, node.block_ids, node.parent = node.tokens[num_blocks * bs :], node.block_ids[num_blocks:], upper
        upper.children[node.tokens[:bs]] = node
        return upper

    # ------------------------------------------------------------ pinning

    def pin(self, node: RadixNode) -> None:
        """A running sequence uses node's blocks: lock_ref + 1 on node and on every ancestor below
        the root. The root holds no blocks and is never evicted: its lock_ref stays 0, and
        pin(root) does nothing."""
        while not node.is_root:
            node.lock_ref += 1
            if node.lock_ref == 1:
                self._evictable_blocks -= len(node.block_ids)
                self._refresh(node)
            node = node.parent

    def unpin(self, node: RadixNode) -> None:
        """Undo one `pin(node)`. Unpinning a node that is not pinned: ValueError."""
        if not node.is_root and node.lock_ref <= 0:
            raise ValueError(f"{node} is not pinned: unpin called more often than pin")
        while not node.is_root:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self._evictable_blocks += len(node.block_ids)
                self._refresh(node)
            node = node.parent

    # ------------------------------------------------------------ eviction

    def evict(self, num_blocks: int) -> list[int]:
        """Drop unpinned leaves, least recently used first (per `policy`), whole nodes at a time,
        until at least num_blocks blocks are dropped or nothing evictable is left; a parent left
        childless and unpinned becomes a candidate. Drops the cache's reference on each block
        (with an allocator). Returns the dropped block ids, in eviction order."""
        dropped: list[int] = []
        if num_blocks <= 0:
            return dropped
        while self._heap and len(dropped) < num_blocks:
            priority, _, leaf = heapq.heappop(self._heap)
            if leaf not in self._evictable_leaves or priority != self._priority(leaf):
                continue  # a stale entry
            parent = leaf.parent
            del parent.children[leaf.tokens[: self.block_size]]
            self._evictable_leaves.discard(leaf)
            self._cached_blocks -= len(leaf.block_ids)
            self._evictable_blocks -= len(leaf.block_ids)
            if self.allocator is not None:
                for block_id in leaf.block_ids:
                    self.allocator.free(block_id)
            dropped.extend(leaf.block_ids)
            self._refresh(parent)
        self.num_evicted_blocks += len(dropped)
        return dropped

    def clear(self) -> list[int]:
        """Evict every unpinned node; returns the dropped block ids."""
        return self.evict(self._evictable_blocks)

    def _priority(self, node: RadixNode) -> int:
        return node.last_access if self.policy == "lru" else node.created

    def _refresh(self, node: RadixNode) -> None:
        """Keep the set of evictable leaves (unpinned, childless, not the root) up to date."""
        if not node.is_root and not node.children and node.lock_ref == 0:
            if node not in self._evictable_leaves:
                self._evictable_leaves.add(node)
                self._push(node)
        else:
            self._evictable_leaves.discard(node)

    def _push(self, leaf: RadixNode) -> None:
        if len(self._heap) > 2 * len(self._evictable_leaves) + 64:  # mostly stale: rebuild
            self._heap = []
            for node in self._evictable_leaves:
                self._pushes += 1
                self._heap.append((self._priority(node), self._pushes, node))
            heapq.heapify(self._heap)
        self._pushes += 1
        heapq.heappush(self._heap, (self._priority(leaf), self._pushes, leaf))

    # ------------------------------------------------------------ sizes

    @property
    def num_cached_blocks(self) -> int:
        """Blocks held by the tree."""
        return self._cached_blocks

    @property
    def num_cached_tokens(self) -> int:
        """Tokens held by the tree (num_cached_blocks * block_size)."""
        return self._cached_blocks * self.block_size

    @property
    def evictable_blocks(self) -> int:
        """Blocks in unpinned nodes (lock_ref 0): what `evict` could drop right now. O(1)."""
        return self._evictable_blocks
