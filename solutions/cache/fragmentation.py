"""Reference for exercise 5.4 (mirrors mili/cache/fragmentation.py)."""

from __future__ import annotations

import bisect

FIT_POLICIES = ("first", "best")


class ContiguousAllocator:
    """Regions of a linear buffer of `capacity` token slots, placed by first fit or best fit.

    Invariants: allocated regions never overlap; holes are maximal (two holes never touch: a freed
    region merges with free neighbours); holes + allocated sizes == capacity.
    """

    def __init__(self, capacity: int, fit: str = "first") -> None:
        """capacity: positive int · fit: "first" (the lowest-addressed hole that is large enough)
        or "best" (the smallest hole that is large enough; ties go to the lowest address).
        Bad values: ValueError naming the argument. The whole buffer starts as one hole."""
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if fit not in FIT_POLICIES:
            raise ValueError(f"fit must be one of {FIT_POLICIES}, got {fit!r}")
        self.capacity, self.fit = capacity, fit
        self._hole_offsets = [0]  # sorted
        self._hole_sizes = {0: capacity}
        self._regions: dict[int, int] = {}  # offset -> size

    def allocate(self, size: int) -> int | None:
        """Place a region of `size` (> 0, else ValueError) slots at the start of the chosen hole;
        return its offset, or None when no single hole is large enough (nothing changes)."""
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        fitting = [o for o in self._hole_offsets if self._hole_sizes[o] >= size]
        if not fitting:
            return None
        offset = fitting[0] if self.fit == "first" else min(fitting, key=lambda o: (self._hole_sizes[o], o))
        hole = self._hole_sizes.pop(offset)
        self._hole_offsets.remove(offset)
        if hole > size:
            bisect.insort(self._hole_offsets, offset + size)
            self._hole_sizes[offset + size] = hole - size
        self._regions[offset] = size
        return offset

    def free(self, offset: int) -> None:
        """Release the region that starts at offset, merging it with adjacent holes. An offset
        where no region starts: ValueError."""
        if offset not in self._regions:
            raise ValueError(f"no allocated region starts at offset {offset!r}")
        start, end = offset, offset + self._regions.pop(offset)
        i = bisect.bisect_left(self._hole_offsets, offset)
        if i < len(self._hole_offsets) and self._hole_offsets[i] == end:  # merge with the hole after
            end += self._hole_sizes.pop(end)
            del self._hole_offsets[i]
        if i > 0:  # merge with the hole before
            before = self._hole_offsets[i - 1]
            if before + self._hole_sizes[before] == start:
                start = before
                del self._hole_offsets[i - 1]
                del self._hole_sizes[before]
        bisect.insort(self._hole_offsets, start)
        self._hole_sizes[start] = end - start

    def holes(self) -> list[tuple[int, int]]:
        """The free holes as (offset, size), sorted by offset."""
        return [(o, self._hole_sizes[o]) for o in self._hole_offsets]

    @property
    def free_space(self) -> int:
        """Total free slots (the sum of the hole sizes)."""
        return sum(self._hole_sizes.values())

    @property
    def largest_hole(self) -> int:
        """The size of the largest hole (0 when full): the largest region allocate can place."""
        return max(self._hole_sizes.values(), default=0)
