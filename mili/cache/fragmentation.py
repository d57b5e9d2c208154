"""Contiguous KV allocation, the way engines did it before paging (chapter 05, exercise 5.4).

Before PagedAttention, each request's KV cache was one contiguous region of a big buffer, sized
for the longest sequence it might reach (the output length is unknown up front). Finding room for
a region is the classic dynamic-storage-allocation problem: the buffer becomes a list of holes,
and a request that does not fit in any one hole waits even when the holes add up to enough
(external fragmentation). `mili.cache.simulator` replays a request trace through this allocator
(first fit and best fit) and through a paged one, and measures what each wastes.
"""

from __future__ import annotations

from mili.exercise import exercise


@exercise("5.4", "Contiguous first-fit / best-fit allocator")
class ContiguousAllocator:
    """Regions of a linear buffer of `capacity` token slots, placed by first fit or best fit.

    Invariants: allocated regions never overlap; holes are maximal (two holes never touch: a freed
    region merges with free neighbours); holes + allocated sizes == capacity.
    """

    def __init__(self, capacity: int, fit: str = "first") -> None:
        """capacity: positive int · fit: "first" (the lowest-addressed hole that is large enough)
        or "best" (the smallest hole that is large enough; ties go to the lowest address).
        Bad values: ValueError naming the argument. The whole buffer starts as one hole."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")

    def allocate(self, size: int) -> int | None:
        """Place a region of `size` (> 0, else ValueError) slots at the start of the chosen hole;
        return its offset, or None when no single hole is large enough (nothing changes)."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")

    def free(self, offset: int) -> None:
        """Release the region that starts at offset, merging it with adjacent holes. An offset
        where no region starts: ValueError."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")

    def holes(self) -> list[tuple[int, int]]:
        """The free holes as (offset, size), sorted by offset."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")

    @property
    def free_space(self) -> int:
        """Total free slots (the sum of the hole sizes)."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")

    @property
    def largest_hole(self) -> int:
        """The size of the largest hole (0 when full): the largest region allocate can place."""
        raise NotImplementedError("Exercise 5.4: see chapters/05_kv_cache.ipynb, section 5")
