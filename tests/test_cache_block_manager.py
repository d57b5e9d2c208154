"""Property tests (hypothesis) of the block manager with and without a radix prefix cache:
thousands of random sequences of admissions, growth, forks and frees, checking after every
operation that reference counts equal holders, that no block is both free and held, that every
evictable cached block would really be freed, and that nothing leaks at the end."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mili.cache.block_manager import BlockManager
from mili.cache.errors import OutOfBlocksError
from mili.cache.radix_cache import RadixCache

BS = 2
NUM_BLOCKS = 20
ops_strategy = st.lists(st.tuples(st.sampled_from(["allocate", "append", "fork", "cache", "free", "free+cache"]),
                                  st.lists(st.integers(0, 1), min_size=1, max_size=6 * BS), st.integers(0, 50)),
                        max_size=30)


def walk(node):
    yield node
    for child in node.children.values():
        yield from walk(child)


def cached_prefixes(cache):
    """Brute force: every whole-block prefix stored in the tree -> its block."""
    index = {}
    for node in list(walk(cache.root))[1:]:
        path = node.path_tokens()
        start = len(path) - len(node.tokens)
        for i, block in enumerate(node.block_ids):
            index[path[: start + (i + 1) * BS]] = block
    return index


def check(manager, cache, tokens):
    tables = {s: manager.block_table(s) for s in tokens}
    holders = [0] * NUM_BLOCKS
    for s, table in tables.items():
        assert len(table) == -(-manager.num_tokens(s) // BS)
        for block in table:
            holders[block] += 1
    nodes = list(walk(cache.root))[1:] if cache else []
    for node in nodes:
        for block in node.block_ids:
            holders[block] += 1
    assert [manager.allocator.ref_count(b) for b in range(NUM_BLOCKS)] == holders, "ref counts != holders"
    assert manager.num_free_blocks == holders.count(0), "a block is both free and held, or neither"
    for node in nodes:
        if node.lock_ref == 0:
            assert all(manager.allocator.ref_count(b) == 1 for b in node.block_ids), (
                "an unpinned cached block is still used by a sequence: evicting it would free nothing")
    stats = manager.stats
    assert stats.used_blocks == NUM_BLOCKS - holders.count(0) and 0.0 <= stats.hit_rate <= 1.0


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["none", "lru", "limit"]), ops_strategy)
def test_block_manager_keeps_reference_counts_exact_and_leaks_nothing(cache_kind, ops):
    cache = None if cache_kind == "none" else RadixCache(BS, max_cached_tokens=6 * BS if cache_kind == "limit" else None)
    manager = BlockManager(NUM_BLOCKS, BS, prefix_cache=cache)
    tokens, next_id = {}, 0  # live sequence -> the tokens in its slots
    for op, prompt, number in ops:
        live = sorted(tokens)
        seq_id = live[number % len(live)] if live else None
        if op == "allocate":
            expected_hit = 0
            if cache is not None:
                index = cached_prefixes(cache)
                while (expected_hit + 1) * BS < len(prompt) and tuple(prompt[: (expected_hit + 1) * BS]) in index:
                    expected_hit += 1
            if manager.can_allocate(prompt):
                assert manager.allocate(next_id, prompt) == expected_hit * BS
                tokens[next_id] = list(prompt)
                next_id += 1
            else:
                free_before = manager.num_free_blocks
                with pytest.raises(OutOfBlocksError):
                    manager.allocate("refused", prompt)
                assert manager.num_free_blocks == free_before
        elif op == "append" and live:
            grow = number % 4
            if manager.can_append(seq_id, grow):
                manager.append_slots(seq_id, grow)
                tokens[seq_id] += prompt[:1] * grow
            else:
                with pytest.raises(OutOfBlocksError):
                    manager.append_slots(seq_id, grow)
        elif op == "fork" and live:
            try:
                copies = manager.fork(seq_id, next_id)
            except OutOfBlocksError:
                continue
            assert len(copies) == (1 if manager.num_tokens(seq_id) % BS else 0)
            tokens[next_id] = list(tokens[seq_id])
            next_id += 1
        elif op == "cache" and live:
            manager.cache_prefix(seq_id, tokens[seq_id][: number % (len(tokens[seq_id]) + 1)])
        elif op.startswith("free") and live:
            written = tokens.pop(seq_id)
            manager.free(seq_id, written if op == "free+cache" else None)
        check(manager, cache, tokens)
    for seq_id in list(tokens):
        manager.free(seq_id)
    if cache is not None:
        cache.clear()
    assert manager.num_free_blocks == NUM_BLOCKS, "blocks leaked after every sequence finished and the cache cleared"
