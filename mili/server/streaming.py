"""Streaming responses (chapter 06, exercise 6.1): engine outputs in, Server-Sent Events out.

The engine hands the server one `RequestOutput` per step in which the request made progress;
each carries the *whole* text of every completion so far. A streaming response sends only what
is new, as `data: {json}\\n\\n` events in OpenAI's chunk format, and ends with `data: [DONE]`.
Reads nothing but the outputs it is given; writes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from mili.engine.sequence import RequestOutput
from mili.exercise import exercise
from mili.server.protocol import sse, usage


@exercise("6.1", "Streaming chat completions")
async def chat_completion_stream(outputs: AsyncIterator[RequestOutput], *, completion_id: str, model: str,
                                 created: int, include_usage: bool = False) -> AsyncIterator[str]:
    """Turn a request's stream of engine outputs into OpenAI `chat.completion.chunk` events.

    outputs: async iterator of RequestOutput, cumulative (each `outputs[i].text` is the whole
    text of choice i so far and only grows; the last one has `finished=True`).
    Yields strings, each one event `"data: " + json + "\\n\\n"` (use `protocol.sse(dict)`):

    1. For each choice, before any of its text: a chunk whose delta is
       {"role": "assistant", "content": ""} and finish_reason None.
    2. For each output and each choice with new text: a chunk with delta {"content": <only the
       new characters>}; when the choice has just finished, that chunk carries its
       finish_reason ("stop", "length" or "abort"), otherwise None. A choice that finishes with
       no new text gets a chunk with delta {} and its finish_reason. finish_reason is non-null
       exactly once per choice; no chunk is sent for a choice with nothing new.
    3. If include_usage: every chunk above has "usage": null, and after the last output one more
       chunk with "choices": [] and "usage": protocol.usage(last_output).
    4. Finally "data: [DONE]\\n\\n".

    A chunk: {"id": completion_id, "object": "chat.completion.chunk", "created": created,
    "model": model, "choices": [{"index": i, "delta": {...}, "logprobs": None,
    "finish_reason": ...}]} (one choice per chunk, in the order of `outputs[i]`).
    """
    raise NotImplementedError("Exercise 6.1: see chapters/06_deployment.ipynb, section 3")


async def completion_stream(outputs: AsyncIterator[RequestOutput], *, completion_id: str, model: str, created: int,
                            include_usage: bool = False) -> AsyncIterator[str]:
    """The same for `/v1/completions`: `text_completion` chunks with a "text" field, no role chunk."""
    sent: dict[int, int] = {}
    finished: set[int] = set()
    last = None
    async for output in outputs:
        last = output
        for choice in output.outputs:
            if choice.index in finished:
                continue
            new_text = choice.text[sent.get(choice.index, 0):]
            if not new_text and choice.finish_reason is None:
                continue
            sent[choice.index] = len(choice.text)
            if choice.finish_reason is not None:
                finished.add(choice.index)
            chunk = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": choice.index, "text": new_text, "logprobs": None,
                                  "finish_reason": choice.finish_reason}]}
            if include_usage:
                chunk["usage"] = None
            yield sse(chunk)
    if include_usage and last is not None:
        yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                   "choices": [], "usage": usage(last)})
    yield sse("[DONE]")
