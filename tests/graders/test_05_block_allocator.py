"""Grader for exercise 5.1 (block allocator). Oracle: a dictionary of reference counts."""

import random
import time

import pytest

from mili.cache.block_allocator import BlockAllocator
from mili.cache.errors import OutOfBlocksError
from mili.testing import current_test_name, seed_from

pytestmark = pytest.mark.exercise("5.1")


def test_hands_out_every_block_once_then_raises():
    allocator = BlockAllocator(8)
    got = [allocator.allocate() for _ in range(8)]
    assert sorted(got) == list(range(8)), (
        f"8 allocations from BlockAllocator(8) returned {got}; expected each of 0..7 exactly once. "
        "hint: a block leaves the free pool when it is allocated")
    assert allocator.num_free == 0, f"num_free is {allocator.num_free} with every block allocated, expected 0"
    assert all(allocator.ref_count(b) == 1 for b in got), "a freshly allocated block must have ref_count 1"
    with pytest.raises(OutOfBlocksError):
        allocator.allocate()


def test_a_shared_block_returns_to_the_pool_with_its_last_holder():
    allocator = BlockAllocator(4)
    block = allocator.allocate()
    allocator.incref(block)
    allocator.incref(block)
    assert allocator.ref_count(block) == 3, f"after allocate + 2 increfs ref_count is {allocator.ref_count(block)}, expected 3"
    for holders_left in (2, 1):
        allocator.free(block)
        assert allocator.ref_count(block) == holders_left
        assert allocator.num_free == 3, (
            f"block {block} still has {holders_left} holder(s) but num_free is {allocator.num_free} (expected 3). "
            "hint: free() decrements; only the last holder's free returns the block to the pool")
    allocator.free(block)
    assert allocator.ref_count(block) == 0 and allocator.num_free == 4
    assert block in {allocator.allocate() for _ in range(4)}, "a block freed by its last holder must be allocatable again"


@pytest.mark.parametrize("misuse", ["double free", "free unknown", "free negative", "incref free", "ref_count unknown",
                                    "ref_count negative"])
def test_misuse_raises_value_error(misuse):
    allocator = BlockAllocator(4)
    block = allocator.allocate()
    allocator.free(block)
    call = {
        "double free": lambda: allocator.free(block),
        "free unknown": lambda: allocator.free(4),
        "free negative": lambda: allocator.free(-1),
        "incref free": lambda: allocator.incref(block),
        "ref_count unknown": lambda: allocator.ref_count(99),
        "ref_count negative": lambda: allocator.ref_count(-1),  # not the last block: ids start at 0
    }[misuse]
    with pytest.raises(ValueError):
        call()
    assert allocator.num_free == 4, f"after a rejected {misuse} the allocator's state must not change"


def test_bad_num_blocks_raises_value_error():
    for bad in (0, -3):
        with pytest.raises(ValueError):
            BlockAllocator(bad)


def test_random_operations_match_a_reference_count_oracle():
    rng = random.Random(seed_from(current_test_name()))
    num_blocks = 32
    allocator = BlockAllocator(num_blocks)
    assert allocator.num_blocks == num_blocks
    counts = {}  # the oracle: block -> holders (absent = free)
    for step in range(3000):
        op = rng.random()
        if op < 0.4 and len(counts) < num_blocks:
            block = allocator.allocate()
            assert block not in counts, (
                f"step {step}: allocate() returned block {block}, which still has {counts.get(block)} holder(s). "
                "hint: a block may be handed out again only after its count reaches 0")
            assert 0 <= block < num_blocks, f"allocate() returned {block}, outside 0..{num_blocks - 1}"
            counts[block] = 1
        elif op < 0.6 and counts:
            block = rng.choice(sorted(counts))
            allocator.incref(block)
            counts[block] += 1
        elif counts:
            block = rng.choice(sorted(counts))
            allocator.free(block)
            counts[block] -= 1
            if counts[block] == 0:
                del counts[block]
        assert allocator.num_free == num_blocks - len(counts), (
            f"step {step}: num_free is {allocator.num_free}, expected {num_blocks - len(counts)}")
    for block in range(num_blocks):
        assert allocator.ref_count(block) == counts.get(block, 0), (
            f"ref_count({block}) is {allocator.ref_count(block)}, expected {counts.get(block, 0)}")


def test_allocate_and_free_are_constant_time():
    num_blocks = 50_000
    allocator = BlockAllocator(num_blocks)
    start = time.perf_counter()
    blocks = [allocator.allocate() for _ in range(num_blocks)]
    for block in blocks:
        allocator.free(block)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, (
        f"allocating and freeing {num_blocks} blocks took {elapsed:.2f} s (an O(1) allocator takes ~0.05 s). "
        "hint: keep the free blocks in a list or deque and pop from it instead of scanning for a free one")
