"""Grader for exercise 5.2 (block manager).

Oracles: the formulas (ceil(len / block_size) blocks, slot = table[p // bs] * bs + p % bs), a
holder count per block built from the block tables, and `BruteForcePrefixCache`, a prefix cache
written here as a dictionary from every cached whole-block prefix to its block (so the manager is
graded independently of exercise 5.3, through the same interface `RadixCache` offers).
"""

import random

import pytest

from mili.cache.block_manager import BlockManager
from mili.cache.errors import OutOfBlocksError
from mili.cache.radix_node import PrefixMatch
from mili.testing import current_test_name, seed_from

pytestmark = pytest.mark.exercise("5.2")

BS = 4


class BruteForcePrefixCache:
    """The interface BlockManager uses, as brute force. A node handle is the prefix tuple itself."""

    def __init__(self, block_size):
        self.block_size, self.allocator = block_size, None
        self.blocks, self.locks, self.used = {}, {}, {}  # prefix -> block / pins / last use
        self.clock, self.num_evicted_blocks = 0, 0

    def _prefixes(self, tokens):
        return [tuple(tokens[: (i + 1) * self.block_size]) for i in range(len(tokens) // self.block_size)]

    def match_prefix(self, tokens):
        self.clock += 1
        node, found = (), []
        for key in self._prefixes(tokens):
            if key not in self.blocks:
                break
            node = key
            found.append(self.blocks[key])
            self.used[key] = self.clock
        return PrefixMatch(found, len(found) * self.block_size, node)

    def pin(self, node, delta=1):
        for key in self._prefixes(node):
            self.locks[key] = self.locks.get(key, 0) + delta
            assert self.locks[key] >= 0, "the block manager unpinned a prefix it had not pinned"

    def unpin(self, node):
        self.pin(node, -1)

    def insert(self, tokens, block_ids):
        self.clock += 1
        already = None
        for i, key in enumerate(self._prefixes(tokens)):
            if key not in self.blocks:
                already = i if already is None else already
                self.blocks[key] = block_ids[i]
                self.allocator.incref(block_ids[i])
            self.used[key] = self.clock
        return (len(tokens) // self.block_size if already is None else already) * self.block_size

    @property
    def evictable_blocks(self):
        return sum(1 for key in self.blocks if not self.locks.get(key))

    @property
    def num_cached_blocks(self):
        return len(self.blocks)

    def evict(self, num_blocks):
        dropped = []
        while len(dropped) < num_blocks:
            leaves = [k for k in self.blocks if not self.locks.get(k)
                      and not any(len(o) == len(k) + self.block_size and o[: len(k)] == k for o in self.blocks)]
            if not leaves:
                break
            key = min(leaves, key=lambda k: (self.used[k], k))
            dropped.append(self.blocks.pop(key))
            self.allocator.free(dropped[-1])
        self.num_evicted_blocks += len(dropped)
        return dropped


def blocks_for(n):
    return -(-n // BS)


def holders(manager, tables, cache=None):
    """Oracle reference counts: one per table listing a block, one more if the cache stores it."""
    counts = [0] * manager.num_blocks
    for table in tables.values():
        for b in table:
            counts[b] += 1
    for b in (cache.blocks.values() if cache else ()):
        counts[b] += 1
    return counts


def check_invariants(manager, tables, cache=None, what=""):
    expected = holders(manager, tables, cache)
    got = [manager.allocator.ref_count(b) for b in range(manager.num_blocks)]
    for b, (g, e) in enumerate(zip(got, expected)):
        assert g == e, (f"{what}: block {b} has ref_count {g} but {e} holder(s) (tables listing it, plus the "
                        "cache if it stores it). hint: every holder takes exactly one reference and drops it once")
    assert manager.num_free_blocks == expected.count(0), (
        f"{what}: num_free_blocks is {manager.num_free_blocks}, but {expected.count(0)} blocks have no holder")


def test_block_tables_and_slot_mapping():
    rng = random.Random(seed_from(current_test_name()))
    manager = BlockManager(64, BS)
    assert (manager.num_blocks, manager.block_size, manager.num_free_blocks) == (64, BS, 64)
    tables = {}
    for seq_id in range(6):
        n = rng.randrange(1, 30)
        assert manager.allocate(seq_id, [rng.randrange(100) for _ in range(n)]) == 0, "no prefix cache: 0 cached tokens"
        tables[seq_id] = manager.block_table(seq_id)
        assert len(tables[seq_id]) == blocks_for(n), (
            f"a {n}-token prompt got {len(tables[seq_id])} blocks, expected ceil({n} / {BS}) = {blocks_for(n)}")
        assert manager.num_tokens(seq_id) == n
        slots = manager.slot_mapping(seq_id, 0, n)
        expected = [tables[seq_id][p // BS] * BS + p % BS for p in range(n)]
        assert slots == expected, f"slot_mapping({seq_id}, 0, {n}) is {slots}, expected {expected}"
        assert manager.slot_mapping(seq_id, n - 1, n) == expected[-1:]
    every = [b for t in tables.values() for b in t]
    assert len(every) == len(set(every)), f"two live sequences share a block without a prefix cache or fork: {tables}"
    check_invariants(manager, tables, what="after 6 allocations")
    assert manager.usage == pytest.approx(len(every) / 64)


def test_append_slots_adds_a_block_only_when_the_last_one_is_full():
    manager = BlockManager(16, BS)
    manager.allocate("s", list(range(3)))
    history = []
    for _ in range(9):
        assert manager.can_append("s")
        manager.append_slots("s")
        history.append(len(manager.block_table("s")))
    assert history == [1, 2, 2, 2, 2, 3, 3, 3, 3], (
        f"table sizes while growing from 3 to 12 tokens: {history}; expected [1, 2, 2, 2, 2, 3, 3, 3, 3]. "
        "hint: a new block is needed when the capacity crosses a multiple of block_size")
    assert manager.num_tokens("s") == 12
    manager.append_slots("s", 9)
    assert len(manager.block_table("s")) == 6 and manager.num_tokens("s") == 21
    manager.append_slots("s", 0)
    assert manager.num_tokens("s") == 21


def test_out_of_blocks_is_predicted_and_changes_nothing():
    manager = BlockManager(5, BS)
    manager.allocate("a", list(range(12)))  # 3 blocks
    assert manager.can_allocate(list(range(8))) and not manager.can_allocate(list(range(9))), (
        "with 2 free blocks can_allocate must accept 8 tokens and refuse 9")
    with pytest.raises(OutOfBlocksError):
        manager.allocate("b", list(range(9)))
    assert manager.num_free_blocks == 2, "a failed allocate must not keep any block"
    with pytest.raises(ValueError):
        manager.block_table("b")
    assert manager.can_append("a", 8) and not manager.can_append("a", 9)
    with pytest.raises(OutOfBlocksError):
        manager.append_slots("a", 9)
    assert manager.num_tokens("a") == 12 and manager.num_free_blocks == 2


def test_free_returns_every_block():
    manager = BlockManager(8, BS)
    manager.allocate(1, list(range(10)))
    manager.allocate(2, list(range(5)))
    manager.free(1)
    manager.free(2)
    assert manager.num_free_blocks == 8 and manager.usage == 0.0
    with pytest.raises(ValueError):
        manager.free(1)


def test_fork_shares_full_blocks_and_copies_the_partial_one():
    manager = BlockManager(16, BS)
    manager.allocate("p", list(range(10)))  # blocks: full, full, partial (2 of 4)
    parent = manager.block_table("p")
    copies = manager.fork("p", "c")
    child = manager.block_table("c")
    assert child[:2] == parent[:2], f"the child's table {child} must share the parent's full blocks {parent[:2]}"
    assert child[2] != parent[2], "the partial last block must be a fresh copy, not shared"
    assert copies == [(parent[2], child[2])], f"fork returned {copies}, expected [({parent[2]}, {child[2]})]"
    assert manager.num_tokens("c") == 10
    check_invariants(manager, {"p": parent, "c": child}, what="after fork")
    manager.allocate("q", list(range(8)))
    assert manager.fork("q", "q2") == [], "a capacity that is a multiple of block_size needs no copy"
    manager.free("p")
    assert all(manager.allocator.ref_count(b) == 1 for b in child), "after the parent leaves, the child holds its blocks"


def test_prefix_reuse_through_the_cache():
    cache = BruteForcePrefixCache(BS)
    manager = BlockManager(32, BS, prefix_cache=cache)
    assert cache.allocator is manager.allocator, "the manager must bind a cache created without an allocator"
    system = list(range(100, 112))  # 3 whole blocks
    first = system + [1, 2, 3]
    assert manager.allocate("a", first) == 0
    manager.free("a", first)
    check_invariants(manager, {}, cache, "after freeing the first sequence into the cache")
    second = system + [7, 8]
    cached = manager.allocate("b", second)
    assert cached == 12, f"the second prompt shares 3 cached blocks (12 tokens); allocate returned {cached}"
    assert manager.block_table("b")[:3] == [cache.blocks[tuple(system[: 4 * (i + 1)])] for i in range(3)], (
        "the first blocks of the table must be the cached blocks themselves")
    check_invariants(manager, {"b": manager.block_table("b")}, cache, "after reusing a prefix")
    exact = list(system)
    assert manager.allocate("c", exact) == 8, (
        "a prompt that is exactly 3 cached blocks must reuse only 2 (8 tokens): at least one token is computed")
    stats = manager.stats
    assert (stats.prefix_queries_tokens, stats.prefix_hit_tokens) == (15 + 14 + 12, 20), (
        f"stats count {stats.prefix_queries_tokens} queried / {stats.prefix_hit_tokens} hit tokens, expected 41 / 20")
    assert stats.hit_rate == pytest.approx(20 / 41)
    manager.free("b", second)
    manager.free("c")
    cache.evict(cache.num_cached_blocks)
    assert manager.num_free_blocks == 32, "after freeing everything and clearing the cache every block is free"


def test_cache_prefix_shares_a_running_prompt():
    cache = BruteForcePrefixCache(BS)
    manager = BlockManager(16, BS, prefix_cache=cache)
    system = list(range(200, 208))  # 2 whole blocks
    manager.allocate("a", system + [1, 2, 3])
    manager.cache_prefix("a", system + [1, 2, 3])  # after a's prefill
    assert cache.num_cached_blocks == 2, f"cache_prefix must insert a's 2 full blocks, the cache holds {cache.num_cached_blocks}"
    assert cache.evictable_blocks == 0, (
        "a still uses the blocks it offered: they must be pinned (not evictable) until a is freed")
    assert manager.allocate("b", system + [9]) == 8, "b, admitted while a runs, must reuse a's 2 cached blocks"
    assert manager.block_table("b")[:2] == manager.block_table("a")[:2]
    check_invariants(manager, {s: manager.block_table(s) for s in "ab"}, cache, "after cache_prefix")
    manager.free("a", system + [1, 2, 3])
    manager.free("b")
    assert cache.evictable_blocks == 2
    with pytest.raises(ValueError):
        manager.cache_prefix("a", system)


def test_eviction_makes_room_and_pinned_prefixes_survive():
    cache = BruteForcePrefixCache(BS)
    manager = BlockManager(6, BS, prefix_cache=cache)
    prompt = list(range(16))
    manager.allocate("a", prompt)
    manager.free("a", prompt)  # 4 cached blocks, all evictable
    assert manager.num_free_blocks == 2 and cache.evictable_blocks == 4
    assert manager.allocate("b", prompt + [99]) == 16  # pins the 4 cached blocks, takes 1 fresh block
    assert manager.can_allocate(list(range(50, 54))) and not manager.can_allocate(list(range(50, 58))), (
        "1 block is free and the 4 cached ones are pinned by 'b': can_allocate must count only free + evictable")
    manager.free("b")
    other = list(range(50, 70))  # 5 blocks: needs the cache to give back 4
    assert manager.can_allocate(other)
    manager.allocate("c", other)
    assert cache.num_evicted_blocks >= 3 and manager.stats.evictions == cache.num_evicted_blocks
    check_invariants(manager, {"c": manager.block_table("c")}, cache, "after eviction")


def test_random_workload_keeps_reference_counts_exact():
    rng = random.Random(seed_from(current_test_name()))
    cache = BruteForcePrefixCache(BS)
    manager = BlockManager(24, BS, prefix_cache=cache)
    tables, tokens, next_id = {}, {}, 0
    for step in range(400):
        op = rng.random()
        if op < 0.35:
            prompt = [rng.randrange(2) for _ in range(rng.randrange(1, 20))]
            if manager.can_allocate(prompt):
                cached = manager.allocate(next_id, prompt)
                assert cached % BS == 0 and 0 <= cached < len(prompt), f"step {step}: allocate returned {cached}"
                tables[next_id], tokens[next_id] = None, list(prompt)
                next_id += 1
            else:
                with pytest.raises(OutOfBlocksError):
                    manager.allocate("refused", prompt)
        elif op < 0.6 and tables:
            seq_id = rng.choice(sorted(tables))
            if manager.can_append(seq_id):
                manager.append_slots(seq_id)
                tokens[seq_id].append(rng.randrange(2))
        elif op < 0.7 and tables:
            seq_id = rng.choice(sorted(tables))
            if manager.num_tokens(seq_id) % BS == 0 or manager.num_free_blocks + cache.evictable_blocks > 0:
                manager.fork(seq_id, next_id)
                tables[next_id], tokens[next_id] = None, list(tokens[seq_id])
                next_id += 1
        elif tables:
            seq_id = rng.choice(sorted(tables))
            manager.free(seq_id, tokens.pop(seq_id) if rng.random() < 0.7 else None)
            del tables[seq_id]
        live = {s: manager.block_table(s) for s in tables}
        for s, table in live.items():
            assert len(table) == blocks_for(manager.num_tokens(s)), f"step {step}: sequence {s} has a wrong table size"
        check_invariants(manager, live, cache, f"step {step}")
    for seq_id in list(tables):
        manager.free(seq_id)
    cache.evict(cache.num_cached_blocks)
    assert manager.num_free_blocks == 24, "blocks leaked: after freeing every sequence and clearing the cache"


def test_misuse_raises_value_error():
    manager = BlockManager(8, BS)
    manager.allocate("a", [1, 2, 3])
    for call in (lambda: manager.allocate("a", [1]), lambda: manager.allocate("e", []),
                 lambda: manager.slot_mapping("a", 0, 4), lambda: manager.slot_mapping("a", 2, 1),
                 lambda: manager.num_tokens("nope"), lambda: manager.append_slots("nope"),
                 lambda: manager.fork("nope", "x"), lambda: manager.fork("a", "a"),
                 lambda: manager.free("a", [1, 2, 3, 4])):
        with pytest.raises(ValueError):
            call()
