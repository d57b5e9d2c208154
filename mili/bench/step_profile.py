"""Where a step's time goes: host time against device time, step by step (`--profile`).

A step is host-bound when the host takes longer to schedule, prepare and launch it than the
device takes to run it: the device then waits. `StepProfile` wraps one engine's methods (the
engine itself carries no timing code) and records, for every `engine.step()` call:

- host: the call's wall time minus the time it spent waiting for sampled ids (the host sync);
- device: the span between CUDA events recorded before the forward and after the sampler of the
  step it launched (with a CUDA graph, one replay: the device's busy time; eagerly, it also
  counts any gap in which the device waited for the host to launch the next kernel);
- the batch: sequences and tokens, and whether it was a decode step.

    profile = StepProfile(llm.engine)
    llm.generate(...)
    profile.summary()  # medians per kind of step, host vs device

`host_phase_times` takes the model out (its forward becomes a stub) and times the host's phases
of a decode step alone: schedule, prepare, sample, complete.
"""

from __future__ import annotations

import statistics
import time

import torch

from mili.engine.sampling_params import SamplingParams


class StepProfile:
    def __init__(self, engine):
        self.records: list[dict] = []
        self._cuda = engine.runner.device.type == "cuda"
        self._wait = 0.0
        self._current: dict | None = None
        wrap_method(engine, "step", self._timed_step)
        wrap_method(engine.runner, "run", self._timed_run)
        wrap_method(engine.runner, "sample", self._timed_sample)

    def _timed_step(self, inner, *args, **kwargs):
        self._wait, self._current = 0.0, {"launched": False}
        start = time.perf_counter()
        outputs = inner(*args, **kwargs)
        wall = time.perf_counter() - start
        record = self._current
        record.update(wall_s=wall, wait_s=self._wait, host_s=wall - self._wait)
        self.records.append(record)
        return outputs

    def _timed_run(self, inner, model_input):
        md = model_input.attn_metadata
        if self._current is not None:
            self._current.update(batch=int(md.context_lens.numel()), tokens=int(model_input.input_ids.numel()),
                                 decode=not md.is_prefill, launched=True)
            if self._cuda:
                self._current["start"] = _event()
        return inner(model_input)

    def _timed_sample(self, inner, *args, **kwargs):
        launched = inner(*args, **kwargs)
        record = self._current
        if record is not None and self._cuda and "start" in record:
            record["end"] = _event()
        result = launched.result

        def timed_result():
            start = time.perf_counter()
            ids = result()
            self._wait += time.perf_counter() - start
            return ids

        launched.result = timed_result
        return launched

    def summary(self) -> dict:
        """Per kind of step (decode at the largest batch, decode at batch 1, prefill): medians in ms."""
        if self._cuda:
            torch.cuda.synchronize()
        for record in self.records:
            start, end = record.pop("start", None), record.pop("end", None)
            if start is not None and end is not None:
                record["device_s"] = start.elapsed_time(end) / 1e3
        launched = [r for r in self.records if r.get("launched")]
        decodes = [r for r in launched if r["decode"]]
        groups = {"prefill_or_mixed": [r for r in launched if not r["decode"]]}
        if decodes:
            largest = max(r["batch"] for r in decodes)
            groups[f"decode_batch_{largest}"] = [r for r in decodes if r["batch"] == largest]
            groups["decode_batch_1"] = [r for r in decodes if r["batch"] == 1]
        summary = {"steps": len(self.records),
                   "per_step": [[r["batch"], r["tokens"], round(1e3 * r["host_s"], 3),
                                 round(1e3 * r["device_s"], 3) if "device_s" in r else None, round(1e3 * r["wall_s"], 3)]
                                for r in launched],
                   "per_step_columns": ["batch", "tokens", "host_ms", "device_ms", "wall_ms"]}
        for name, records in groups.items():
            if not records:
                continue
            row = {"steps": len(records), "host_ms": _median_ms(records, "host_s"),
                   "wall_ms": _median_ms(records, "wall_s"), "wait_ms": _median_ms(records, "wait_s")}
            if all("device_s" in r for r in records):
                row["device_ms"] = _median_ms(records, "device_s")
                row["host_bound"] = row["host_ms"] > row["device_ms"]
            summary[name] = row
        return summary


def _event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _median_ms(records: list[dict], key: str) -> float:
    return 1e3 * statistics.median(r[key] for r in records)


def print_summary(summary: dict, stream) -> None:
    print(f"{'steps':<22} {'count':>6} {'host ms':>9} {'device ms':>10} {'wall ms':>9}  host-bound?", file=stream)
    for name, row in summary.items():
        if isinstance(row, dict) and "host_ms" in row:
            device = f"{row['device_ms']:>10.3f}" if "device_ms" in row else f"{'-':>10}"
            bound = {True: "yes", False: "no"}.get(row.get("host_bound"), "-")
            print(f"{name:<22} {row['steps']:>6} {row['host_ms']:>9.3f} {device} {row['wall_ms']:>9.3f}  {bound}",
                  file=stream)


HOST_PHASES = ("schedule", "prepare", "sample", "complete", "step")


def host_phase_times(llm, batch: int, steps: int, prompt_len: int) -> dict:
    """The host's time per decode step, phase by phase, with the model taken out.

    Replaces llm's forward with a stub that returns fixed logits (llm stays so: use a fresh one),
    runs `batch` greedy requests of `prompt_len` tokens for `steps` decode steps, and returns, for
    each of HOST_PHASES, the median microseconds per call and the number of calls:
        schedule   the scheduler picks the step's sequences
        prepare    the flat batch from the persistent batch (ModelRunner.prepare)
        sample     the sampler's inputs and its launch (ModelRunner.sample)
        complete   reading the ids, appending them, reporting (the previous step's, under overlap)
        step       the whole engine.step(), these and the bookkeeping between them
    On a GPU the stub also skips the forward's own launches (the graph's input copies, the
    replay, the LM head): the figures are the engine's Python without them.
    """
    engine, runner = llm.engine, llm.engine.runner
    logits = torch.zeros(batch, runner.vocab_size, device=runner.device)
    logits[:, 7] = 1.0  # every step samples token 7

    def stub_forward(model_input):
        return logits[:len(model_input.logits_indices)]

    runner.run = stub_forward
    calls: dict[str, list[int]] = {}
    for owner, name, phase in ((engine.scheduler, "schedule", "schedule"), (runner, "prepare", "prepare"),
                               (runner, "sample", "sample"), (engine, "_complete", "complete"),
                               (engine, "step", "step")):
        time_calls(owner, name, calls, phase)
    prompts = [{"prompt_token_ids": [3 + (i + j) % 200 for j in range(prompt_len)]} for i in range(batch)]
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    for timings in calls.values():
        timings.clear()
    llm.generate(prompts, params, use_tqdm=False)
    return {phase: {"us": round(statistics.median(calls[phase]) / 1e3, 1), "calls": len(calls[phase])}
            for phase in HOST_PHASES}


def time_calls(owner, name: str, calls: dict[str, list[int]], phase: str) -> None:
    """Wrap owner.name (`wrap_method`) so that each call's wall time, in ns, goes to calls[phase]."""
    timings = calls.setdefault(phase, [])

    def timed(inner, *args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            timings.append(time.perf_counter_ns() - start)

    wrap_method(owner, name, timed)


def wrap_method(owner, name: str, wrapper) -> None:
    """Replace owner.name by a call of wrapper(inner, *args, **kwargs) on this instance only
    (`delattr(owner, name)` restores the class's method)."""
    inner = getattr(owner, name)
    setattr(owner, name, lambda *args, **kwargs: wrapper(inner, *args, **kwargs))
