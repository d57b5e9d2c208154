"""Fixed-size KV blocks with reference counts (chapter 05, exercise 5.1).

The paged KV cache (`mili.model.metadata.KVCache`) is one big tensor of `num_blocks` blocks of
`block_size` token slots each. Which blocks are free and who holds the others is bookkeeping in
plain Python, kept here: a block is *free* (reference count 0, in the free pool) or *held*
(count >= 1). Every holder takes one reference: each sequence whose block table lists the block,
and the prefix cache while the block is cached. A block shared by several holders (a cached
system prompt, the prompt of n parallel samples) returns to the free pool only when the last one
lets go. The allocator never touches the KV tensors themselves.
"""

from mili.exercise import exercise


@exercise("5.1", "Block allocator with reference counts")
class BlockAllocator:
    """Hands out block ids 0..num_blocks-1 in O(1) and counts references to each.

    Invariants: a block is in the free pool iff its count is 0; `num_free` equals the number of
    blocks with count 0. Allocation order is an implementation detail (callers must not assume
    block 0 comes first).
    """

    def __init__(self, num_blocks: int) -> None:
        """num_blocks: a positive int (else ValueError). Every block starts free."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    def allocate(self) -> int:
        """Take a free block in O(1); its count becomes 1. No free block: raise
        `mili.cache.errors.OutOfBlocksError`, saying how many blocks there are."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    def incref(self, block_id: int) -> None:
        """One more holder of a held block. A free or unknown block id: ValueError naming it."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    def free(self, block_id: int) -> None:
        """One holder lets go (decrement); at 0 the block returns to the free pool, in O(1).
        Freeing a free block (double free) or an unknown id: ValueError naming the block."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    def ref_count(self, block_id: int) -> int:
        """The block's current number of holders (0 when free). Unknown id: ValueError."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    @property
    def num_free(self) -> int:
        """How many blocks are in the free pool."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")

    @property
    def num_blocks(self) -> int:
        """The total number of blocks, free or held."""
        raise NotImplementedError("Exercise 5.1: see chapters/05_kv_cache.ipynb, section 2")
