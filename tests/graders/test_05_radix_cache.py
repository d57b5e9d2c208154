"""Grader for exercise 5.3 (radix prefix cache).

Oracle: a brute-force prefix index, a dictionary from every cached whole-block prefix (a tuple of
tokens) to the block holding its last block of tokens. The longest cached prefix of a query is
then found by trying prefixes of 1, 2, 3 ... blocks. A counting allocator records the cache's
increfs and frees, independently of exercise 5.1.
"""

import random

import pytest

from mili.cache.radix_cache import RadixCache
from mili.testing import current_test_name, seed_from

pytestmark = pytest.mark.exercise("5.3")

BS = 4


class CountingAllocator:
    """Stands in for BlockAllocator: counts the references the cache takes and drops."""

    def __init__(self):
        self.refs = {}

    def incref(self, block_id):
        self.refs[block_id] = self.refs.get(block_id, 0) + 1

    def free(self, block_id):
        assert self.refs.get(block_id, 0) > 0, f"the cache freed block {block_id}, which it holds no reference to"
        self.refs[block_id] -= 1
        if not self.refs[block_id]:
            del self.refs[block_id]


class PrefixOracle:
    def __init__(self, bs):
        self.bs, self.blocks = bs, {}  # prefix tuple (whole blocks) -> block id of its last block

    def insert(self, tokens, block_ids):
        already = 0
        for i in range(len(tokens) // self.bs):
            key = tuple(tokens[: (i + 1) * self.bs])
            if key in self.blocks and already == i:
                already += 1
            self.blocks.setdefault(key, block_ids[i])
        return already * self.bs

    def match(self, tokens):
        found = []
        for i in range(len(tokens) // self.bs):
            key = tuple(tokens[: (i + 1) * self.bs])
            if key not in self.blocks:
                break
            found.append(self.blocks[key])
        return found

    def drop(self, block_ids):
        gone = set(block_ids)
        self.blocks = {k: b for k, b in self.blocks.items() if b not in gone}


def seq(*blocks):
    """Tokens made of whole blocks: seq(1, 2) is [1,1,1,1, 2,2,2,2] for BS=4."""
    return [b for b in blocks for _ in range(BS)]


def check_match(cache, oracle, tokens, what):
    expected = oracle.match(tokens)
    got = cache.match_prefix(tokens)
    assert list(got.block_ids) == expected, (
        f"{what}: match_prefix returned blocks {list(got.block_ids)}, expected {expected} "
        f"(the longest cached prefix in whole blocks of {BS} tokens). "
        "hint: follow children by the first block of each edge, compare the edge block by block")
    assert got.num_tokens == len(expected) * BS, f"{what}: num_tokens is {got.num_tokens}, expected {len(expected) * BS}"
    return got


def test_empty_cache_matches_nothing():
    cache = RadixCache(BS)
    got = cache.match_prefix(seq(1, 2))
    assert list(got.block_ids) == [] and got.num_tokens == 0
    assert got.node is cache.root, "with nothing cached the match's node must be the root"
    assert cache.num_cached_blocks == 0 and cache.evictable_blocks == 0


def test_insert_and_match_whole_blocks_only():
    cache = RadixCache(BS)
    assert cache.insert(seq(1, 2, 3) + [7, 7], [10, 11, 12, 13]) == 0, "nothing was cached before the first insert"
    assert cache.num_cached_blocks == 3, (
        f"num_cached_blocks is {cache.num_cached_blocks} after inserting 3 whole blocks and 2 extra tokens. "
        "hint: a partial last block is never cached")
    assert cache.num_cached_tokens == 3 * BS
    got = cache.match_prefix(seq(1, 2, 3) + [7, 7, 7, 7])
    assert list(got.block_ids) == [10, 11, 12] and got.num_tokens == 12
    assert list(cache.match_prefix(seq(1, 2) + [3, 3, 3]).block_ids) == [10, 11], (
        "a query ending in a partial block matches only its whole blocks")
    assert list(cache.match_prefix(seq(1) + [2, 2, 2, 9]).block_ids) == [10], (
        "a block that differs in its last token does not match")
    assert cache.insert(seq(1, 2, 5), [20, 21, 22]) == 2 * BS, "insert returns the number of tokens already cached"
    assert list(cache.match_prefix(seq(1, 2, 5)).block_ids) == [10, 11, 22], (
        "the cached part keeps its own blocks; only the new block of the insert is adopted")


def test_a_divergence_inside_an_edge_splits_the_node():
    cache = RadixCache(BS)
    cache.insert(seq(1, 2, 3, 4), [0, 1, 2, 3])
    assert len(cache.root.children) == 1
    only = next(iter(cache.root.children.values()))
    assert list(only.block_ids) == [0, 1, 2, 3], "one insert into an empty tree makes one node holding all its blocks"
    cache.insert(seq(1, 2, 8), [4, 5, 6])
    upper = next(iter(cache.root.children.values()))
    assert list(upper.block_ids) == [0, 1] and len(upper.children) == 2, (
        f"after inserting [1,2,8] beside [1,2,3,4] the root's child holds blocks {list(upper.block_ids)} with "
        f"{len(upper.children)} children; expected blocks [0, 1] with 2 children. hint: split the edge at the "
        "block where the sequences diverge; the shared part becomes the parent")
    tails = sorted(list(child.block_ids) for child in upper.children.values())
    assert tails == [[2, 3], [6]], f"the two branches hold {tails}, expected [[2, 3], [6]]"
    assert all(child.parent is upper for child in upper.children.values()), "a split child's parent must be the new node"


def test_a_match_ending_inside_an_edge_returns_a_node_of_exactly_the_match():
    cache = RadixCache(BS)
    cache.insert(seq(1, 2, 3), [0, 1, 2])
    got = cache.match_prefix(seq(1, 9))
    assert list(got.node.block_ids) == [0], (
        f"matching 1 of 3 blocks returned a node holding {list(got.node.block_ids)}; expected exactly [0], so "
        "that pinning it protects only what the sequence uses. hint: split the node at the match's end")
    assert got.node.parent is cache.root
    cache.pin(got.node)
    assert cache.evictable_blocks == 2, f"evictable_blocks is {cache.evictable_blocks}, expected 2 (blocks 1, 2)"
    assert sorted(cache.evict(10)) == [1, 2], "only the unpinned tail may be evicted"
    cache.unpin(got.node)
    assert cache.clear() == [0]


def test_random_inserts_and_matches_agree_with_a_brute_force_index():
    rng = random.Random(seed_from(current_test_name()))
    cache, oracle = RadixCache(BS), PrefixOracle(BS)
    next_block = 0
    for step in range(600):
        length = rng.randrange(1, 7 * BS)
        tokens = [rng.randrange(2) for _ in range(length)]  # a tiny vocabulary: many shared prefixes
        if rng.random() < 0.5:
            n = length // BS
            block_ids = list(range(next_block, next_block + n + 1))
            next_block += n + 1
            expected = oracle.insert(tokens, block_ids)
            got = cache.insert(tokens, block_ids)
            assert got == expected, f"step {step}: insert returned {got} already-cached tokens, expected {expected}"
        else:
            check_match(cache, oracle, tokens, f"step {step}")
        assert cache.num_cached_blocks == len(oracle.blocks), (
            f"step {step}: num_cached_blocks is {cache.num_cached_blocks}, expected {len(oracle.blocks)}")


def test_eviction_takes_the_least_recently_used_leaf():
    cache = RadixCache(BS)
    cache.insert(seq(1), [10])
    cache.insert(seq(2), [20])
    cache.insert(seq(3), [30])
    cache.match_prefix(seq(1))  # 1 is now the most recently used
    order = [cache.evict(1) for _ in range(3)]
    assert order == [[20], [30], [10]], (
        f"evict(1) three times dropped {order}; expected [[20], [30], [10]]: least recently used first, and a "
        "match counts as a use")
    assert cache.evict(1) == [] and cache.num_cached_blocks == 0


def test_fifo_policy_evicts_in_insertion_order():
    cache = RadixCache(BS, policy="fifo")
    for b in (1, 2, 3):
        cache.insert(seq(b), [b])
    cache.match_prefix(seq(1))
    assert cache.evict(1) == [1], "with policy='fifo' the first inserted leaf goes first, used or not"


def test_leaves_go_before_their_parents_and_whole_nodes_are_evicted():
    cache = RadixCache(BS)
    cache.insert(seq(1, 2, 3), [0, 1, 2])
    cache.insert(seq(1, 5), [0, 5])
    cache.match_prefix(seq(1, 2, 3))
    dropped = cache.evict(1)
    assert dropped == [5], f"evict(1) dropped {dropped}; the least recently used leaf is block 5"
    dropped = cache.evict(1)
    assert sorted(dropped) == [1, 2], (
        f"evict(1) dropped {dropped}; the leaf [2, 3]'s node holds blocks [1, 2] and is evicted whole")
    assert cache.evict(5) == [0], "a parent left without children becomes an evictable leaf"


def test_pinned_nodes_are_never_evicted():
    allocator = CountingAllocator()
    cache = RadixCache(BS, allocator=allocator)
    cache.insert(seq(1, 2), [0, 1])
    cache.insert(seq(3), [2])
    assert allocator.refs == {0: 1, 1: 1, 2: 1}, f"the cache must take one reference per adopted block, got {allocator.refs}"
    match = cache.match_prefix(seq(1, 2))
    cache.pin(match.node)
    cache.pin(match.node)
    assert cache.evictable_blocks == 1
    assert cache.clear() == [2], "clear() evicts everything that is not pinned"
    assert allocator.refs == {0: 1, 1: 1}, "eviction must drop the cache's reference on each evicted block"
    cache.unpin(match.node)
    assert cache.evict(5) == [], "a node pinned twice and unpinned once is still pinned"
    cache.unpin(match.node)
    assert cache.evictable_blocks == 2
    assert sorted(cache.clear()) == [0, 1] and allocator.refs == {}
    with pytest.raises(ValueError):
        cache.unpin(match.node)


def check_lock_refs(cache, what):
    """The tree's pin invariants: the root stays at 0, a node holds at least its children's pins."""
    assert cache.root.lock_ref == 0, f"{what}: the root's lock_ref is {cache.root.lock_ref}; pin never counts the root"
    stack = list(cache.root.children.values())
    while stack:
        node = stack.pop()
        below = sum(child.lock_ref for child in node.children.values())
        assert node.lock_ref >= below, (
            f"{what}: a node holding blocks {list(node.block_ids)} has lock_ref {node.lock_ref}, less than the "
            f"{below} of its children. hint: a pin holds every ancestor of the pinned node; a split's new upper "
            "node takes the lock_ref of the node it was cut from")
        stack.extend(node.children.values())


def test_pin_holds_every_ancestor_but_not_the_root():
    cache = RadixCache(BS)
    cache.insert(seq(1, 2, 3), [0, 1, 2])
    cache.insert(seq(1, 2, 5), [0, 1, 5])  # splits: [1, 2] above [3] and [5]
    leaf = cache.match_prefix(seq(1, 2, 3)).node
    cache.pin(leaf)
    path = [leaf.lock_ref, leaf.parent.lock_ref, cache.root.lock_ref]
    assert path == [1, 1, 0], (
        f"after pin(leaf): lock_ref of the leaf, its parent and the root are {path}; expected [1, 1, 0]. hint: "
        "lock_ref + 1 on the node and on every ancestor below the root")
    assert cache.evictable_blocks == 1, (
        f"evictable_blocks is {cache.evictable_blocks} with the path [1, 2] -> [3] pinned; only block 5 can go")
    assert cache.clear() == [5], "with [1, 2, 3] pinned, clear() may drop only the other branch"
    cache.pin(cache.root)
    assert cache.root.lock_ref == 0, "pin(root) does nothing: the root holds no blocks"
    cache.unpin(leaf)
    check_lock_refs(cache, "after unpin")
    assert leaf.lock_ref == 0 and leaf.parent.lock_ref == 0 and cache.evictable_blocks == 3


def test_a_split_keeps_the_pins_of_the_node_it_cuts():
    cache = RadixCache(BS)
    cache.insert(seq(1, 2, 3, 4), [0, 1, 2, 3])
    whole = cache.match_prefix(seq(1, 2, 3, 4)).node
    cache.pin(whole)
    upper = cache.match_prefix(seq(1, 2)).node  # ends inside the pinned node's label: a split
    assert upper is not whole and whole.parent is upper, (
        "a split creates a new node for the upper part; the original node object keeps the lower part")
    assert list(upper.block_ids) == [0, 1] and list(whole.block_ids) == [2, 3]
    assert upper.lock_ref == 1, (
        f"the upper half of a pinned node has lock_ref {upper.lock_ref} after the split; expected 1: the pin "
        "below it holds it too. hint: give the new upper node the lock_ref of the node you cut")
    check_lock_refs(cache, "after a split under a pin")
    assert cache.evictable_blocks == 0 and cache.evict(4) == [], "everything on a pinned path stays"
    assert cache.insert(seq(1), [9]) == BS, "an insert ending inside an edge adopts nothing"
    assert cache.num_cached_blocks == 4 and list(cache.match_prefix(seq(1)).block_ids) == [0]
    cache.unpin(whole)
    check_lock_refs(cache, "after unpinning")
    assert cache.evictable_blocks == 4, f"evictable_blocks is {cache.evictable_blocks} once nothing is pinned"
    assert sorted(cache.clear()) == [0, 1, 2, 3]


def test_random_pins_and_splits_keep_the_lock_counts():
    rng = random.Random(seed_from(current_test_name()))
    cache, pinned, next_block = RadixCache(BS), [], 0
    for step in range(300):
        tokens = [rng.randrange(2) for _ in range(rng.randrange(1, 6) * BS)]
        action = rng.random()
        if action < 0.4:
            cache.insert(tokens, list(range(next_block, next_block + len(tokens) // BS)))
            next_block += len(tokens) // BS
        elif action < 0.7:
            node = cache.match_prefix(tokens).node
            cache.pin(node)
            pinned.append(node)
        elif pinned:
            cache.unpin(pinned.pop(rng.randrange(len(pinned))))
        else:
            cache.evict(rng.randrange(1, 4))
        check_lock_refs(cache, f"step {step}")
        unpinned = sum(len(n.block_ids) for n in _nodes(cache) if n.lock_ref == 0)
        assert cache.evictable_blocks == unpinned, (
            f"step {step}: evictable_blocks is {cache.evictable_blocks}, but the nodes with lock_ref 0 hold "
            f"{unpinned} blocks")
    for node in pinned:
        cache.unpin(node)
    cached = cache.num_cached_blocks
    assert cache.evictable_blocks == cached, "once every pin is undone, every cached block is evictable"
    assert len(cache.clear()) == cached and cache.num_cached_blocks == 0, "clear() drops every unpinned block"


def _nodes(cache):
    stack, found = list(cache.root.children.values()), []
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children.values())
    return found


def test_token_limit_keeps_the_most_recent_prefixes():
    cache = RadixCache(BS, max_cached_tokens=3 * BS)
    for b in range(6):
        cache.insert(seq(b), [b])
        assert cache.num_cached_tokens <= 3 * BS, (
            f"after insert {b}: {cache.num_cached_tokens} tokens cached, over max_cached_tokens={3 * BS}. "
            "hint: after each insert, evict least recently used leaves until under the limit")
    assert [list(cache.match_prefix(seq(b)).block_ids) for b in range(6)] == [[], [], [], [3], [4], [5]]
    assert cache.num_evicted_blocks == 3


def test_bad_arguments_raise_value_error():
    for kwargs in ({"block_size": 0}, {"block_size": 4, "policy": "random"}, {"block_size": 4, "max_cached_tokens": 0}):
        with pytest.raises(ValueError):
            RadixCache(**kwargs)
    with pytest.raises(ValueError):
        RadixCache(BS).insert(seq(1, 2), [0])
