"""The engine core: requests in, one step at a time, outputs out (the server drives it too).

    engine.add_request(request_id, prompt, params)   # joins the waiting queue
    outputs = engine.step()                           # schedule -> batch -> model -> sample -> finish
    engine.abort(request_id)                          # frees its KV blocks at once

`step` returns a `RequestOutput` for every request that made progress (a new token) or
finished; a background loop calls it while `has_unfinished_requests()`.

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
from mili.engine.model_runner import ModelRunner, append_tokens, build_batch
from mili.engine.recovery import FailureIsolation, StepJournal
from mili.engine.sampling_params import SamplingParams
from mili.engine.scheduler import Scheduler
from mili.engine.sequence import Request, RequestOutput, Sequence, SequenceStatus
from mili.model.metadata import KVCache


@dataclass
class EngineConfig:
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: as many as memory allows (see kv_blocks_for)
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None  # None: max(2048, max_model_len) capped at 16384
    max_model_len: int | None = None  # None: the model's context, capped by the KV pool
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9  # CUDA: share of the card the engine may fill
    cpu_kv_cache_bytes: int = 1 << 30  # CPU: KV pool size when num_kv_blocks is None
    enforce_eager: bool = False  # CUDA: launch every kernel of a decode step instead of replaying a graph


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
        budget = config.max_num_batched_tokens or min(max(2048, max_model_len), 16384)
        prefix_cache = RadixCache(config.block_size) if config.enable_prefix_caching else None
        self.block_manager = BlockManager(num_blocks, config.block_size, prefix_cache)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=budget)
        kv_cache = KVCache.for_config(model_config, num_blocks, config.block_size, dtype=model.dtype, device=model.device)
        self.runner = ModelRunner(model, kv_cache)
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
            if not seq.is_finished:
                if error is not None:
                    seq.num_computed_tokens = 0  # what failed may be in its K/V: keep it out of the prefix cache
                self.scheduler.finish(seq, reason)
        while len(request.seqs) < request.params.n:
            seq = Sequence(next(self._seq_ids), request, len(request.seqs))
            seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
            request.seqs.append(seq)
        request.error = error
        request.finish_time = time.monotonic()
        self.requests.pop(request.request_id, None)
        return RequestOutput.from_request(request)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Run one step; a failure inside it is contained (see the module docstring), never raised."""
        suspect = self.isolation.next_suspect()
        if suspect is not None:
            return self.isolation.step_alone(suspect)
        journal = StepJournal()
        try:
            return self._step(journal)
        except Exception as err:  # noqa: BLE001 - contained here; BaseException (Ctrl+C) still propagates
            return self.isolation.recover(journal, err)

    def _step(self, journal: StepJournal) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        journal.record_scheduled(item.seq for item in scheduled.scheduled)
        self.num_steps += 1
        if self.trace is not None:
            self._record(scheduled)
        if scheduled.is_empty:
            if self.scheduler.waiting and not self.scheduler.running:
                raise RuntimeError("the head of the waiting queue cannot be allocated with an empty batch: "
                                   "the KV pool is too small for it")
            return []
        batch = build_batch(scheduled.scheduled, self.block_manager, self.runner.device)
        logits = self.runner.run(batch)
        for item in scheduled.scheduled:
            item.seq.num_computed_tokens += item.num_tokens
            self.num_prompt_tokens_computed += item.num_tokens if item.num_tokens > 1 else 0
        seqs, rows = list(batch.sampled_seqs), list(range(len(batch.sampled_seqs)))
        for row, seq in enumerate(batch.sampled_seqs):
            for child in self._fork_parallel_samples(seq, journal.forked):
                seqs.append(child)
                rows.append(row)
        if not seqs:
            return []  # only prompt chunks ran: nothing to sample yet
        if len(rows) > logits.shape[0]:
            logits = logits[torch.tensor(rows, device=logits.device)]
        journal.record_generators(seqs)
        tokens = self.runner.sample(seqs, logits)
        finished = append_tokens(seqs, tokens, self.max_model_len)
        journal.committed = True
        self.num_generated_tokens += len(tokens)
        now = time.monotonic()
        for seq in seqs:
            if seq.request.first_token_time is None:
                seq.request.first_token_time = now
        for seq, reason in finished:
            self.scheduler.finish(seq, reason)
        outputs = []
        for request in {id(s.request): s.request for s in seqs}.values():
            if request.is_finished:
                request.finish_time = now
                self.requests.pop(request.request_id, None)
            outputs.append(RequestOutput.from_request(request))
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
