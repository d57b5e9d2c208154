"""Chapter 05: the paged KV cache's bookkeeping, in plain Python.

`BlockAllocator` (5.1) hands out reference-counted blocks; `BlockManager` (5.2) keeps each
sequence's block table and reuses cached prefixes; `RadixCache` (5.3) finds, stores and evicts
those prefixes; `ContiguousAllocator` (5.4) and `simulator` show what paging saves.
"""

from mili.cache.block_allocator import BlockAllocator
from mili.cache.block_manager import BlockManager
from mili.cache.errors import OutOfBlocksError
from mili.cache.fragmentation import ContiguousAllocator
from mili.cache.radix_cache import RadixCache
from mili.cache.radix_node import PrefixMatch, RadixNode
from mili.cache.stats import CacheStats

__all__ = ["BlockAllocator", "BlockManager", "CacheStats", "ContiguousAllocator", "OutOfBlocksError",
           "PrefixMatch", "RadixCache", "RadixNode"]
