"""Failure isolation (chapter 03's engine, used by chapter 06's server): a failure inside an engine
step ends only the request it belongs to, with finish_reason "error"; the others go on and
produce exactly the tokens they would have produced.

When a step raises, the batch cannot tell whose fault it was. The engine undoes the step
(`StepJournal`), preempts every running sequence (recompute: each keeps its generated tokens and
its full blocks go to the prefix cache) and, from then on, steps the requests of the failed batch
alone, one request per step, in arrival order (`FailureIsolation`); everyone else waits. A
suspect that produces a token alone is cleared and preempted again, so that the next one has
the KV pool to itself; a suspect whose solo step raises was the cause: it finishes with
finish_reason "error" (the message in `RequestOutput.error`), and its blocks are freed without
entering the prefix cache. Then normal batching resumes. A fault nobody causes alone (a one-off,
or one that needs a big batch) ends nobody: every suspect makes progress in every round.

A step changes its sequences in place: the scheduler admits them and grows their block tables,
the engine forks parallel samples, advances `num_computed_tokens`, draws from seeded generators
and appends sampled tokens (feeding each sequence's detokenizer). When the step raises, some of
those changes may already have happened. `StepJournal` remembers what the step may change,
before it changes it, and puts it back: samples forked in the step are dropped (their blocks
freed), every scheduled sequence gets its computed-token count, tokens, text and generator state
back, and its detokenizer is rebuilt by replaying the tokens it had. Blocks the scheduler added
stay with their sequence: they are freed when the engine then preempts it (recompute), which
leaves the KV pool consistent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from mili.engine.sequence import Request, RequestOutput, Sequence, SequenceStatus

log = logging.getLogger("mili.engine")


class StepJournal:
    """What one step may change in its sequences, recorded before it changes it (cheap: a list).

    A step has two halves (`engine.py`): its launch (scheduling, computed tokens, forks, the
    sampler's generators, a pending token per sampled sequence, finishing those that reach their
    length) and its completion (appending the sampled tokens). With overlap, the next step is
    launched between the two, so undoing a step whose completion failed goes in reverse order:
    its completion (`undo_completion`), the launch after it, then its own launch (`roll_back`).
    """

    def __init__(self) -> None:
        self.scheduled: list[tuple[Sequence, int, int, str, int]] | None = None  # seq, computed, tokens, text, pending
        self.forked: list[Sequence] = []  # parallel samples created in this step
        self.sampled: list[Sequence] = []  # sequences given a pending token at launch
        self.finished_at_launch: list[Sequence] = []  # reached max_tokens or the context with that token
        self.completing: list[tuple[Sequence, int, str, int]] | None = None  # seq, tokens, text, pending
        self.committed = False  # set once the step's tokens are appended: nothing left to undo
        self._generators: list[tuple[Sequence, object, object]] = []  # seq, generator, its state
        self._broken_detokenizers: list[Request] = []
        self._rolled_back = False

    def record_scheduled(self, seqs: Iterable[Sequence]) -> None:
        self.scheduled = [(s, s.num_computed_tokens, len(s.token_ids), s.text, s.num_pending_tokens) for s in seqs]

    def record_generators(self, seqs: Iterable[Sequence]) -> None:
        """Before sampling: seeded generators advance as they draw (and are created on first use)."""
        self._generators = [(s, s.generator, None if s.generator is None else s.generator.get_state())
                            for s in seqs if s.params.seed is not None]

    def record_completion(self, seqs: Iterable[Sequence]) -> None:
        """Before the sampled tokens are appended."""
        self.completing = [(s, len(s.token_ids), s.text, s.num_pending_tokens) for s in seqs]

    @property
    def requests(self) -> list[Request]:
        """The requests whose sequences ran in this step (empty if scheduling itself failed)."""
        return list({id(s.request): s.request for s, *_ in self.scheduled or ()}.values())

    def undo_completion(self, make_detokenizer: Callable[[Sequence], object]) -> None:
        """Take back the tokens its completion appended so far (once)."""
        for seq, num_tokens, text, pending in self.completing or ():
            seq.num_pending_tokens = pending
            if not _restore_tokens(seq, num_tokens, text, make_detokenizer):
                self._broken_detokenizers.append(seq.request)
        self.completing = []

    def roll_back(self, scheduler, make_detokenizer: Callable[[Sequence], object]) -> list[Request]:
        """Undo the step's changes (once); returns the requests whose detokenizer could not be rebuilt."""
        if self._rolled_back or self.committed:
            return []
        self._rolled_back = True
        completed = self.completing is not None
        self.undo_completion(make_detokenizer)
        broken = self._broken_detokenizers
        for child in self.forked:
            _discard(child, scheduler)
            child.request.seqs.remove(child)
        for seq in self.finished_at_launch:
            if seq not in self.forked:  # it runs again, from its prompt and the tokens it has
                seq.status, seq.finish_reason = SequenceStatus.WAITING, None
                scheduler.waiting.appendleft(seq)
        if completed:  # the forward ran: its K/V are sound; only the sampled tokens are dropped
            for seq in self.sampled:
                seq.num_pending_tokens = max(0, seq.num_pending_tokens - 1)
        else:  # nothing happened to these sequences since the launch
            for seq, computed, num_tokens, text, pending in self.scheduled or ():
                seq.num_computed_tokens, seq.num_pending_tokens = computed, pending
                if not _restore_tokens(seq, num_tokens, text, make_detokenizer):
                    broken.append(seq.request)
        for seq, generator, state in self._generators:
            seq.generator = generator
            if state is not None:
                generator.set_state(state)
        return broken


def _num_output_tokens(request: Request) -> int:
    return sum(s.num_output_tokens for s in request.seqs)


def _restore_tokens(seq: Sequence, num_tokens: int, text: str, make_detokenizer) -> bool:
    """Cut seq back to num_tokens tokens and text; False if its detokenizer could not be rebuilt."""
    if len(seq.token_ids) == num_tokens and seq.text == text:
        return True
    del seq.token_ids[num_tokens:]
    seq.text, seq.stop_reason = text, None
    try:
        seq.detokenizer = make_detokenizer(seq)
        for token in seq.output_token_ids:
            seq.detokenizer.add_token(token)
    except Exception:  # noqa: BLE001 - the detokenizer failing again tells whose fault it was
        return False
    return True


def _discard(seq: Sequence, scheduler) -> None:
    """Forget a sample forked in a failed step: it will be forked again."""
    if seq.status is SequenceStatus.RUNNING:
        scheduler.running.remove(seq)
        scheduler.block_manager.free(seq.seq_id)
    elif seq.status is SequenceStatus.WAITING:
        scheduler.waiting.remove(seq)
    seq.status = SequenceStatus.FINISHED


class FailureIsolation:
    """The engine's way out of a failed step: which requests are suspects, and stepping them alone."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.suspects: deque[Request] = deque()  # in arrival order; the first one is stepped alone

    def next_suspect(self) -> Request | None:
        requests = self.engine.requests
        while self.suspects and requests.get(self.suspects[0].request_id) is not self.suspects[0]:
            self.suspects.popleft()  # finished or aborted since
        return self.suspects[0] if self.suspects else None

    def recover(self, journal: StepJournal, err: Exception, broken: list[Request] = ()) -> list[RequestOutput]:
        """After a failed batched step: undo it (unless done: then `broken` is what that found),
        preempt the running batch, list the suspects."""
        engine = self.engine
        log.warning("an engine step failed (%s: %s); undoing it and stepping its requests one at a time",
                    type(err).__name__, err, exc_info=err)
        broken = [*broken, *journal.roll_back(engine.scheduler, engine._new_detokenizer)]
        suspects = {id(r) for r in journal.requests or engine.requests.values()}  # no batch yet: anyone
        self._preempt_running()
        outputs = [self._fail(request, err) for request in {id(r): r for r in broken}.values()]
        outputs += self._report_finished()
        self.suspects = deque(r for r in engine.requests.values() if id(r) in suspects)
        return outputs

    def _report_finished(self) -> list[RequestOutput]:
        """Requests the undone steps leave with every sequence finished (a stop seen in an earlier
        step, whose later token was dropped) are over: report them now."""
        engine = self.engine
        now = time.monotonic()
        return [engine._retire(request, now) for request in [r for r in engine.requests.values() if r.is_finished]]

    def step_alone(self, request: Request) -> list[RequestOutput]:
        """One step of one suspect while every other request waits (holding no blocks)."""
        scheduler = self.engine.scheduler
        queue = list(scheduler.waiting)
        scheduler.waiting = deque(s for s in queue if s.request is request)
        journal = StepJournal()
        tokens_before = _num_output_tokens(request)
        try:
            outputs = self.engine._step(journal)
        except Exception as err:  # noqa: BLE001 - its own failure: reported to it alone
            journal.roll_back(scheduler, self.engine._new_detokenizer)
            outputs = [self._fail(request, err)]
        else:
            if _num_output_tokens(request) > tokens_before or request.is_finished:  # it sampled: cleared
                self.suspects.popleft()
                self._preempt_running()
        finally:  # the others go back in their places
            others = [s for s in queue if s.request is not request]
            at = next((i for i, s in enumerate(queue) if s.request is request), 0)
            scheduler.waiting = deque(others[:at] + list(scheduler.waiting) + others[at:])
        return outputs

    def _preempt_running(self) -> None:
        scheduler = self.engine.scheduler
        for seq in reversed(list(scheduler.running)):  # the last first: the waiting queue keeps their order
            scheduler.preempt(seq)

    def _fail(self, request: Request, err: Exception) -> RequestOutput:
        log.error("request %s failed inside the engine: %s: %s", request.request_id, type(err).__name__, err)
        if self.suspects and self.suspects[0] is request:
            self.suspects.popleft()
        return self.engine._finish_request(request, "error", f"{type(err).__name__}: {err}")
