"""Grader for exercise 3.3 (the scheduler), on scripted scenarios.

Oracle: a brute-force block manager written here (a list of free blocks and a table per
sequence) and the expected decisions of each scenario, worked out by hand in the comments.
"""

import random

import pytest

from mili.engine.sampling_params import SamplingParams
from mili.engine.scheduler import Scheduler
from mili.engine.sequence import Request, Sequence, SequenceStatus

pytestmark = pytest.mark.exercise("3.3")


class BruteForceBlocks:
    """The block-manager calls the scheduler makes, done the obvious way. `cached` maps a prompt
    prefix (tuple of ids) to pretend it is in the prefix cache."""

    def __init__(self, num_blocks: int, block_size: int, cached: dict | None = None):
        self.free_blocks, self.block_size, self.num_blocks = list(range(num_blocks)), block_size, num_blocks
        self.tables, self.capacity, self.cached = {}, {}, cached or {}

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_allocate(self, token_ids):
        return self._blocks_for(len(token_ids)) <= len(self.free_blocks)

    def allocate(self, seq_id, token_ids):
        assert seq_id not in self.tables, f"sequence {seq_id} allocated twice without a free in between"
        assert self.can_allocate(token_ids), "allocate called although can_allocate said no"
        n = self._blocks_for(len(token_ids))
        self.tables[seq_id], self.free_blocks = self.free_blocks[:n], self.free_blocks[n:]
        self.capacity[seq_id] = len(token_ids)
        return max((len(p) for p in self.cached if tuple(token_ids[:len(p)]) == p and len(p) < len(token_ids)),
                   default=0)

    def num_tokens(self, seq_id):
        return self.capacity[seq_id]

    def can_append(self, seq_id, num_tokens=1):
        extra = self._blocks_for(self.capacity[seq_id] + num_tokens) - len(self.tables[seq_id])
        return extra <= len(self.free_blocks)

    def append_slots(self, seq_id, num_tokens=1):
        assert self.can_append(seq_id, num_tokens), "append_slots called although can_append said no"
        self.capacity[seq_id] += num_tokens
        extra = self._blocks_for(self.capacity[seq_id]) - len(self.tables[seq_id])
        self.tables[seq_id] += self.free_blocks[:extra]
        self.free_blocks = self.free_blocks[extra:]

    def free(self, seq_id, token_ids=None):
        self.free_blocks += self.tables.pop(seq_id)
        del self.capacity[seq_id]


_ids = iter(range(10**6))


def make_seq(prompt_len: int, max_tokens: int = 4, start: int = 1) -> Sequence:
    request = Request(f"r{next(_ids)}", None, list(range(start, start + prompt_len)), SamplingParams(max_tokens=max_tokens))
    seq = Sequence(next(_ids), request)
    request.seqs.append(seq)
    return seq


def run_step(scheduler: Scheduler):
    """What the engine does after the model ran: count computed tokens, sample, finish."""
    out = scheduler.schedule()
    for item in out.scheduled:
        seq = item.seq
        seq.num_computed_tokens += item.num_tokens
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(99)
            if seq.num_output_tokens >= seq.params.max_tokens:
                scheduler.finish(seq, "length")
    return out


def plan(out) -> list[tuple[int, int]]:
    return [(item.seq.seq_id, item.num_tokens) for item in out.scheduled]


def test_continuous_batching_joins_and_leaves():
    bm = BruteForceBlocks(64, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = make_seq(5, max_tokens=2), make_seq(7, max_tokens=5)
    sched.add(a), sched.add(b)
    assert plan(run_step(sched)) == [(a.seq_id, 5), (b.seq_id, 7)], "step 1 must prefill both prompts whole"
    c = make_seq(3)
    sched.add(c)
    out = run_step(sched)
    assert plan(out) == [(a.seq_id, 1), (b.seq_id, 1), (c.seq_id, 3)], (
        f"step 2: running sequences decode one token each, then the newcomer joins with its prompt; got {plan(out)}. "
        "hint: schedule the running list first, then admit from waiting")
    assert a.is_finished and a.seq_id not in bm.tables, "a finished after 2 tokens: its blocks must be free"
    out = run_step(sched)
    assert plan(out) == [(b.seq_id, 1), (c.seq_id, 1)], f"step 3: a left the batch; got {plan(out)}"


def test_token_budget_and_chunked_prefill():
    bm = BruteForceBlocks(64, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=8)
    a, b, long = make_seq(5, max_tokens=10), make_seq(7, max_tokens=10), make_seq(20)
    for s in (a, b, long):
        sched.add(s)
    steps = [plan(run_step(sched)) for _ in range(5)]
    expected = [
        [(a.seq_id, 5), (b.seq_id, 3)],  # b's prompt is cut at the budget of 8
        [(a.seq_id, 1), (b.seq_id, 4), (long.seq_id, 3)],  # b finishes its prompt; long starts
        [(a.seq_id, 1), (b.seq_id, 1), (long.seq_id, 6)],
        [(a.seq_id, 1), (b.seq_id, 1), (long.seq_id, 6)],
        [(a.seq_id, 1), (b.seq_id, 1), (long.seq_id, 5)],  # 3 + 6 + 6 + 5 = 20: long's prompt is done
    ]
    for i, (got, want) in enumerate(zip(steps, expected)):
        assert got == want, (f"step {i + 1} with max_num_batched_tokens=8: expected (seq_id, tokens) {want}, got {got}. "
                             "hint: a running sequence's share is min(num_uncomputed_tokens, budget left)")


def test_max_num_seqs_caps_the_batch():
    sched = Scheduler(BruteForceBlocks(64, 4), max_num_seqs=2, max_num_batched_tokens=64)
    seqs = [make_seq(3, max_tokens=2) for _ in range(3)]
    for s in seqs:
        sched.add(s)
    out = run_step(sched)
    assert [s for s, _ in plan(out)] == [seqs[0].seq_id, seqs[1].seq_id], "only max_num_seqs=2 may run"
    assert seqs[2].status is SequenceStatus.WAITING
    run_step(sched)  # seqs 0 and 1 finish after their second token
    out = run_step(sched)
    assert plan(out) == [(seqs[2].seq_id, 3)], f"the third joins once the others left; got {plan(out)}"


def test_first_come_first_served_no_overtaking():
    sched = Scheduler(BruteForceBlocks(4, 4), max_num_seqs=8, max_num_batched_tokens=64)
    big, small = make_seq(17), make_seq(3)  # big needs 5 blocks of 4: it can never fit
    sched.add(big), sched.add(small)
    out = sched.schedule()
    assert out.is_empty, ("the head of the queue does not fit, and a later request must not overtake it; "
                          f"got {plan(out)}. hint: stop admitting at the first sequence that cannot be allocated")


def test_prefix_cache_hit_skips_cached_tokens():
    prompt = list(range(1, 11))
    bm = BruteForceBlocks(64, 4, cached={tuple(prompt[:8]): True})
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    seq = make_seq(10)
    sched.add(seq)
    out = sched.schedule()
    assert plan(out) == [(seq.seq_id, 2)], (f"8 of 10 prompt tokens are cached: only 2 are computed; got {plan(out)}. "
                                            "hint: admit() sets num_computed_tokens from the cache; schedule "
                                            "num_uncomputed_tokens after admitting")
    assert seq.num_computed_tokens == 8 and seq.request.num_cached_tokens == 8


def test_preemption_by_recompute_keeps_generated_tokens():
    bm = BruteForceBlocks(5, 4)  # 20 token slots
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = make_seq(8, max_tokens=6), make_seq(8, max_tokens=6)
    sched.add(a), sched.add(b)
    run_step(sched)  # both prefilled: 2 blocks each, each sampled 1 token (9 tokens, 8 computed)
    out = run_step(sched)  # token 9 of each needs a 3rd block: a gets the last one, b is preempted
    assert out.preempted == [b], (f"with one free block left, a (admitted first) grows and b (admitted last) is "
                                  f"preempted; preempted = {[s.seq_id for s in out.preempted]}")
    assert plan(out) == [(a.seq_id, 1)], f"only a decodes this step; got {plan(out)}"
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0 and b.num_output_tokens == 1, (
        "a preempted sequence goes back to waiting with nothing computed but keeps the tokens it generated")
    assert b.seq_id not in bm.tables and sched.waiting[0] is b, "its blocks are freed and it waits at the front"
    assert sched.num_preemptions == 1
    while sched.has_unfinished():
        run_step(sched)
    assert a.num_output_tokens == 6 and b.num_output_tokens == 6, "both finish after resuming"
    assert len(bm.free_blocks) == 5, "every block is free at the end"


def test_random_workloads_keep_every_promise():
    rng = random.Random(1234)
    for trial in range(30):
        budget, max_seqs = rng.choice([8, 16, 40]), rng.choice([2, 4, 8])
        bm = BruteForceBlocks(rng.choice([12, 20, 64]), 4)
        sched = Scheduler(bm, max_num_seqs=max_seqs, max_num_batched_tokens=max(budget, max_seqs))
        seqs = [make_seq(rng.randint(1, 30), max_tokens=rng.randint(1, 12)) for _ in range(rng.randint(1, 10))]
        for s in seqs:
            sched.add(s)
        for _ in range(2000):
            if not sched.has_unfinished():
                break
            before = [s.seq_id for s in sched.running]
            out = run_step(sched)
            assert out.num_batched_tokens <= sched.max_num_batched_tokens, f"trial {trial}: token budget exceeded"
            assert len({id(i.seq) for i in out.scheduled}) == len(out.scheduled), "a sequence scheduled twice"
            assert len(out.scheduled) <= max_seqs, f"trial {trial}: more than max_num_seqs sequences in a step"
            assert all(i.num_tokens >= 1 for i in out.scheduled), "scheduled a sequence with 0 tokens"
            assert out.scheduled or not sched.running, f"trial {trial}: nothing scheduled while sequences run"
            for victim in out.preempted:
                assert victim.seq_id in before, "only running sequences can be preempted"
        assert all(s.is_finished and s.num_output_tokens == s.params.max_tokens for s in seqs), (
            f"trial {trial}: every request must finish; stuck: {[s for s in seqs if not s.is_finished]}")
        assert len(bm.free_blocks) == bm.num_blocks, f"trial {trial}: blocks leaked"
