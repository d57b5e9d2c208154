"""Property tests (hypothesis) of the block allocator and the contiguous allocator, on the
implementations MILI_IMPL selects (the references in CI): thousands of random operation sequences
against brute-force models, every invariant checked after every operation."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mili.cache.block_allocator import BlockAllocator
from mili.cache.errors import OutOfBlocksError
from mili.cache.fragmentation import ContiguousAllocator

NUM_BLOCKS = 12
CAPACITY = 64
SEQUENCES = settings(max_examples=1000, deadline=None)

block_ops = st.lists(st.tuples(st.sampled_from(["allocate", "incref", "free", "misuse"]),
                               st.integers(-2, NUM_BLOCKS + 2)), max_size=40)


@SEQUENCES
@given(block_ops)
def test_block_allocator_counts_references_exactly(ops):
    allocator = BlockAllocator(NUM_BLOCKS)
    counts = {}  # the model: block -> holders; absent = free
    for op, arg in ops:
        held = sorted(counts)
        if op == "allocate":
            if len(counts) == NUM_BLOCKS:
                with pytest.raises(OutOfBlocksError):
                    allocator.allocate()
            else:
                block = allocator.allocate()
                assert block not in counts and 0 <= block < NUM_BLOCKS, f"allocate() returned held block {block}"
                counts[block] = 1
        elif op == "incref" and held:
            block = held[arg % len(held)]
            allocator.incref(block)
            counts[block] += 1
        elif op == "free" and held:
            block = held[arg % len(held)]
            allocator.free(block)
            counts[block] -= 1
            if not counts[block]:
                del counts[block]
        elif op == "misuse" and arg not in counts:
            with pytest.raises(ValueError):
                allocator.free(arg)
            with pytest.raises(ValueError):
                allocator.incref(arg)
        assert allocator.num_free == NUM_BLOCKS - len(counts)
        assert [allocator.ref_count(b) for b in range(NUM_BLOCKS)] == [counts.get(b, 0) for b in range(NUM_BLOCKS)]
    for block, count in counts.items():
        for _ in range(count):
            allocator.free(block)
    assert allocator.num_free == NUM_BLOCKS, "blocks leaked"


contiguous_ops = st.lists(st.tuples(st.booleans(), st.integers(1, 24)), max_size=40)


@SEQUENCES
@given(st.sampled_from(["first", "best"]), contiguous_ops)
def test_contiguous_allocator_tiles_the_buffer(fit, ops):
    allocator, regions = ContiguousAllocator(CAPACITY, fit), {}
    for is_free, arg in ops:
        if is_free and regions:
            offset = sorted(regions)[arg % len(regions)]
            allocator.free(offset)
            del regions[offset]
        elif not is_free:
            fitting = [h for h in allocator.holes() if h[1] >= arg]
            offset = allocator.allocate(arg)
            if not fitting:
                assert offset is None
                continue
            expected = fitting[0][0] if fit == "first" else min(fitting, key=lambda h: (h[1], h[0]))[0]
            assert offset == expected
            regions[offset] = arg
        holes = allocator.holes()
        position = 0
        for offset, size in sorted(holes + list(regions.items())):
            assert offset == position, f"gap or overlap at {position}"
            position += size
        assert position == CAPACITY
        assert all(a + sa < b for (a, sa), (b, _) in itertools.pairwise(holes)), f"holes {holes} should be merged"
        assert allocator.free_space == sum(s for _, s in holes)
        assert allocator.largest_hole == max((s for _, s in holes), default=0)
