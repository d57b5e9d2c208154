"""The OpenAI wire format (chapter 06): request models, their sampling parameters, response bodies.

Requests are parsed with pydantic in strict mode, so a string where a number belongs is a 400,
not a silent conversion, and infinities and NaN are refused. Fields follow the OpenAI API plus
vLLM's extensions (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos,
chat_template_kwargs), with OpenAI's documented ranges (temperature in [0, 2], a signed 64-bit
seed). Unknown fields are ignored, as OpenAI's clients send some the server does not use; the
fields that would change the answer and that this server cannot honour (tools, structured
output, logit_bias, best_of, suffix, ...) are refused with a 400 that says what is supported,
never silently dropped.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mili.engine.sampling_params import SEED_RANGE, SamplingParams
from mili.engine.sequence import RequestOutput
from mili.server.errors import bad_request

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
MAX_STOP_STRINGS = 16
MAX_STOP_TOKEN_IDS = 64


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The fields both endpoints share."""

    model_config = _STRICT
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0)
    stop: str | list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(1, ge=1)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def refuse_unsupported(self) -> None:
        """A 400 for every field this server would otherwise have to ignore while it changes the answer."""
        if self.logprobs:
            raise bad_request("logprobs are not supported by this server", "logprobs")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by this server", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true", "stream_options")

    def sampling_params(self, num_prompt_tokens: int, max_model_len: int, max_tokens: int | None = None) -> SamplingParams:
        """Check the request against the context window and build its SamplingParams (400 on bad values)."""
        room = max_model_len - num_prompt_tokens
        if max_tokens is None:
            if room < 1:
                raise bad_request(
                    f"The prompt has {num_prompt_tokens} tokens, which fills this model's maximum context length of "
                    f"{max_model_len} tokens and leaves no room for the completion. Please shorten the prompt.",
                    "messages" if hasattr(self, "messages") else "prompt")
            max_tokens = room
        if num_prompt_tokens + max_tokens > max_model_len:
            raise bad_request(
                f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} in the "
                "completion). Please reduce the length of the prompt or max_tokens.", "max_tokens")
        values = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                      presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                      repetition_penalty=self.repetition_penalty, seed=self.seed, stop=self.stop,
                      stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos,
                      skip_special_tokens=self.skip_special_tokens, max_tokens=max_tokens)
        try:
            return SamplingParams(**{k: v for k, v in values.items() if v is not None})
        except (ValueError, TypeError) as err:
            param = str(err).split(" ", 1)[0]
            raise bad_request(str(err), param if param in values else None) from None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return {**(self.model_extra or {}), "role": role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools or "tools" in (self.chat_template_kwargs or {}):
            raise bad_request("tools (function calling) are not supported by this server yet; send the request "
                              "without tools", "tools")
        if self.tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice: only 'none' and 'auto' are supported (this server calls no tools), got "
                              f"{self.tool_choice!r}", "tool_choice")
        if self.functions or self.function_call not in (None, "none", "auto"):
            raise bad_request("functions and function_call are not supported by this server",
                              "functions" if self.functions else "function_call")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise bad_request(f"response_format: only {{'type': 'text'}} is supported (no structured output yet), "
                              f"got type {kind!r}", "response_format")
        if self.top_logprobs:
            raise bad_request("top_logprobs is not supported by this server", "top_logprobs")


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.suffix:
            raise bad_request("suffix (insertion) is not supported by this server", "suffix")
        if self.best_of is not None and self.best_of > 1:
            raise bad_request(f"best_of is not supported by this server (got {self.best_of}); use n for several "
                              "completions", "best_of")
        if self.echo:
            raise bad_request("echo is not supported by this server", "echo")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (batches of prompts are refused with a 400)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise bad_request(f"send one prompt per request (got a batch of {len(prompt)})", "prompt")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise bad_request("the prompt is empty", "prompt")
        return prompt


# ---------------------------------------------------------------- responses

def now() -> int:
    return int(time.time())


def sse(payload: dict | str) -> str:
    """One Server-Sent Event: `data: <json>` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(output: RequestOutput) -> dict:
    prompt = len(output.prompt_token_ids)
    completion = sum(len(c.token_ids) for c in output.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": output.num_cached_tokens}}


def chat_completion_body(output: RequestOutput, *, completion_id: str, model: str, created: int) -> dict:
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                "finish_reason": c.finish_reason} for c in output.outputs]
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage(output)}


def completion_body(output: RequestOutput, *, completion_id: str, model: str, created: int) -> dict:
    choices = [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
               for c in output.outputs]
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(output)}
