"""Reference for exercise 3.3: the scheduler's step."""

from __future__ import annotations

from mili.engine.batch import ScheduledSeq, SchedulerOutput
from mili.engine.sequence import SequenceStatus


class Scheduler:
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
        output = SchedulerOutput()
        budget = self.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            while not self.grow(seq, num_tokens):
                victim = self.running[-1]
                self.preempt(victim)
                output.preempted.append(victim)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                break
            output.scheduled.append(ScheduledSeq(seq, num_tokens))
            budget -= num_tokens
            index += 1

        while (not output.preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs
               and self.block_manager.can_allocate(self.waiting[0].token_ids)):
            seq = self.waiting[0]
            self.admit(seq)
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            output.scheduled.append(ScheduledSeq(seq, num_tokens))
            budget -= num_tokens
        return output
