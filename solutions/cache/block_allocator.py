"""Reference for exercise 5.1 (mirrors mili/cache/block_allocator.py)."""

from mili.cache.errors import OutOfBlocksError


class BlockAllocator:
    """Hands out block ids 0..num_blocks-1 in O(1) and counts references to each.

    Invariants: a block is in the free pool iff its count is 0; `num_free` equals the number of
    blocks with count 0. Allocation order is an implementation detail (callers must not assume
    block 0 comes first).
    """

    def __init__(self, num_blocks: int) -> None:
        """num_blocks: a positive int (else ValueError). Every block starts free."""
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks <= 0:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        self._num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        # A stack: pop() hands out block 0 first, and a just-freed block is reused first.
        self._free = list(range(num_blocks - 1, -1, -1))

    def allocate(self) -> int:
        """Take a free block in O(1); its count becomes 1. No free block: raise
        `mili.cache.errors.OutOfBlocksError`, saying how many blocks there are."""
        if not self._free:
            raise OutOfBlocksError(f"all {self._num_blocks} KV blocks are in use")
        block_id = self._free.pop()
        self._ref_counts[block_id] = 1
        return block_id

    def incref(self, block_id: int) -> None:
        """One more holder of a held block. A free or unknown block id: ValueError naming it."""
        if self.ref_count(block_id) == 0:
            raise ValueError(f"block {block_id} is free: allocate it before sharing it")
        self._ref_counts[block_id] += 1

    def free(self, block_id: int) -> None:
        """One holder lets go (decrement); at 0 the block returns to the free pool, in O(1).
        Freeing a free block (double free) or an unknown id: ValueError naming the block."""
        count = self.ref_count(block_id)
        if count == 0:
            raise ValueError(f"double free of block {block_id}: it is already free")
        self._ref_counts[block_id] = count - 1
        if count == 1:
            self._free.append(block_id)

    def ref_count(self, block_id: int) -> int:
        """The block's current number of holders (0 when free). Unknown id: ValueError."""
        if not isinstance(block_id, int) or not 0 <= block_id < self._num_blocks:
            raise ValueError(f"unknown block id {block_id!r}: ids run from 0 to {self._num_blocks - 1}")
        return self._ref_counts[block_id]

    @property
    def num_free(self) -> int:
        """How many blocks are in the free pool."""
        return len(self._free)

    @property
    def num_blocks(self) -> int:
        """The total number of blocks, free or held."""
        return self._num_blocks
