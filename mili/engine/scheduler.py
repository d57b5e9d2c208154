"""The scheduler (chapter 03, exercise 3.3): which sequences run in the next step, and how much.

Continuous batching: requests join (`add`) and leave (`finish`, `abort`) between steps, so the
batch changes every step. Each step has a token budget (`max_num_batched_tokens`) and a cap on
running sequences (`max_num_seqs`). A prompt longer than what is left of the budget runs in
chunks over several steps (chunked prefill). Waiting sequences are admitted first come, first
served; admission asks the block manager, which reuses the longest cached prefix. When a running
sequence needs a KV block and none is left, the most recently admitted running sequence is
preempted by recompute: its blocks are freed (its full blocks offered to the prefix cache), it
keeps its generated tokens, and it goes back to the front of the waiting queue.
"""

from __future__ import annotations

from collections import deque

from mili.cache.block_manager import BlockManager
from mili.engine.batch import SchedulerOutput
from mili.engine.sequence import Sequence, SequenceStatus
from mili.exercise import exercise


class Scheduler:
    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_num_seqs "
                             f"({max_num_seqs}) so that every running sequence can decode each step")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last one is preempted first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(self, seq: Sequence) -> None:
        """Move the head of the waiting queue to running with a block table (prefix cache used)."""
        if not self.waiting or self.waiting[0] is not seq:
            raise ValueError("only the head of the waiting queue can be admitted (first come, first served)")
        cached = self.block_manager.allocate(seq.seq_id, seq.token_ids)
        self.waiting.popleft()
        seq.num_computed_tokens = cached
        if seq.index == 0 and seq.num_preemptions == 0:
            seq.request.num_cached_tokens = cached
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def grow(self, seq: Sequence, num_tokens: int) -> bool:
        """Make room for `num_tokens` more computed tokens of a running sequence; False if no blocks."""
        needed = seq.num_computed_tokens + num_tokens - self.block_manager.num_tokens(seq.seq_id)
        if needed <= 0:
            return True
        if not self.block_manager.can_append(seq.seq_id, needed):
            return False
        self.block_manager.append_slots(seq.seq_id, needed)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and send it to the front of the waiting queue (recompute)."""
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """A sequence is done: free its blocks at once (full ones go to the prefix cache)."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _release(self, seq: Sequence) -> None:
        # only tokens whose K/V were written may enter the prefix cache
        self.block_manager.free(seq.seq_id, seq.token_ids[:seq.num_computed_tokens])

    @exercise("3.3", "Scheduler: continuous batching, chunked prefill, preemption")
    def schedule(self) -> SchedulerOutput:
        """Pick this step's work; returns a SchedulerOutput (which sequences, how many tokens each).

        1. Running sequences first, in admission order. Each gets
           n = min(seq.num_uncomputed_tokens, budget left) tokens (1 for a decode, a chunk of the
           prompt otherwise); stop when the budget is spent. Before scheduling it, make room with
           self.grow(seq, n); while that fails, preempt the last running sequence
           (self.preempt(victim), listed in output.preempted) and retry; if the victim is seq
           itself, stop going through the running list.
        2. Then, only if nothing was preempted this step, admit waiting sequences in arrival
           order while budget is left, fewer than max_num_seqs run, and
           self.block_manager.can_allocate(seq.token_ids): self.admit(seq) (which sets
           seq.num_computed_tokens to its cached prefix), then schedule
           min(seq.num_uncomputed_tokens, budget left) of its tokens. Stop at the first that
           cannot be admitted (first come, first served: no overtaking).
        The total of scheduled tokens never exceeds self.max_num_batched_tokens. Does not change
        num_computed_tokens of scheduled sequences (the engine does, after the step runs).
        """
        raise NotImplementedError("Exercise 3.3: see chapters/03_python_integration.ipynb, section 5")
