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
from collections import deque
from collections.abc import Callable, Iterable

from mili.engine.sequence import Request, RequestOutput, Sequence, SequenceStatus

log = logging.getLogger("mili.engine")


class StepJournal:
    """What one step may change in its sequences, recorded before it changes it (cheap: a list)."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[Sequence, int, int, str]] | None = None  # seq, computed, tokens, text
        self.forked: list[Sequence] = []  # parallel samples created in this step
        self.committed = False  # set once the step's tokens are appended: nothing left to undo
        self._generators: list[tuple[Sequence, object, object]] = []  # seq, generator, its state

    def record_scheduled(self, seqs: Iterable[Sequence]) -> None:
        self.scheduled = [(s, s.num_computed_tokens, len(s.token_ids), s.text) for s in seqs]

    def record_generators(self, seqs: Iterable[Sequence]) -> None:
        """Before sampling: seeded generators advance as they draw (and are created on first use)."""
        self._generators = [(s, s.generator, None if s.generator is None else s.generator.get_state())
                            for s in seqs if s.params.seed is not None]

    @property
    def requests(self) -> list[Request]:
        """The requests whose sequences ran in this step (empty if scheduling itself failed)."""
        return list({id(s.request): s.request for s, *_ in self.scheduled or ()}.values())

    def roll_back(self, scheduler, make_detokenizer: Callable[[Sequence], object]) -> list[Request]:
        """Undo the step's changes; returns the requests whose detokenizer could not be rebuilt."""
        if self.committed:
            return []
        for child in self.forked:
            _discard(child, scheduler)
            child.request.seqs.remove(child)
        broken = []
        for seq, computed, num_tokens, text in self.scheduled or ():
            seq.num_computed_tokens = computed
            if len(seq.token_ids) == num_tokens and seq.text == text:
                continue
            del seq.token_ids[num_tokens:]
            seq.text, seq.stop_reason = text, None
            try:
                seq.detokenizer = make_detokenizer(seq)
                for token in seq.output_token_ids:
                    seq.detokenizer.add_token(token)
            except Exception:  # noqa: BLE001 - the detokenizer failing again tells whose fault it was
                broken.append(seq.request)
        for seq, generator, state in self._generators:
            seq.generator = generator
            if state is not None:
                generator.set_state(state)
        return broken


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

    def recover(self, journal: StepJournal, err: Exception) -> list[RequestOutput]:
        """After a failed batched step: undo it, preempt the running batch, list the suspects."""
        engine = self.engine
        log.warning("an engine step failed (%s: %s); undoing it and stepping its requests one at a time",
                    type(err).__name__, err, exc_info=err)
        broken = journal.roll_back(engine.scheduler, engine._new_detokenizer)
        suspects = {id(r) for r in journal.requests or engine.requests.values()}  # no batch yet: anyone
        self._preempt_running()
        outputs = [self._fail(request, err) for request in {id(r): r for r in broken}.values()]
        self.suspects = deque(r for r in engine.requests.values() if id(r) in suspects)
        return outputs

    def step_alone(self, request: Request) -> list[RequestOutput]:
        """One step of one suspect while every other request waits (holding no blocks)."""
        scheduler = self.engine.scheduler
        queue = list(scheduler.waiting)
        scheduler.waiting = deque(s for s in queue if s.request is request)
        journal = StepJournal()
        try:
            outputs = self.engine._step(journal)
        except Exception as err:  # noqa: BLE001 - its own failure: reported to it alone
            journal.roll_back(scheduler, self.engine._new_detokenizer)
            outputs = [self._fail(request, err)]
        else:
            if any(o.request_id == request.request_id for o in outputs):  # it sampled: cleared
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
