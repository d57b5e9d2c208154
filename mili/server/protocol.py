"""The OpenAI wire format (chapter 06): request models, their sampling parameters, response bodies.

Requests are parsed with pydantic in strict mode, so a string where a number belongs is a 400,
not a silent conversion, and infinities and NaN are refused. Fields follow the OpenAI API plus
vLLM's extensions (top_k, min_p, repetition_penalty, stop_token_ids, ignore_eos,
chat_template_kwargs), with OpenAI's documented ranges (temperature in [0, 2], a signed 64-bit
seed). Unknown fields are ignored, as OpenAI's clients send some the server does not use; the
fields that would change the answer and that this server cannot honour (structured output,
tool_choice "required" or a named function, logit_bias, best_of, suffix, ...) are refused with a
400 that says what is supported, never silently dropped.

Tools are OpenAI function tools: Qwen3's chat template lists them in the prompt, and the
`<tool_call>` blocks the model writes come back as `message.tool_calls` (see tool_calls.py).
With `mili serve --reasoning-parser qwen3`, what the model thinks inside `<think>` ... `</think>`
comes back as `message.reasoning_content`, apart from the answer (see mili/engine/reasoning.py).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mili.engine.reasoning import split_reasoning
from mili.engine.sampling_params import SEED_RANGE, RequestOutputKind, SamplingParams
from mili.engine.sequence import CompletionOutput, RequestOutput
from mili.server.errors import bad_request
from mili.server.tool_calls import parse_tool_calls, tool_calls_finish_reason

_STRICT = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)
MAX_STOP_STRINGS = 16
MAX_STOP_TOKEN_IDS = 64
MAX_TOOLS = 128  # as OpenAI


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
        # a stream sends what is new at each step; a whole answer needs only the end
        kind = RequestOutputKind.DELTA if self.stream else RequestOutputKind.FINAL_ONLY
        try:
            return SamplingParams(**{k: v for k, v in values.items() if v is not None}, output_kind=kind)
        except (ValueError, TypeError) as err:
            param = str(err).split(" ", 1)[0]
            raise bad_request(str(err), param if param in values else None) from None


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema object
    strict: bool | None = None


class Tool(BaseModel):
    """A tool the model may call: OpenAI's `{"type": "function", "function": {...}}`."""

    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class CalledFunction(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    arguments: str  # a JSON object, as text

    @field_validator("arguments")
    @classmethod
    def _a_json_object(cls, arguments: str) -> str:
        try:
            value = json.loads(arguments)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise ValueError("arguments must be a JSON object, as text")  # noqa: TRY004 - pydantic reports ValueErrors
        return arguments


class MessageToolCall(BaseModel):
    """A call an earlier assistant turn made, as the server returned it in `message.tool_calls`."""

    model_config = _STRICT
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None  # assistant only
    tool_call_id: str | None = None  # tool only: the call this message answers

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages have tool_calls, not {self.role} messages")
        if self.role == "tool" and (self.tool_call_id is None or self.content is None):
            raise ValueError("a tool message needs the tool_call_id it answers and its content (the result)")
        return self

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        message = {**(self.model_extra or {}), "role": role, "content": content or ""}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def calls_tools(self) -> bool:
        """Whether the prompt lists the tools and the answer is parsed for tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    def leaves_room_to_think(self) -> bool:
        """False when the prompt closes the think block itself (Qwen3's enable_thinking=False): the
        whole output is then the answer."""
        return (self.chat_template_kwargs or {}).get("enable_thinking") is not False

    def template_tools(self) -> list[dict] | None:
        return [tool.model_dump(exclude_none=True) for tool in self.tools] if self.calls_tools() else None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if "tools" in (self.chat_template_kwargs or {}):
            raise bad_request("send tools as the request's 'tools' field, not in chat_template_kwargs",
                              "chat_template_kwargs")
        if self.tool_choice == "required" or isinstance(self.tool_choice, dict):
            raise bad_request("tool_choice: only 'auto' (the model decides) and 'none' are supported; 'required' "
                              "and a named function would need constrained decoding, which this server does not "
                              f"have, got {self.tool_choice!r}", "tool_choice")
        if self.tool_choice not in (None, "none", "auto"):
            raise bad_request(f"tool_choice must be 'auto' or 'none', got {self.tool_choice!r}", "tool_choice")
        for i, tool in enumerate(self.tools or ()):
            if tool.function.strict:
                raise bad_request("strict function schemas would need constrained decoding, which this server "
                                  "does not have; send strict: false or leave it out", f"tools.{i}.function.strict")
        if self.functions or self.function_call not in (None, "none", "auto"):
            raise bad_request("functions and function_call (deprecated by OpenAI) are not supported by this "
                              "server; send tools instead", "functions" if self.functions else "function_call")
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


def usage(output: RequestOutput, completion_tokens: int) -> dict:
    """The token counts of a request: its prompt (and how much of it was cached) from `output`, any
    of its outputs, and the tokens it generated in all its choices."""
    prompt = len(output.prompt_token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": output.num_cached_tokens}}


def _all_tokens(output: RequestOutput) -> int:
    return sum(len(c.token_ids) for c in output.outputs)


def chat_completion_body(output: RequestOutput, *, completion_id: str, model: str, created: int,
                         tool_calls: bool = False, reasoning: bool = False) -> dict:
    """The answer to a chat request from its final output; with reasoning, each choice's
    `<think>` block becomes `message.reasoning_content`; with tool_calls, the `<tool_call>` blocks
    of the rest become `message.tool_calls`."""
    choices = [_chat_choice(c, tool_calls, reasoning) for c in output.outputs]
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": usage(output, _all_tokens(output))}


def _chat_choice(choice: CompletionOutput, tool_calls: bool, reasoning: bool) -> dict:
    message, finish_reason = {"role": "assistant", "content": choice.text}, choice.finish_reason
    if reasoning:
        thought, answer = split_reasoning(choice.text)
        message = {"role": "assistant", "reasoning_content": thought or None, "content": answer or None}
    if tool_calls:
        content, calls = parse_tool_calls(message["content"] or "")
        if calls:
            message = {**message, "content": content.strip() or None, "tool_calls": [call.as_openai() for call in calls]}
            finish_reason = tool_calls_finish_reason(finish_reason)
    return {"index": choice.index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def completion_body(output: RequestOutput, *, completion_id: str, model: str, created: int) -> dict:
    choices = [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
               for c in output.outputs]
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage(output, _all_tokens(output))}
