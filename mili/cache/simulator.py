"""Replay a request trace through contiguous and paged KV allocation (chapter 05, study 5.4).

A discrete-time model of a serving engine. Requests arrive (`Request.arrival`, in decode steps),
wait in a FIFO queue, are admitted when the allocator finds room for them, generate one token per
step and leave when done. What an allocator must hold for a running request:

- contiguous ("first-fit", "best-fit"): one region of `max_len` slots (the prompt plus the most
  tokens it may generate: the real output length is unknown at admission), placed by the
  student's `ContiguousAllocator`. A request that fits in no single hole waits.
- "paged": ceil(length / block_size) blocks, one more each time the last one fills; when none is
  free, the most recently admitted request is preempted (its blocks freed, it is recomputed later).

Each step, every slot of the buffer is one of: a *token* (K/V of a token that exists), *reserved*
(held for a token the request will generate later), *internal* fragmentation (held but never to
be used: slots past the request's final length, or the unused tail of a paged block), *external*
fragmentation (free, and in total enough for the waiting request, but in holes too small for it),
or free. `SimulationReport` averages these over the steps where something runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mili.cache.fragmentation import ContiguousAllocator

SCHEMES = ("first-fit", "best-fit", "paged")


@dataclass(frozen=True)
class Request:
    arrival: int  # the step it arrives at
    prompt_len: int
    output_len: int  # tokens it will generate (the allocator does not know this)
    max_len: int  # prompt_len + max_tokens: what a contiguous allocator must reserve

    @property
    def final_len(self) -> int:
        return self.prompt_len + self.output_len


def make_trace(num_requests: int = 300, *, seed: int = 0, arrivals_per_step: float = 0.2,
               mean_prompt: float = 161.0, mean_output: float = 338.0, sigma: float = 1.0,
               max_tokens_choices: tuple[int, ...] = (256, 512, 1024, 1536)) -> list[Request]:
    """A ShareGPT-like trace: log-normal prompt and output lengths with the means the
    PagedAttention paper reports for ShareGPT (161 and 338 tokens), Poisson arrivals, and a
    `max_tokens` per request drawn from `max_tokens_choices` (as clients set it); the output stops
    at max_tokens, and a contiguous allocator must reserve prompt_len + max_tokens slots."""
    rng = np.random.default_rng(seed)

    def lognormal(mean: float) -> np.ndarray:
        return rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, num_requests)

    prompts = np.clip(lognormal(mean_prompt), 4, 512).astype(int)
    max_tokens = rng.choice(np.asarray(max_tokens_choices), num_requests)
    outputs = np.clip(lognormal(mean_output), 1, max_tokens).astype(int)
    arrivals = np.floor(np.cumsum(rng.exponential(1.0 / arrivals_per_step, num_requests))).astype(int)
    return [Request(int(a), int(p), int(o), int(p + m)) for a, p, o, m in zip(arrivals, prompts, outputs, max_tokens)]


@dataclass
class SimulationReport:
    scheme: str
    capacity: int  # token slots in the KV buffer
    steps: int = 0  # until the last request finished
    busy_steps: int = 0  # steps with at least one running request
    finished: int = 0
    preemptions: int = 0
    peak_running: int = 0
    running_sum: int = 0
    slot_sums: dict = field(default_factory=lambda: dict.fromkeys(("token", "reserved", "internal", "external", "free"), 0))

    @property
    def mean_running(self) -> float:
        """The average batch size: how many requests fit at once."""
        return self.running_sum / max(self.busy_steps, 1)

    def share(self, kind: str) -> float:
        """Time-averaged fraction of the buffer in `kind` (token/reserved/internal/external/free)."""
        return self.slot_sums[kind] / max(self.busy_steps * self.capacity, 1)

    @property
    def waste_fraction(self) -> float:
        """Wasted / (used + wasted) KV memory: reserved + internal + external over all but free."""
        waste = sum(self.slot_sums[k] for k in ("reserved", "internal", "external"))
        return waste / max(waste + self.slot_sums["token"], 1)

    @property
    def throughput(self) -> float:
        """Finished requests per step."""
        return self.finished / max(self.steps, 1)

    def row(self) -> dict:
        return {"scheme": self.scheme, "waste_%": 100 * self.waste_fraction,
                **{f"{k}_%": 100 * self.share(k) for k in self.slot_sums}, "mean_running": self.mean_running,
                "peak_running": self.peak_running, "steps": self.steps, "finished": self.finished,
                "preemptions": self.preemptions}


@dataclass(eq=False)
class _Running:
    request: Request
    length: int  # tokens with K/V now
    offset: int = -1  # contiguous: where its region starts
    blocks: int = 0  # paged: blocks held


def simulate(trace: list[Request], capacity: int, scheme: str, *, block_size: int = 16,
             max_steps: int = 1_000_000) -> SimulationReport:
    """Replay `trace` through a KV buffer of `capacity` token slots with `scheme` (see SCHEMES)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if any(r.max_len > capacity for r in trace):
        raise ValueError(f"capacity={capacity} is smaller than a request's max_len: it could never run")
    paged = scheme == "paged"
    if paged and any(-(-r.final_len // block_size) > capacity // block_size for r in trace):
        raise ValueError(f"capacity={capacity} holds fewer blocks of {block_size} than a request needs")
    allocator = None if paged else ContiguousAllocator(capacity, scheme.split("-")[0])
    free_blocks = capacity // block_size
    report = SimulationReport(scheme, capacity)
    pending = deque(sorted(trace, key=lambda r: r.arrival))
    waiting: deque[Request] = deque()
    running: list[_Running] = []

    def admit(request: Request) -> bool:
        nonlocal free_blocks
        if paged:
            need = -(-request.prompt_len // block_size)
            if need > free_blocks:
                return False
            free_blocks -= need
            running.append(_Running(request, request.prompt_len, blocks=need))
            return True
        offset = allocator.allocate(request.max_len)
        if offset is None:
            return False
        running.append(_Running(request, request.prompt_len, offset=offset))
        return True

    def release(r: _Running) -> None:
        nonlocal free_blocks
        running.remove(r)
        if paged:
            free_blocks += r.blocks
        else:
            allocator.free(r.offset)

    step = 0
    while (pending or waiting or running) and step < max_steps:
        if not running and not waiting and pending[0].arrival > step:
            step = pending[0].arrival  # idle: jump to the next arrival
        while pending and pending[0].arrival <= step:
            waiting.append(pending.popleft())
        while waiting and admit(waiting[0]):
            waiting.popleft()
        _measure(report, running, waiting, allocator, block_size)
        for r in running[:]:
            if r not in running:
                continue  # preempted earlier in this step
            if paged and r.length % block_size == 0:
                while free_blocks == 0 and running[-1] is not r:
                    _preempt(running[-1], release, waiting, report)
                if free_blocks == 0:
                    _preempt(r, release, waiting, report)
                    continue
                free_blocks -= 1
                r.blocks += 1
            r.length += 1
            if r.length == r.request.final_len:
                release(r)
                report.finished += 1
        step += 1
    report.steps = step
    return report


def _preempt(victim: _Running, release, waiting: deque, report: SimulationReport) -> None:
    release(victim)
    waiting.appendleft(victim.request)  # recomputed from scratch when admitted again
    report.preemptions += 1


def _measure(report: SimulationReport, running: list[_Running], waiting: deque,
             allocator: ContiguousAllocator | None, block_size: int) -> None:
    if not running:
        return
    sums = report.slot_sums
    report.busy_steps += 1
    report.running_sum += len(running)
    report.peak_running = max(report.peak_running, len(running))
    token = sum(r.length for r in running)
    if allocator is None:
        held = sum(r.blocks for r in running) * block_size
        sums["internal"] += held - token
        free, external = report.capacity - held, 0  # any free block serves any request
    else:
        sums["reserved"] += sum(r.request.final_len - r.length for r in running)
        sums["internal"] += sum(r.request.max_len - r.request.final_len for r in running)
        free = allocator.free_space
        external = free if waiting and free >= waiting[0].max_len else 0
    sums["token"] += token
    sums["external"] += external
    sums["free"] += free - external
