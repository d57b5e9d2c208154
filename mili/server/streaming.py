"""Streaming responses (chapter 06, exercise 6.1): engine outputs in, Server-Sent Events out.

A streaming request asks the engine for DELTA outputs: one `RequestOutput` per step in which
the request made progress, carrying only what is new, so a step costs the same at the first
token and at the ten-thousandth. A streaming response sends it as `data: {json}\\n\\n` events in
OpenAI's chunk format, and ends with `data: [DONE]`. When the request offered tools,
`with_tool_calls` takes the model's `<tool_call>` blocks out of the content chunks and sends them
as `tool_calls` deltas; with a reasoning parser, `with_reasoning` sends what the model thinks
inside `<think>` ... `</think>` as `reasoning_content` deltas. Reads nothing but what it is given;
writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from mili.engine.reasoning import ReasoningParser
from mili.engine.sequence import RequestOutput
from mili.exercise import exercise
from mili.server.protocol import sse, usage
from mili.server.tool_calls import ToolCall, ToolCallParser, tool_calls_finish_reason


@exercise("6.1", "Streaming chat completions")
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
    raise NotImplementedError("Exercise 6.1: see chapters/06_deployment.ipynb, section 3")


async def completion_stream(outputs: AsyncIterator[RequestOutput], *, completion_id: str, model: str, created: int,
                            include_usage: bool = False) -> AsyncIterator[str]:
    """The same for `/v1/completions`: `text_completion` chunks with a "text" field, no role chunk."""
    finished: set[int] = set()
    completion_tokens = 0
    last = None
    async for output in outputs:
        last = output
        for choice in output.outputs:
            completion_tokens += len(choice.token_ids)
            if choice.index in finished or (not choice.text and choice.finish_reason is None):
                continue
            if choice.finish_reason is not None:
                finished.add(choice.index)
            chunk = {"id": completion_id, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": choice.index, "text": choice.text, "logprobs": None,
                                  "finish_reason": choice.finish_reason}]}
            if include_usage:
                chunk["usage"] = None
            yield sse(chunk)
    if include_usage and last is not None:
        yield sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                   "choices": [], "usage": usage(last, completion_tokens)})
    yield sse("[DONE]")


async def with_reasoning(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Chat chunks (from `chat_completion_stream`) with each choice's reasoning taken out of its
    content and sent as `delta.reasoning_content`, in chunks of their own. Text that may be part
    of a tag, or that may turn out to be reasoning, waits for the next chunk."""
    parsers: dict[int, ReasoningParser] = {}
    async for event in events:
        chunk = _content_chunk(event)
        if chunk is None:
            yield event
            continue
        choice = chunk["choices"][0]
        parser = parsers.setdefault(choice["index"], ReasoningParser())
        reasoning, content = parser.feed(choice["delta"].get("content") or "")
        if choice["finish_reason"] is not None:
            held_reasoning, held_content = parser.flush()
            reasoning, content = reasoning + held_reasoning, content + held_content
        deltas = [{"reasoning_content": reasoning}] if reasoning else []
        if content:
            deltas.append({"content": content})
        for out in _chunk_events(chunk, deltas, choice["finish_reason"]):
            yield out


async def with_tool_calls(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Chat chunks (from `chat_completion_stream`, or `with_reasoning`) with each choice's
    `<tool_call>` blocks taken out of its content and sent as `delta.tool_calls` ([{index, id, type,
    function: {name, arguments}}], one call per chunk, whole), and "tool_calls" as the finish reason
    of a choice that called any. Content that may begin a block waits for the next chunk."""
    parsers: dict[int, ToolCallParser] = {}
    calls: dict[int, int] = {}  # choice index -> tool calls sent
    async for event in events:
        chunk = _content_chunk(event)
        if chunk is None:
            yield event
            continue
        choice = chunk["choices"][0]
        index, finish_reason = choice["index"], choice["finish_reason"]
        parser = parsers.setdefault(index, ToolCallParser())
        pieces = parser.feed(choice["delta"].get("content") or "")
        if finish_reason is not None:
            pieces += parser.finish()
        deltas = []
        for piece in pieces:
            if isinstance(piece, ToolCall):
                deltas.append({"tool_calls": [{"index": calls.setdefault(index, 0), **piece.as_openai()}]})
                calls[index] += 1
            else:
                deltas.append({"content": piece})
        if calls.get(index):
            finish_reason = tool_calls_finish_reason(finish_reason)
        for out in _chunk_events(chunk, deltas, finish_reason):
            yield out


def _content_chunk(event: str) -> dict | None:
    """The chunk an event carries if it is a choice's content or finish; None for [DONE], the usage
    chunk, a role chunk and a reasoning chunk, which pass through unchanged."""
    if event == "data: [DONE]\n\n":
        return None
    chunk = json.loads(event[len("data: "):])
    if not chunk["choices"] or {"role", "reasoning_content"} & chunk["choices"][0]["delta"].keys():
        return None
    return chunk


def _chunk_events(chunk: dict, deltas: list[dict], finish_reason: str | None) -> list[str]:
    """`chunk` again, once per delta, the last one with the finish reason: nothing if all was held
    back, a chunk with delta {} if the choice finished with nothing more to say."""
    if finish_reason is None and not deltas:
        return []
    deltas = deltas or [{}]
    choice = chunk["choices"][0]
    return [sse({**chunk, "choices": [{**choice, "delta": delta,
                                       "finish_reason": finish_reason if k == len(deltas) else None}]})
            for k, delta in enumerate(deltas, start=1)]
