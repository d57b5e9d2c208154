"""`SamplingParams`: how one request wants its tokens chosen and when it stops (chapter 03).

Shaped like vLLM's, so habits carry over. Every field is checked when the object is built:
bad input raises a ValueError/TypeError that names the field, never a silent wrong answer.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

_GREEDY_EPS = 1e-5  # temperatures below this are greedy (argmax)
MAX_TEMPERATURE = 100.0  # far past any useful value (OpenAI allows 2); beyond it logits / T is noise
SEED_RANGE = (-2**63, 2**63 - 1)  # a signed 64-bit integer, as OpenAI documents `seed`


class RequestOutputKind(enum.Enum):
    """What a request's outputs carry (vLLM's names)."""

    CUMULATIVE = "cumulative"  # every output: all text and token ids so far
    DELTA = "delta"  # every output: only what is new since the last one (streaming)
    FINAL_ONLY = "final_only"  # one output, when the request finishes (offline generation)


@dataclass
class SamplingParams:
    """Per-request sampling and stopping.

    n: completions per prompt (they share the prompt's KV blocks).
    temperature: 0 means greedy; otherwise logits are divided by it before softmax (at most 100).
    top_k: keep the k most likely tokens (-1 or 0: all). top_p: keep the smallest set of most
    likely tokens whose probability reaches top_p (1: all). min_p: drop tokens whose probability
    is below min_p times the most likely one's (0: none).
    repetition_penalty (> 0, 1: off): logits of tokens seen in the prompt or output are divided
    by it when positive, multiplied when negative. presence_penalty / frequency_penalty
    (in [-2, 2]): subtracted once per token seen in the output / once per occurrence.
    seed: makes this request's samples reproducible whatever else shares its batch (a signed
    64-bit integer; each of the n samples seeds its own generator from it).
    max_tokens: the most tokens to generate. stop: strings that end generation (not included in
    the text). stop_token_ids: token ids that end generation besides EOS. ignore_eos: keep going
    past EOS (benchmarks). skip_special_tokens: leave special tokens out of the text.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    stop_strings: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self):
        _check_int("n", self.n, minimum=1)
        _check_number("temperature", self.temperature, minimum=0.0)
        if self.temperature > MAX_TEMPERATURE:
            raise ValueError(f"temperature must be at most {MAX_TEMPERATURE:g}, got {self.temperature}")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k)
        if self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (disabled) or at least 1, got {self.top_k}")
        _check_number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0.0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            _check_number(name, getattr(self, name))
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=SEED_RANGE[0])
            if self.seed > SEED_RANGE[1]:
                raise ValueError(f"seed must be a signed 64-bit integer (at most {SEED_RANGE[1]}), got {self.seed}")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, minimum=1)
        if self.stop is not None and not isinstance(self.stop, (str, list, tuple)):
            raise TypeError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            raise TypeError(f"stop must be a non-empty string or a list of them, got {self.stop!r}")
        self.stop_strings = tuple(stops)
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, (list, tuple)):
            raise TypeError(f"stop_token_ids must be a list of ints, got {self.stop_token_ids!r}")
        ids = list(self.stop_token_ids or [])
        for tid in ids:
            _check_int("stop_token_ids", tid, minimum=0)
        self.stop_token_ids = ids
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise TypeError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _check_int(name: str, value, minimum: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_number(name: str, value, minimum: float | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
