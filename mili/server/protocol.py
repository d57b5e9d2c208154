"""The OpenAI wire format (chapter 06): request models, their sampling parameters, response bodies.

Requests are parsed with pydantic in strict mode, so a string where a number belongs is a 400,
not a silent conversion. Fields follow the OpenAI API plus vLLM's extensions (top_k, min_p,
repetition_penalty, stop_token_ids, ignore_eos, chat_template_kwargs). Unknown fields are
ignored, as OpenAI's clients send some the server does not use.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mili.engine.sampling_params import SamplingParams
from mili.engine.sequence import RequestOutput
from mili.server.errors import bad_request


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, num_prompt_tokens: int, max_model_len: int, max_tokens: int | None = None) -> SamplingParams:
        """Check the request against the context window and build its SamplingParams (400 on bad values)."""
        if self.logprobs:
            raise bad_request("logprobs are not supported by this server", "logprobs")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true", "stream_options")
        room = max_model_len - num_prompt_tokens
        if max_tokens is None:
            max_tokens = room
        if max_tokens < 1:
            param = "max_tokens"
            raise bad_request(f"max_tokens must be at least 1, got {max_tokens}", param)
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
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
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
    max_completion_tokens: int | None = None
    chat_template_kwargs: dict | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False

    def single_prompt(self) -> str | list[int]:
        """The one prompt of this request (batches of prompts are refused with a 400)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise bad_request(f"send one prompt per request (got a batch of {len(prompt)})", "prompt")
            prompt = prompt[0]
        if len(prompt) == 0:
            raise bad_request("the prompt is empty", "prompt")
        if self.echo:
            raise bad_request("echo is not supported by this server", "echo")
        return prompt


# ---------------------------------------------------------------- responses

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


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
