"""A radix tree over token ids that shares KV blocks between prompts (chapter 05, exercise 5.3).

Many requests start alike (a system prompt, the earlier turns of a chat). Their keys and values
are the same, so they can be computed once and shared. The cache is a radix tree whose edges are
labelled with token ids, cut at block boundaries only: a node holds a whole number of blocks, and
a look-up returns whole blocks (a partly filled block is never shared).

How it shares the allocator with `BlockManager`: the cache is one more *holder* of the blocks it
stores. `insert` takes one reference (`allocator.incref`) on each block it adopts and eviction
drops it (`allocator.free`); a block returns to the free pool once neither the cache nor any
sequence holds it. A running sequence that uses cached blocks also *pins* the deepest node it
matched (`pin`: `lock_ref` + 1 on the node and all its ancestors), so eviction, which frees only
unpinned leaves, always frees memory nobody is using. `BlockManager(prefix_cache=cache)` binds its
allocator to a cache created with `allocator=None`. Without an allocator (a standalone cache, as
in the grader), block ids are opaque values and nothing is counted.

Cost: `match_prefix` and `insert` do one dictionary look-up per block plus a comparison of the
tokens; eviction pops least-recently-used leaves from a heap of the evictable leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mili.cache.radix_node import PrefixMatch, RadixNode
from mili.exercise import exercise

if TYPE_CHECKING:
    from mili.cache.block_allocator import BlockAllocator


@exercise("5.3", "Radix prefix cache: match, insert, evict")
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
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def match_prefix(self, token_ids: Sequence[int]) -> PrefixMatch:
        """The longest cached prefix of token_ids, in whole blocks (a trailing partial block of the
        query is ignored). Marks every node on the matched path as used now (LRU clock). When the
        match ends inside a node's label, split that node at the block boundary so that the
        returned node covers exactly the matched blocks. Nothing cached: PrefixMatch([], 0, root)."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def insert(self, token_ids: Sequence[int], block_ids: Sequence[int]) -> int:
        """Cache the whole blocks of token_ids; block_ids[i] holds tokens [i*bs, (i+1)*bs).

        Needs len(block_ids) >= len(token_ids) // block_size (else ValueError); extra block ids
        (a partial last block) are ignored. The part already cached keeps its own blocks (the
        caller's duplicates are not adopted); the rest becomes a new leaf (splitting a node where
        the new tokens diverge inside its label), and the cache takes one reference on each block
        it adopts. Whole blocks that end inside a node's label split that node there and add no
        leaf (they were all cached). Marks the path as used now, then applies the token limit.
        Returns how many of the tokens were already cached (a multiple of block_size)."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def pin(self, node: RadixNode) -> None:
        """A running sequence uses node's blocks: lock_ref + 1 on node and on every ancestor below
        the root. The root holds no blocks and is never evicted: its lock_ref stays 0, and
        pin(root) does nothing."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def unpin(self, node: RadixNode) -> None:
        """Undo one `pin(node)`. Unpinning a node that is not pinned: ValueError."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def evict(self, num_blocks: int) -> list[int]:
        """Drop unpinned leaves, least recently used first (per `policy`), whole nodes at a time,
        until at least num_blocks blocks are dropped or nothing evictable is left; a parent left
        childless and unpinned becomes a candidate. Drops the cache's reference on each block
        (with an allocator). Returns the dropped block ids, in eviction order."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    def clear(self) -> list[int]:
        """Evict every unpinned node; returns the dropped block ids."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    @property
    def num_cached_blocks(self) -> int:
        """Blocks held by the tree."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    @property
    def num_cached_tokens(self) -> int:
        """Tokens held by the tree (num_cached_blocks * block_size)."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")

    @property
    def evictable_blocks(self) -> int:
        """Blocks in unpinned nodes (lock_ref 0): what `evict` could drop right now. O(1)."""
        raise NotImplementedError("Exercise 5.3: see chapters/05_kv_cache.ipynb, section 4")
