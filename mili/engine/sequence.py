"""A request's life as data: `Sequence` (one completion being generated), `Request` (a prompt
and its n sequences) and the outputs handed back to users, `RequestOutput` / `CompletionOutput`.

A sequence's tokens are its prompt followed by what it generated. `num_computed_tokens` of them
have their K/V in the paged cache; the next step computes tokens from there on (a chunk of the
prompt, or the one token sampled last). Preemption by recompute sets it back to 0 and keeps the
generated tokens: on resume, prompt + generated tokens are prefilled again as one prompt.

A token can be *pending*: sampled on the device by a step whose ids the host has not read yet
(with overlap, the next step is scheduled before the last one's ids arrive). It counts in
`num_tokens` (so the scheduler gives the sequence its decode) but is not in `token_ids` until the
engine reads it; the step that computes it takes its id from the device.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from mili.engine.sampling_params import RequestOutputKind, SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, seq_id: int, request: Request, index: int = 0, token_ids: list[int] | None = None):
        self.seq_id = seq_id
        self.request = request
        self.index = index  # which of the request's n completions
        self.token_ids = list(request.prompt_token_ids if token_ids is None else token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
        self.stop_reason: str | int | None = None
        self.generator: torch.Generator | None = None  # created on the device when params.seed is set
        self.detokenizer = None  # an IncrementalDetokenizer, when the engine has a tokenizer
        self.text = ""
        self.num_preemptions = 0
        self.num_pending_tokens = 0  # sampled on the device, not read back yet (0 or 1)
        self.num_emitted_tokens = 0  # output tokens already handed out in DELTA outputs
        self.num_emitted_chars = 0  # characters of text already handed out in DELTA outputs

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    @property
    def num_tokens(self) -> int:
        """Prompt + generated tokens, a pending one included."""
        return len(self.token_ids) + self.num_pending_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def reached_length_limit(self, max_model_len: int) -> bool:
        """Its tokens, a pending one included, reach max_tokens or the context: no step after this."""
        max_tokens = self.params.max_tokens
        return ((max_tokens is not None and self.num_tokens - self.num_prompt_tokens >= max_tokens)
                or self.num_tokens >= max_model_len)

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose K/V are not in the cache yet: the rest of the prompt, or the last sample."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, {self.status.value}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, out={self.num_output_tokens})")


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    seqs: list[Sequence] = field(default_factory=list)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    first_token_time: float | None = None
    finish_time: float | None = None
    error: str | None = None  # why the engine ended it with finish_reason "error"

    @property
    def is_finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.is_finished and not s.num_pending_tokens for s in self.seqs)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # None while running; "stop", "length", "abort" or "error"
    stop_reason: str | int | None = None  # the stop string or stop token id, if any

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    error: str | None = None  # set when the engine failed on this request (finish_reason "error")

    @classmethod
    def from_request(cls, request: Request, kind: RequestOutputKind = RequestOutputKind.CUMULATIVE) -> RequestOutput:
        """The request's output now. DELTA carries each sample's new tokens and text since the last
        DELTA output (and moves the sample's cursor); the others carry everything so far."""
        completions = [_completion(s, kind) for s in sorted(request.seqs, key=lambda s: s.index)]
        return cls(request.request_id, request.prompt, request.prompt_token_ids, completions,
                   request.is_finished, request.num_cached_tokens, request.error)


def _completion(seq: Sequence, kind: RequestOutputKind) -> CompletionOutput:
    reason = None if seq.num_pending_tokens else seq.finish_reason  # its last token is still to come
    if kind is not RequestOutputKind.DELTA:
        return CompletionOutput(seq.index, seq.text, seq.output_token_ids, reason, seq.stop_reason)
    start = seq.num_prompt_tokens + seq.num_emitted_tokens
    delta = CompletionOutput(seq.index, seq.text[seq.num_emitted_chars:], seq.token_ids[start:], reason,
                             seq.stop_reason)
    seq.num_emitted_tokens, seq.num_emitted_chars = seq.num_output_tokens, len(seq.text)
    return delta
