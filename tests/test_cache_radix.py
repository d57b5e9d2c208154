"""Property tests (hypothesis) of the radix prefix cache over a real BlockAllocator: thousands of
random sequences of inserts, matches, pins, unpins and evictions, checked after every operation
against a brute-force prefix index and the tree's structural invariants."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mili.cache.block_allocator import BlockAllocator
from mili.cache.radix_cache import RadixCache

BS = 2
NUM_BLOCKS = 48
ops_strategy = st.lists(st.tuples(st.sampled_from(["insert", "match", "match+pin", "unpin", "evict"]),
                                  st.lists(st.integers(0, 1), max_size=5 * BS + 1), st.integers(0, 8)),
                        max_size=30)


def walk(node):
    yield node
    for child in node.children.values():
        yield from walk(child)


class Model:
    """The cache under test, the brute-force index it must agree with, and the pins taken."""

    def __init__(self, policy, max_cached_tokens):
        self.allocator = BlockAllocator(NUM_BLOCKS)
        self.cache = RadixCache(BS, allocator=self.allocator, policy=policy, max_cached_tokens=max_cached_tokens)
        self.index = {}  # whole-block prefix tuple -> its last block
        self.pins = []  # (node, the blocks it covers)

    def insert(self, tokens):
        n = len(tokens) // BS
        if n > self.allocator.num_free:
            return
        blocks = [self.allocator.allocate() for _ in range(n)]  # what a finishing sequence holds
        prefixes = [tuple(tokens[: (i + 1) * BS]) for i in range(n)]
        already = next((i for i, p in enumerate(prefixes) if p not in self.index), n)
        before = self.cache.num_evicted_blocks
        assert self.cache.insert(tokens, blocks) == already * BS
        for prefix, block in zip(prefixes, blocks):
            self.index.setdefault(prefix, block)
        for block in blocks:
            self.allocator.free(block)  # the sequence lets go; the cache keeps what it adopted
        if self.cache.num_evicted_blocks != before:  # the token limit evicted: resync from the allocator
            self.index = {p: b for p, b in self.index.items() if self.allocator.ref_count(b)}
        limit = self.cache.max_cached_tokens
        if limit is not None:
            assert self.cache.num_cached_tokens <= max(limit, self._pinned_tokens())

    def _pinned_tokens(self):
        return BS * len({b for _, blocks in self.pins for b in blocks})

    def match(self, tokens, pin):
        expected = []
        for i in range(len(tokens) // BS):
            prefix = tuple(tokens[: (i + 1) * BS])
            if prefix not in self.index:
                break
            expected.append(self.index[prefix])
        got = self.cache.match_prefix(tokens)
        assert list(got.block_ids) == expected and got.num_tokens == len(expected) * BS
        if pin and expected:
            self.cache.pin(got.node)
            self.pins.append((got.node, list(expected)))

    def unpin(self, which):
        if self.pins:
            node, _ = self.pins.pop(which % len(self.pins))
            self.cache.unpin(node)

    def evict(self, num_blocks):
        evictable = self.cache.evictable_blocks
        dropped = self.cache.evict(num_blocks)
        assert len(dropped) >= min(num_blocks, evictable), "evict stopped while evictable blocks were left"
        pinned = {b for _, blocks in self.pins for b in blocks}
        assert not pinned & set(dropped), "eviction removed a pinned block"
        gone = set(dropped)
        self.index = {p: b for p, b in self.index.items() if b not in gone}

    def check(self):
        nodes = list(walk(self.cache.root))[1:]
        blocks = [b for node in nodes for b in node.block_ids]
        assert sorted(blocks) == sorted(self.index.values()), "the tree and the brute-force index disagree"
        assert self.cache.num_cached_blocks == len(blocks)
        assert self.cache.evictable_blocks == sum(len(n.block_ids) for n in nodes if n.lock_ref == 0)
        direct = {}
        for node, _ in self.pins:
            direct[id(node)] = direct.get(id(node), 0) + 1
        for node in [self.cache.root] + nodes:
            for key, child in node.children.items():
                assert child.parent is node and key == child.tokens[:BS]
                assert len(child.tokens) == len(child.block_ids) * BS and child.block_ids
            if node is not self.cache.root:
                assert node.lock_ref == direct.get(id(node), 0) + sum(c.lock_ref for c in node.children.values())
        cached = set(blocks)
        for block in range(NUM_BLOCKS):  # the cache is the only holder in this test
            assert self.allocator.ref_count(block) == (1 if block in cached else 0)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["lru", "fifo"]), st.sampled_from([None, 4 * BS, 12 * BS]), ops_strategy)
def test_radix_cache_agrees_with_brute_force_and_never_leaks(policy, limit, ops):
    model = Model(policy, limit)
    for op, tokens, number in ops:
        if op == "insert":
            model.insert(tokens)
        elif op.startswith("match"):
            model.match(tokens, pin=op == "match+pin")
        elif op == "unpin":
            model.unpin(number)
        else:
            model.evict(number)
        model.check()
    for node, _ in model.pins:
        model.cache.unpin(node)
    model.cache.clear()
    assert model.cache.num_cached_blocks == 0 and model.allocator.num_free == NUM_BLOCKS, "blocks leaked"
