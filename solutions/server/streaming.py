"""Reference for exercise 6.1: OpenAI chat-completion chunks from the engine's delta outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from mili.engine.sequence import RequestOutput
from mili.server.protocol import sse, usage


async def chat_completion_stream(outputs: AsyncIterator[RequestOutput], *, completion_id: str, model: str,
                                 created: int, include_usage: bool = False) -> AsyncIterator[str]:
    """Turn a request's stream of engine outputs into OpenAI `chat.completion.chunk` events.

    outputs: async iterator of RequestOutput, deltas: `outputs[i].text` holds only the characters
    choice i added since the previous output (possibly none: a token may end inside a
    character), `outputs[i].token_ids` only its new tokens. A choice that finished keeps coming
    in later outputs, with no text and its finish_reason; the last output has `finished=True`.
    Yields strings, each one event `"data: " + json + "\\n\\n"` (use `protocol.sse(dict)`):

    1. For each choice, before any of its text: a chunk whose delta is
       {"role": "assistant", "content": ""} and finish_reason None.
    2. For each output and each choice with new text: a chunk with delta {"content": <the new
       text>}; when the choice has just finished, that chunk carries its finish_reason ("stop",
       "length" or "abort"), otherwise None. A choice that finishes with no new text gets a
       chunk with delta {} and its finish_reason. finish_reason is non-null exactly once per
       choice; no chunk is sent for a choice with nothing new.
    3. If include_usage: every chunk above has "usage": null, and after the last output one more
       chunk with "choices": [] and "usage": protocol.usage(last_output, completion_tokens),
       completion_tokens being the number of token ids in all outputs, all choices.
    4. Finally "data: [DONE]\\n\\n".

    A chunk: {"id": completion_id, "object": "chat.completion.chunk", "created": created,
    "model": model, "choices": [{"index": i, "delta": {...}, "logprobs": None,
    "finish_reason": ...}]} (one choice per chunk, in the order of `outputs[i]`).
    """
    def chunk(index: int, delta: dict, finish_reason: str | None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    started: set[int] = set()
    finished: set[int] = set()
    completion_tokens = 0
    last = None
    async for output in outputs:
        last = output
        for choice in output.outputs:
            i = choice.index
            completion_tokens += len(choice.token_ids)
            if i in finished:
                continue
            if i not in started:
                started.add(i)
                yield chunk(i, {"role": "assistant", "content": ""}, None)
            if not choice.text and choice.finish_reason is None:
                continue
            if choice.finish_reason is not None:
                finished.add(i)
            yield chunk(i, {"content": choice.text} if choice.text else {}, choice.finish_reason)
    if include_usage and last is not None:
        yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [], "usage": usage(last, completion_tokens)})
    yield sse("[DONE]")
