"""Grader for exercise 5.4 (contiguous first-fit / best-fit allocator).

Oracle: the buffer as a list of slots, each free or owned by a region; holes are found by scanning
it, and first fit / best fit pick from that scan.
"""

import random

import pytest

from mili.cache.fragmentation import ContiguousAllocator
from mili.testing import current_test_name, seed_from

pytestmark = pytest.mark.exercise("5.4")


class SlotOracle:
    def __init__(self, capacity, fit):
        self.slots, self.fit = [None] * capacity, fit

    def holes(self):
        holes, start = [], None
        for i, owner in enumerate(self.slots + [0]):
            if owner is None and start is None:
                start = i
            elif owner is not None and start is not None:
                holes.append((start, i - start))
                start = None
        return holes

    def allocate(self, size):
        fitting = [h for h in self.holes() if h[1] >= size]
        if not fitting:
            return None
        offset = fitting[0][0] if self.fit == "first" else min(fitting, key=lambda h: (h[1], h[0]))[0]
        self.slots[offset : offset + size] = [offset] * size
        return offset

    def free(self, offset):
        self.slots = [None if owner == offset else owner for owner in self.slots]


@pytest.mark.parametrize("fit", ["first", "best"])
def test_random_allocations_match_a_slot_by_slot_oracle(fit):
    rng = random.Random(seed_from(current_test_name()))
    capacity = 200
    allocator, oracle = ContiguousAllocator(capacity, fit), SlotOracle(capacity, fit)
    live = []
    for step in range(1500):
        if live and rng.random() < 0.45:
            offset = live.pop(rng.randrange(len(live)))
            allocator.free(offset)
            oracle.free(offset)
        else:
            size = rng.randrange(1, 40)
            expected, got = oracle.allocate(size), allocator.allocate(size)
            assert got == expected, (
                f"step {step}: allocate({size}) with {fit} fit over holes {oracle_before(oracle, expected, size)} "
                f"returned {got}, expected {expected}. hint: first fit takes the lowest-addressed hole that is large "
                "enough; best fit the smallest such hole (lowest address on ties); None when none is large enough")
            if got is not None:
                live.append(got)
        holes = oracle.holes()
        assert allocator.holes() == holes, (
            f"step {step}: holes() is {allocator.holes()}, expected {holes}. "
            "hint: a freed region must merge with the free holes on both sides")
        assert allocator.free_space == sum(h[1] for h in holes)
        assert allocator.largest_hole == max((h[1] for h in holes), default=0)


def oracle_before(oracle, placed, size):
    """The holes as they were before `placed` took `size` slots (for the failure message)."""
    holes = oracle.holes()
    if placed is not None:
        holes = sorted(holes + [(placed, size)])
    return holes


def test_external_fragmentation_refuses_what_the_total_could_hold():
    allocator = ContiguousAllocator(100)
    offsets = [allocator.allocate(20) for _ in range(5)]
    assert offsets == [0, 20, 40, 60, 80], f"five regions of 20 in an empty buffer of 100 landed at {offsets}"
    allocator.free(20)
    allocator.free(60)
    assert allocator.free_space == 40 and allocator.largest_hole == 20
    assert allocator.allocate(30) is None, (
        "40 slots are free but in two holes of 20: a region of 30 must be refused (external fragmentation)")
    assert allocator.holes() == [(20, 20), (60, 20)], "a refused allocate must not change the holes"
    allocator.free(40)
    assert allocator.holes() == [(20, 60)], "freeing the region between two holes must merge all three"
    assert allocator.allocate(30) == 20


def test_best_fit_prefers_the_tightest_hole():
    allocator = ContiguousAllocator(100, fit="best")
    a, _, c, _ = (allocator.allocate(n) for n in (30, 10, 15, 45))
    allocator.free(a)  # hole of 30 at 0
    allocator.free(c)  # hole of 15 at 40
    assert allocator.allocate(12) == 40, "best fit puts 12 slots in the hole of 15, not the hole of 30"
    first = ContiguousAllocator(100, fit="first")
    a, _, c, _ = (first.allocate(n) for n in (30, 10, 15, 45))
    first.free(a)
    first.free(c)
    assert first.allocate(12) == 0, "first fit puts 12 slots in the lowest hole that is large enough"


def test_misuse_raises_value_error():
    for args in ((0,), (10, "worst")):
        with pytest.raises(ValueError):
            ContiguousAllocator(*args)
    allocator = ContiguousAllocator(10)
    allocator.allocate(4)
    for call in (lambda: allocator.free(1), lambda: allocator.allocate(0)):
        with pytest.raises(ValueError):
            call()
