"""The engine core: requests in, one step at a time, outputs out (the server drives it too).

    engine.add_request(request_id, prompt, params)   # joins the waiting queue
    outputs = engine.step()                           # schedule -> batch -> model -> sample -> finish
    engine.abort(request_id)                          # frees its KV blocks at once

`step` returns a `RequestOutput` for every request that made progress (a new token) or
finished, shaped by its `params.output_kind`; a background loop calls it while
`has_unfinished_requests()`.

One step is two halves. `_launch` schedules, updates the persistent batch, and queues the
forward and the sampler on the device without waiting for them. `_complete` waits for a
launched step's ids (the one host sync), appends them, and decides who finished. With overlap
(`EngineConfig.overlap`, the default) `step` launches step t+1 *before* completing step t, so the
host schedules and prepares the next step while the device computes the last one; a sequence
whose token is still on the device decodes it from there (its token is "pending"). Without
overlap, each step is completed right after its launch. The tokens are the same either way.
A sequence that reaches max_tokens or the context with its pending token is finished at launch
(it needs no further step); its last token is still appended, and its finish reason decided,
when its step completes.

A failure inside a step (the model, the sampler, a detokenizer raising) ends only the request it
belongs to, with `finish_reason="error"`; the others go on unchanged (`recovery.py` says how).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import torch

from mili.cache.block_manager import BlockManager
from mili.cache.errors import OutOfBlocksError
from mili.cache.radix_cache import RadixCache
from mili.engine.detokenizer import IncrementalDetokenizer
from mili.engine.batch import LaunchedStep
from mili.engine.input_batch import InputBatch
from mili.engine.model_runner import ModelRunner, append_tokens, build_batch
from mili.engine.recovery import FailureIsolation, StepJournal
from mili.engine.sampling_params import RequestOutputKind, SamplingParams
from mili.engine.scheduler import Scheduler
from mili.engine.sequence import Request, RequestOutput, Sequence, SequenceStatus
from mili.model.metadata import KVCache


@dataclass
class EngineConfig:
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: as many as memory allows (see kv_blocks_for)
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: max(8192, max_model_len) capped at 16384
    max_model_len: int | None = None  # None: the model's context, capped by the KV pool
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9  # CUDA: share of the card the engine may fill
    cpu_kv_cache_bytes: int = 1 << 30  # CPU: KV pool size when num_kv_blocks is None
    enforce_eager: bool = False  # CUDA: launch every kernel of a decode step instead of replaying a graph
    persistent_batch: bool = True  # False: build each step from Python lists (exercise 3.4's build_batch)
    overlap: bool = True  # schedule step t+1 while the device runs step t (needs the persistent batch)


class _NoText:
    """Stands in for a tokenizer when the engine runs on token ids only (random weights)."""

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return ""


class LLMEngine:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, *, record_trace: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or EngineConfig()
        model_config = model.config
        if config.block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {config.block_size}")
        if config.overlap and not config.persistent_batch:
            raise ValueError("overlap needs the persistent batch: pass overlap=False with persistent_batch=False")
        num_blocks = config.num_kv_blocks or kv_blocks_for(model, config)
        capacity = num_blocks * config.block_size
        max_model_len = config.max_model_len or min(model_config.max_position_embeddings, capacity)
        if max_model_len > capacity:
            raise ValueError(f"max_model_len={max_model_len} needs {math.ceil(max_model_len / config.block_size)} KV "
                             f"blocks of {config.block_size} tokens but the pool has {num_blocks}: raise num_kv_blocks "
                             "or lower max_model_len")
        if max_model_len > model_config.max_position_embeddings:
            raise ValueError(f"max_model_len={max_model_len} exceeds the model's context "
                             f"({model_config.max_position_embeddings} positions)")
        self.max_model_len = max_model_len
        # a prefill step launches every kernel eagerly: fewer, larger chunks spend less host time per token
        budget = config.max_num_batched_tokens or min(max(8192, max_model_len), 16384)
        prefix_cache = RadixCache(config.block_size) if config.enable_prefix_caching else None
        self.block_manager = BlockManager(num_blocks, config.block_size, prefix_cache)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=budget)
        kv_cache = KVCache.for_config(model_config, num_blocks, config.block_size, dtype=model.dtype, device=model.device)
        self.runner = ModelRunner(model, kv_cache)
        self.input_batch = InputBatch(max_num_seqs=config.max_num_seqs,
                                      max_blocks_per_seq=math.ceil(max_model_len / config.block_size),
                                      block_size=config.block_size, vocab_size=model_config.vocab_size,
                                      device=model.device) if config.persistent_batch else None
        self.in_flight: LaunchedStep | None = None  # launched, its ids not read yet (overlap)
        if not config.enforce_eager:
            self.runner.capture_cuda_graphs(max_num_seqs=config.max_num_seqs, max_model_len=max_model_len)
        eos = tokenizer.eos_token_ids if tokenizer is not None else model_config.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.requests: dict[str, Request] = {}
        self.isolation = FailureIsolation(self)
        self._seq_ids = itertools.count()
        self.trace: list[tuple] | None = [] if record_trace else None  # (step, request_id, index, kind, tokens)
        self.num_steps = self.num_generated_tokens = self.num_prompt_tokens_computed = 0

    # ------------------------------------------------------------------ requests

    def add_request(self, request_id: str, prompt: str | dict | list[int], params: SamplingParams | None = None) -> None:
        """Queue a request; a bad prompt raises ValueError here and leaves the others untouched."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        if not token_ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"request {request_id!r}: the prompt has {len(token_ids)} tokens but max_model_len is "
                             f"{self.max_model_len}; at most {self.max_model_len - 1} leave room for one new token")
        vocab = self.model.config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise ValueError(f"request {request_id!r}: token ids must be in [0, {vocab}), got {min(token_ids)}..{max(token_ids)}")
        request = Request(request_id, text, token_ids, params)
        self.requests[request_id] = request
        self.scheduler.add(self._new_sequence(request, 0, token_ids))

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" not in prompt:
                raise ValueError("a dict prompt needs 'prompt_token_ids'")
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass {'prompt_token_ids': [...]} instead of text")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise TypeError(f"a prompt is a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def _new_sequence(self, request: Request, index: int, token_ids: list[int]) -> Sequence:
        seq = Sequence(next(self._seq_ids), request, index, token_ids)
        seq.detokenizer = self._new_detokenizer(seq)
        request.seqs.append(seq)
        return seq

    def _new_detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        p = seq.params
        return IncrementalDetokenizer(
            self.tokenizer or _NoText(), seq.request.prompt_token_ids, stop=p.stop_strings,
            stop_token_ids=p.stop_token_ids, eos_token_ids=self.eos_token_ids, ignore_eos=p.ignore_eos,
            skip_special_tokens=p.skip_special_tokens)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now: its blocks go back at once. Unknown or finished ids are ignored."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        return self._finish_request(request, "abort")

    def _finish_request(self, request: Request, reason: str, error: str | None = None) -> RequestOutput:
        """End every sequence of a request now (samples not forked yet end empty); blocks go back."""
        for seq in request.seqs:
            if seq.num_pending_tokens:  # a token still on the device is dropped
                seq.num_pending_tokens = 0
                seq.finish_reason = reason
            if not seq.is_finished:
                if error is not None:
                    seq.num_computed_tokens = 0  # what failed may be in its K/V: keep it out of the prefix cache
                self.scheduler.finish(seq, reason)
        while len(request.seqs) < request.params.n:
            seq = Sequence(next(self._seq_ids), request, len(request.seqs))
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
            request.seqs.append(seq)
        request.error = error
        return self._retire(request, time.monotonic())

    def _retire(self, request: Request, now: float) -> RequestOutput:
        """A request whose sequences are all finished leaves the engine; its last output."""
        request.finish_time = now
        self.requests.pop(request.request_id, None)
        return RequestOutput.from_request(request, request.params.output_kind)

    def reset_prefix_cache(self) -> int:
        """Drop every cached prefix block that no running sequence holds; returns how many."""
        cache = self.block_manager.prefix_cache
        return len(cache.clear()) if cache is not None else 0

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self.requests)  # a request may wait only for its last token

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Run one step; a failure inside it is contained (see the module docstring), never raised."""
        suspect = self.isolation.next_suspect()
        if suspect is not None:
            return self._drain() + self.isolation.step_alone(suspect)
        journal = StepJournal()
        try:
            launched = self._launch(journal)
        except Exception as err:  # noqa: BLE001 - contained here; BaseException (Ctrl+C) still propagates
            broken = journal.roll_back(self.scheduler, self._new_detokenizer)  # before the step in flight completes
            return self._drain() + self.isolation.recover(journal, err, broken)
        previous, self.in_flight = self.in_flight, launched
        outputs = self._complete_contained(previous, also_undo=launched) if previous is not None else []
        if launched is not None and not self.config.overlap:
            outputs += self._drain()
        return outputs

    def _step(self, journal: StepJournal) -> list[RequestOutput]:
        """One step launched and completed at once, with no step in flight (failure isolation)."""
        launched = self._launch(journal)
        return self._complete(launched) if launched is not None else []

    def _drain(self) -> list[RequestOutput]:
        """Complete the step in flight, if any."""
        previous, self.in_flight = self.in_flight, None
        return self._complete_contained(previous) if previous is not None else []

    def _complete_contained(self, launched: LaunchedStep, also_undo: LaunchedStep | None = None) -> list[RequestOutput]:
        try:
            return self._complete(launched)
        except Exception as err:  # noqa: BLE001 - contained; undone in reverse order (recovery.py)
            launched.journal.undo_completion(self._new_detokenizer)
            if also_undo is not None:
                self.in_flight = None
                also_undo.journal.roll_back(self.scheduler, self._new_detokenizer)
            return self.isolation.recover(launched.journal, err)

    def _launch(self, journal: StepJournal) -> LaunchedStep | None:
        """Schedule a step and queue its forward and sampler on the device; None if nothing ran."""
        scheduled = self.scheduler.schedule()
        journal.record_scheduled(item.seq for item in scheduled.scheduled)
        self.num_steps += 1
        if self.trace is not None:
            self._record(scheduled)
        if scheduled.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                raise RuntimeError("the head of the waiting queue cannot be allocated with an empty batch: "
                                   "the KV pool is too small for it")
            return None
        batch = self.input_batch
        if batch is not None:
            batch.sync(scheduled.scheduled, self.block_manager)
            model_input = self.runner.prepare(scheduled.scheduled, batch, self.in_flight)
        else:
            model_input = build_batch(scheduled.scheduled, self.block_manager, self.runner.device)
        logits = self.runner.run(model_input)
        for item in scheduled.scheduled:
            self._computed(item.seq, item.num_tokens)
        seqs, rows = list(model_input.sampled_seqs), list(range(len(model_input.sampled_seqs)))
        for row, seq in enumerate(model_input.sampled_seqs):
            for child in self._fork_parallel_samples(seq, journal.forked):
                seqs.append(child)
                rows.append(row)
        if not seqs:
            return None  # only prompt chunks ran: nothing to sample
        if len(rows) > logits.shape[0]:
            logits = logits[torch.tensor(rows, device=logits.device)]
        journal.record_generators(seqs)
        launched = self.runner.sample(seqs, logits, batch)
        launched.journal, journal.sampled = journal, seqs
        for seq in seqs:
            seq.num_pending_tokens += 1
            if seq.reached_length_limit(self.max_model_len):
                journal.finished_at_launch.append(seq)
                self.scheduler.finish(seq, "length")  # no step after this one; its token still comes
        return launched

    def _computed(self, seq: Sequence, num_tokens: int) -> None:
        """The step computes num_tokens more of seq's K/V; prompt blocks it completes are shared at once."""
        before = seq.num_computed_tokens
        seq.num_computed_tokens += num_tokens
        self.num_prompt_tokens_computed += num_tokens if num_tokens > 1 else 0
        block_size = self.config.block_size
        full = min(seq.num_computed_tokens, seq.num_prompt_tokens) // block_size * block_size
        if self.config.enable_prefix_caching and full > before // block_size * block_size:
            # the device writes these blocks before any later step reads them (one stream)
            self.block_manager.cache_prefix(seq.seq_id, seq.token_ids[:full])

    def _complete(self, launched: LaunchedStep) -> list[RequestOutput]:
        """Read a launched step's ids (the host sync), append them, finish who is done, report."""
        token_ids = launched.result()
        seqs, tokens = [], []
        for seq, token in zip(launched.seqs, token_ids):
            if seq.num_pending_tokens:  # else aborted or failed since: its token was dropped
                seqs.append(seq)
                tokens.append(token)
        launched.journal.record_completion(seqs)
        for seq in seqs:
            seq.num_pending_tokens -= 1
        finished = append_tokens(seqs, tokens, self.max_model_len)
        launched.journal.committed = True
        self.num_generated_tokens += len(tokens)
        now = time.monotonic()
        for seq in seqs:
            if seq.request.first_token_time is None:
                seq.request.first_token_time = now
        for seq, reason in finished:
            if seq.is_finished:  # finished at launch by length: its last token tells stop from length
                seq.finish_reason = reason
            else:
                seq.num_pending_tokens = 0  # a step launched since sampled past its end: dropped
                self.scheduler.finish(seq, reason)
        outputs = []
        for request in {id(s.request): s.request for s in seqs}.values():
            kind = request.params.output_kind
            if request.is_finished and request.request_id in self.requests:
                outputs.append(self._retire(request, now))
            elif kind is not RequestOutputKind.FINAL_ONLY and not request.is_finished:
                outputs.append(RequestOutput.from_request(request, kind))
        return outputs

    def _fork_parallel_samples(self, parent: Sequence, created: list[Sequence]) -> list[Sequence]:
        """When a request with n > 1 finished its prompt, its other samples share the prompt's blocks.
        Returns those that run now; every new sample is also appended to `created`."""
        request = parent.request
        children = []
        while len(request.seqs) < request.params.n:
            child = self._new_sequence(request, len(request.seqs), parent.token_ids)
            created.append(child)
            running_full = len(self.scheduler.running) >= self.scheduler.max_num_seqs
            try:
                if running_full:
                    raise OutOfBlocksError("no room in the running batch")
                self.runner.copy_blocks(self.block_manager.fork(parent.seq_id, child.seq_id))
            except OutOfBlocksError:
                self.scheduler.waiting.appendleft(child)  # it will prefill on its own (prefix cache helps)
                continue
            child.num_computed_tokens = parent.num_computed_tokens
            child.status = SequenceStatus.RUNNING
            self.scheduler.running.append(child)
            if self.input_batch is not None:
                self.input_batch.ensure_row(child, self.block_manager)
            children.append(child)
        return children

    def _record(self, scheduled) -> None:
        for item in scheduled.scheduled:
            seq = item.seq
            kind = "prefill" if seq.num_computed_tokens + item.num_tokens < seq.num_tokens or item.num_tokens > 1 else "decode"
            self.trace.append((self.num_steps, seq.request.request_id, seq.index, kind, item.num_tokens))
        for seq in scheduled.preempted:
            self.trace.append((self.num_steps, seq.request.request_id, seq.index, "preempted", 0))

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict:
        cache = self.block_manager.stats
        running_requests = {id(s.request) for s in self.scheduler.running}
        return {
            "steps": self.num_steps,
            "generated_tokens": self.num_generated_tokens,
            "prompt_tokens_computed": self.num_prompt_tokens_computed,
            "preemptions": self.scheduler.num_preemptions,
            "running": len(self.scheduler.running),  # sequences (a request with n > 1 has several)
            "waiting": len(self.scheduler.waiting),
            "running_requests": len(running_requests),
            "waiting_requests": len({id(s.request) for s in self.scheduler.waiting} - running_requests),
            "prefix_cache_hit_rate": cache.hit_rate,
            "prefix_cache_hit_tokens": cache.prefix_hit_tokens,
            "prefix_cache_query_tokens": cache.prefix_queries_tokens,
            "kv_cache_usage": cache.usage,
            "kv_blocks": cache.num_blocks,
            "kv_blocks_free": self.block_manager.num_free_blocks,
            "kv_blocks_cached": cache.cached_blocks,
            "block_size": self.config.block_size,
            "max_model_len": self.max_model_len,
        }


def kv_blocks_for(model, config: EngineConfig) -> int:
    """How many KV blocks fit: on CUDA a share of free memory, elsewhere `cpu_kv_cache_bytes`."""
    block_bytes = KVCache.bytes_per_token(model.config, model.dtype) * config.block_size
    device = model.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        mc = model.config
        tokens = config.max_num_batched_tokens or 16384
        # activations of one step (MLP and qkv in flight, a few copies) plus the sampler's [seqs, vocab] work
        reserve = 4 * tokens * (2 * mc.intermediate_size + 4 * mc.hidden_size) * model.dtype.itemsize
        reserve += 8 * config.max_num_seqs * mc.vocab_size * 4 + (512 << 20)
        budget = free - (1.0 - config.gpu_memory_utilization) * total - reserve
    else:
        budget = config.cpu_kv_cache_bytes
    blocks = int(budget // block_bytes)
    if blocks < 1:
        raise ValueError("no memory left for the KV cache: lower max_num_batched_tokens or pass num_kv_blocks")
    return blocks
